"""Entry point of the `wan22` console script.

Kept outside the `diffusers_wan22` package so it runs before the package (and diffusers, transformers, torch) is
imported: optional backends announce themselves at import time — torchao logs the CUDA kernels it cannot load on
this machine, torch a pytree deprecation notice, diffusers that torchao tensors are unavailable — and on a terminal
that chatter would bury the one-line errors the CLI promises. Only those loggers are lowered, and only for the CLI;
`import diffusers_wan22` in a user's program is left alone.
"""

import logging
import sys

_IMPORT_CHATTER = ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer")


def main() -> int:
    for name in _IMPORT_CHATTER:
        logging.getLogger(name).setLevel(logging.ERROR)
    from diffusers_wan22.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
