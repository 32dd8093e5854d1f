"""The `anoclip` command: argument groups, one module per command.

May import: everything. Nothing imports it (besides anoclip.__main__).
"""

from anoclip.cli.app import main

__all__ = ["main"]
