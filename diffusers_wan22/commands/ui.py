"""`wan22 ui`: the local web page (`diffusers_wan22.ui`), checked with the same rules as `wan22 generate`."""

from __future__ import annotations

import argparse
import contextlib
import io
import ipaddress
import sys

import torch

from ..ui import build_app, launch
from ..ui.form import UsageError
from .parser import build_parser
from .validate import CliError, check_task_inputs, resolve_task


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1): the page is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def parse_generate(argv: list[str]) -> argparse.Namespace:
    """What `wan22 generate` checks before loading anything, on its arguments ``argv``: the parser (flag types,
    ``--size`` rule) and the inputs the task needs. Raises `UsageError` with the line the CLI would print."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):  # the parser reports on stderr and exits, as a CLI does
            args = build_parser().parse_args(["generate", *argv])
    except SystemExit:
        raise UsageError(stderr.getvalue().strip().removeprefix("wan22: error: ")) from None
    try:
        check_task_inputs(resolve_task(args.model, args.task), args)
    except CliError as e:
        raise UsageError(str(e)) from None
    return args


def run(args) -> int:
    """`wan22 ui`: refuse a non-local host without ``--allow-remote``, build the page, serve it until Ctrl-C."""
    if not is_loopback(args.host):
        if not args.allow_remote:
            raise CliError(f"--host {args.host} would serve the page to other machines (no login, it runs models "
                           "and writes files); add --allow-remote to do that on purpose")
        sys.stderr.write(f"wan22 ui: WARNING: serving on {args.host}:{args.port}, reachable from other machines; "
                         "anyone who reaches it can run models and write videos here\n")
    folder_task = None if args.model == "tiny" else resolve_task(args.model, None)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        app = build_app(args.model, folder_task, parse_generate, args.output_dir, device)
    except ModuleNotFoundError as e:
        raise CliError(str(e)) from None
    print(f"wan22 ui: serving {args.model} on http://{args.host}:{args.port} (Ctrl-C to stop)", flush=True)
    launch(app, args.host, args.port, args.output_dir)
    return 0
