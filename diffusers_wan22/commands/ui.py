"""`wan22 ui`: the local web page (`diffusers_wan22.ui`), checked with the same rules as `wan22 generate`."""

from __future__ import annotations

import argparse
import contextlib
import io
import sys

from ..ui import build_app, launch
from ..ui.form import UsageError
from ..ui.tasks import TURBO_TASK
from .errors import CliError
from .generate import resolve_device
from .parser import build_parser
from .validate import check_host, resolve_task, validate_generate


def parse_generate(argv: list[str]) -> argparse.Namespace:
    """What `wan22 generate` checks before loading anything, on its arguments ``argv``: the parser (flag types) and
    every torch-free check (`validate.validate_generate`). Raises `UsageError` with the line the CLI would print."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):  # the parser reports on stderr and exits, as a CLI does
            args = build_parser().parse_args(["generate", *argv])
    except SystemExit:
        raise UsageError(stderr.getvalue().strip().removeprefix("wan22: error: ")) from None
    try:
        validate_generate(args)
    except CliError as e:
        raise UsageError(str(e)) from None
    return args


def turbo_model_flags(args) -> tuple[str, ...]:
    """The `wan22 generate` flags that load the same TurboWan2.2 experts as this page (every command it shows
    carries them); ``--quant_linear`` also when the folder holds only the W8A8 pair (the same experts, said)."""
    if args.turbo_quantized is None:
        return ()
    flags = () if args.components is None else ("--components", str(args.components))
    flags += ("--quant_linear",) if args.turbo_quantized else ()
    return flags + (() if args.sla_topk is None else ("--sla_topk", f"{args.sla_topk:g}"))


def run(args) -> int:
    """`wan22 ui`: refuse a non-local host without ``--allow-remote``, build the page, serve it until Ctrl-C."""
    warning = check_host(args.host, args.port, args.allow_remote)  # refused earlier by validate_ui without the flag
    if warning:
        sys.stderr.write(warning + "\n")
    folder_task = None if args.model == "tiny" else resolve_task(args.model, None)
    if args.turbo:
        folder_task = TURBO_TASK  # TurboWan2.2 experts: the Turbo tab, not the official I2V one
    device = resolve_device(args.device, prompts=False)  # refused in one line, as `wan22 generate` refuses it
    try:
        app = build_app(args.model, folder_task, parse_generate, args.output_dir, device, turbo_model_flags(args))
    except ModuleNotFoundError as e:
        raise CliError(None, str(e)) from None
    print(f"wan22 ui: serving {args.model} on http://{args.host}:{args.port} (Ctrl-C to stop)", flush=True)
    launch(app, args.host, args.port, args.output_dir)
    return 0
