"""Running a parsed and checked `wan22` command: every user mistake becomes one line on stderr and exit code 2."""

from __future__ import annotations

import argparse

import torch

from . import convert, demo, generate, info, plan, ui
from .errors import report, run_reporting

COMMANDS = {"demo": demo.run, "generate": generate.run, "convert": convert.run, "info": info.run, "plan": plan.run,
            "ui": ui.run}
EXIT_FAILURE = 1


def run_command(args: argparse.Namespace) -> int:
    """Run ``args.command`` (its torch-free checks have passed, see `validate.validate_command`).

    A `CliError` goes up to `errors.run_guarded`; a ValueError or file error from further down is one line, exit
    code 2 (`errors.run_reporting`); running out of memory is one line pointing at the memory modes, exit code 1.
    """
    try:
        return run_reporting(COMMANDS[args.command], args)
    except (torch.OutOfMemoryError, MemoryError) as e:
        report(f"out of memory ({str(e).splitlines()[0] if str(e) else type(e).__name__}); `wan22 plan` shows what "
               "each --memory_mode needs, docs/troubleshooting.md what to try")
        return EXIT_FAILURE
