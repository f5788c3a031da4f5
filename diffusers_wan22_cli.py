"""Entry point of the `wan22` console script.

Kept outside the `diffusers_wan22` package so that it controls what is imported when:

1. the arguments are parsed (`diffusers_wan22.commands.parser`) and checked (`diffusers_wan22.commands.validate`:
   files, sizes, flags, the memory planner on a CPU) without torch: a mistake is one line and exit code 2 within a
   fraction of a second, before any weight is read;
2. only then are torch, diffusers and transformers imported (`diffusers_wan22.commands.run`), with the loggers of
   optional backends lowered first — torchao logs the CUDA kernels it cannot load on this machine, torch a pytree
   deprecation notice, diffusers that torchao tensors are unavailable — so that chatter cannot bury the one-line
   errors the CLI promises. `import diffusers_wan22` in a user's program is left alone.

Ctrl-C at any point is one line and exit code 130; a closed stdout (``| head``) exit code 141 (`commands/errors.py`).
"""

import logging
import sys

_IMPORT_CHATTER = ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer")


def _main(argv) -> int:
    from diffusers_wan22.commands.parser import parse_args  # torch-free (see the module docstring)
    from diffusers_wan22.commands.validate import validate_command  # torch-free

    args = validate_command(parse_args(argv))
    if args.command == "plan":  # arithmetic only: no torch at all
        from diffusers_wan22.commands import plan
        from diffusers_wan22.commands.errors import run_reporting

        return run_reporting(plan.run, args)
    for name in _IMPORT_CHATTER:
        logging.getLogger(name).setLevel(logging.ERROR)
    from diffusers_wan22.commands.run import run_command  # torch, diffusers: after the loggers are lowered

    return run_command(args)


def main(argv=None) -> int:
    from diffusers_wan22.commands.errors import run_guarded  # torch-free

    return run_guarded(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
