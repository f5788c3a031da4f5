"""How `wan22` fails: one line on stderr, a fixed exit code, no traceback, no partial output (torch-free).

* a user mistake (`CliError`, or a ValueError / missing or existing file from a check further down): exit code 2;
* Ctrl-C (KeyboardInterrupt): ``wan22: interrupted``, exit code 130 (128 + SIGINT); outputs are written to a
  temporary sibling and renamed at the end, so nothing half-written is left;
* a closed stdout (``wan22 info DIR | head``): the rest of the output is dropped, exit code 141 (128 + SIGPIPE),
  as a command killed by SIGPIPE would report.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Callable

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

# Pipeline parameter names -> the `wan22 generate` flag that sets them (for errors raised below the CLI).
PARAM_FLAGS = {
    "num_frames": "--frame_num", "num_inference_steps": "--sample_steps", "guidance_scale": "--sample_guide_scale",
    "guidance_scale_2": "--sample_guide_scale", "max_area": "--size", "height": "--size", "width": "--size",
    "image": "--image", "audio": "--audio", "pose_video": "--pose_video", "num_clips": "--num_clip",
    "infer_frames": "--infer_frames", "expert_steps": "--expert_steps", "prompt": "--prompt",
    "negative_prompt": "--negative_prompt", "flow_shift": "--sample_shift", "shift": "--sample_shift",
    "max_shard_size": "--max_shard_size", "layout": "--layout", "dtype": "--dtype",
}


# Errors that mean "this input cannot be used" when they escape a command.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


class CliError(ValueError):
    """A user mistake, reported as one line (exit code 2). ``flag`` names the option at fault (e.g. ``"--size"``),
    so a front end (the command line, a UI) can point at it; the message says what is accepted."""

    def __init__(self, flag: str | None, message: str):
        super().__init__(message)
        self.flag = flag


def flags_for_params(message: str) -> str:
    """A pipeline's error text in the command line's words: `num_frames` -> --frame_num, ..."""
    return re.sub(r"`(\w+)`", lambda m: PARAM_FLAGS.get(m[1], m[0]), message)


def one_line(message: str) -> str:
    return " ".join(str(message).split())


def report(message: str) -> None:
    sys.stderr.write(f"wan22: error: {one_line(message)}\n")
    sys.stderr.flush()


def run_guarded(step: Callable[[], int]) -> int:
    """Run ``step`` (a whole command) and turn the ways it can end into exit codes (see the module docstring).
    stdout is flushed here, so a closed pipe is noticed inside the guard, not by the interpreter at exit."""
    try:
        try:
            code = step()
        finally:
            sys.stdout.flush()  # argparse's --help / --version exit with SystemExit: flush them here too
        return code
    except CliError as e:
        report(str(e))
        return EXIT_USAGE
    except KeyboardInterrupt:
        # on a terminal the progress bar's line is still open: start a new one
        sys.stderr.write(("\n" if sys.stderr.isatty() else "") + "wan22: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away: later writes (and the interpreter's final flush) must not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


def run_reporting(command: Callable, args) -> int:
    """Run a checked command; a ValueError or file error raised below the command line is one line, exit code 2
    (pipeline parameter names replaced by the flags that set them)."""
    try:
        return command(args)
    except CliError:
        raise
    except USER_ERRORS as e:
        report(flags_for_params(str(e)) if args.command in ("generate", "demo") else str(e))
        return EXIT_USAGE
