"""`python -m diffusers_wan22.cli ...`: the `wan22` command line as a module (e.g. under `accelerate launch`).

The `wan22` console script enters through `diffusers_wan22_cli` instead, which parses and checks the arguments
before torch is imported; both parse, check and run the same way and fail the same way (`commands/errors.py`).
"""

from __future__ import annotations

import sys

from .commands.errors import run_guarded
from .commands.parser import parse_args
from .commands.run import run_command
from .commands.validate import validate_command


def main(argv: list[str] | None = None) -> int:
    return run_guarded(lambda: run_command(validate_command(parse_args(argv))))


if __name__ == "__main__":
    sys.exit(main())
