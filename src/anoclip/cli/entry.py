"""The `anoclip` command line: `anoclip detect`, `evaluate`, `export`, `serve` and `watch`.

Arguments are parsed and validated — settings, inputs, the output folder, a resumed run's
fingerprint — before torch and open_clip are imported and before anything is written, so
`--help`, `--version` and every usage error answer at once and leave disk untouched.
User errors (:class:`~anoclip.errors.AnoclipError`, ``OSError``) are one line with exit
code 2; any other exception is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from collections.abc import Sequence

from anoclip import __version__
from anoclip.cli.command_detect import add_detect_command
from anoclip.cli.command_evaluate import add_evaluate_command
from anoclip.cli.command_export import add_export_command
from anoclip.cli.command_serve import add_serve_commands
from anoclip.cli.messages import one_line, show_warning
from anoclip.errors import AnoclipError


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show_warning
        try:
            return args.func(args)
        except KeyboardInterrupt:
            print(interrupted(args), file=sys.stderr)
            return 130
        except (AnoclipError, OSError) as exc:
            if args.debug:
                traceback.print_exc()
            print(f"anoclip: error: {one_line(exc)}", file=sys.stderr)
            return 2


def interrupted(args: argparse.Namespace) -> str:
    """What Ctrl-C keeps: detect counts its finished rows (none, in a set mode that had not
    finished encoding); evaluate keeps its finished categories."""
    if args.command != "detect":
        return "anoclip: interrupted; finished results are kept"
    from anoclip.results.writer import interrupted_message

    return interrupted_message(args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anoclip", description="Zero-shot visual anomaly detection with CLIP (AnoCLIP)."
    )
    parser.add_argument("--version", action="version", version=f"anoclip {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_detect_command(sub)
    add_evaluate_command(sub)
    add_export_command(sub)
    add_serve_commands(sub)
    return parser
