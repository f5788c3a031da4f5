"""Running a parsed `wan22` command: every user mistake becomes one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys

from . import convert, demo, generate, info, plan, ui
from .parser import EXIT_USAGE
from .validate import CliError

COMMANDS = {"demo": demo.run, "generate": generate.run, "convert": convert.run, "info": info.run, "plan": plan.run,
            "ui": ui.run}


def run_command(args: argparse.Namespace) -> int:
    """Run ``args.command``; a `CliError`, ValueError or missing/existing file is reported as one line, rc 2."""
    try:
        return COMMANDS[args.command](args)
    except (CliError, ValueError, FileNotFoundError, FileExistsError) as e:
        sys.stderr.write(f"wan22: error: {e}\n")
        return EXIT_USAGE
