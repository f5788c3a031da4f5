"""Running a parsed and checked `wan22` command: every user mistake becomes one line on stderr and exit code 2."""

from __future__ import annotations

import argparse

import torch

from . import convert, demo, generate, info, plan
from .errors import EXIT_USAGE, CliError, flags_for_params, report

COMMANDS = {"demo": demo.run, "generate": generate.run, "convert": convert.run, "info": info.run, "plan": plan.run}
EXIT_FAILURE = 1
# Errors that mean "this input cannot be used" when they escape a command: one line, exit code 2.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


def run_command(args: argparse.Namespace) -> int:
    """Run ``args.command`` (its torch-free checks have passed, see `validate.validate_command`).

    A `CliError` goes up to `errors.run_guarded`; a ValueError or file error from further down is reported as one
    line (pipeline parameter names replaced by the flags that set them), exit code 2; running out of memory is one
    line pointing at the memory modes, exit code 1.
    """
    try:
        return COMMANDS[args.command](args)
    except CliError:
        raise
    except USER_ERRORS as e:
        report(flags_for_params(str(e)) if args.command in ("generate", "demo") else str(e))
        return EXIT_USAGE
    except (torch.OutOfMemoryError, MemoryError) as e:
        report(f"out of memory ({str(e).splitlines()[0] if str(e) else type(e).__name__}); `wan22 plan` shows what "
               "each --memory_mode needs, docs/troubleshooting.md what to try")
        return EXIT_FAILURE
