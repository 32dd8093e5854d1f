"""The `anoclip` command: one module per command, the argument groups they share.

    entry            main, the parser, one-line errors
    command_detect   anoclip detect   (on_engine: --engine FILE; on_ray: --ray)
    command_evaluate anoclip evaluate
    command_export   anoclip export
    arguments        shared argument groups, --set KEY=VALUE text
    plan             a command's settings, runtime, bank and model, validated without torch
    verdicts         detect's ok / defect threshold: --normal, --threshold, unsupervised
    run_folder       the --out folder, checked before anything is written
    messages         one-line warnings and errors

May import: everything. Nothing imports it (besides anoclip.__main__).
"""

from anoclip.cli.entry import build_parser, main

__all__ = ["build_parser", "main"]
