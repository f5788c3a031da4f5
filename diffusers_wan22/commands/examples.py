"""The command line of the example scripts (``examples/*.py``): a subset of the `wan22 generate` flags, with the
same names, spellings, meanings and checks, so what works in one works in the other (torch-free)."""

from __future__ import annotations

import argparse
import sys

from .errors import CliError, report
from .parser import EXIT_USAGE, example_parser, generate_defaults
from .validate import is_tiny, validate_generate

# What ``--model tiny`` runs when a flag is not given: seconds on a CPU instead of the variant's real size.
TINY_DEFAULTS = {"size": (64, 64), "frame_num": 9, "sample_steps": 6, "infer_frames": 8}


def parse_example_args(description: str, flags, task: str = "t2v-A14B", required=(), argv=None,
                       **defaults) -> argparse.Namespace:
    """Parse and check an example's command line (one line and exit code 2 on a mistake, like `wan22 generate`).

    Args:
        description: the example's docstring (its ``--help``).
        flags: the `wan22 generate` flags it takes (e.g. ``["model", "prompt", "size", "output"]``).
        task: the task the example runs; ``--model tiny`` becomes ``tiny:<task>``, a folder must hold this task.
        required: flags that must be given unless ``--model tiny`` (the example then makes stand-in inputs).
        defaults: flag defaults of this example (e.g. ``output="t2v.mp4"``).

    ``--model tiny`` fills unset sizes with `TINY_DEFAULTS` and lets ``--image`` / ``--audio`` be missing.
    """
    parsed = example_parser(description, flags, **defaults).parse_args(argv)
    args = argparse.Namespace(**{**generate_defaults(), **vars(parsed)})
    tiny = is_tiny(args.model)
    if tiny:
        args.model = f"tiny:{task}"
        for name, value in TINY_DEFAULTS.items():
            if name in flags and getattr(args, name) is None and (name != "infer_frames" or task == "s2v-14B"):
                setattr(args, name, value)
    args.task = task
    try:
        for name in () if tiny else required:
            if getattr(args, name) in (None, []):
                raise CliError(f"--{name}", f"--{name} is required (or run with --model tiny)")
        validate_generate(args, require_inputs=not tiny)
    except CliError as e:
        report(str(e))
        sys.exit(EXIT_USAGE)
    return args
