"""`python -m diffusers_wan22.cli ...`: the `wan22` command line as a module (e.g. under `accelerate launch`).

The `wan22` console script enters through `diffusers_wan22_cli` instead, which parses the arguments before torch is
imported; both parse and run the same way.
"""

from __future__ import annotations

import sys

from .commands.parser import parse_args
from .commands.run import run_command


def main(argv: list[str] | None = None) -> int:
    return run_command(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
