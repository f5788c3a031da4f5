"""`wan22 convert`: an official Wan 2.2 folder, or a TurboDiffusion TurboWan2.2 folder, -> a diffusers folder (see
`loaders/conversion.py`)."""

from __future__ import annotations

from ..loaders.conversion import convert_checkpoint, convert_turbo_checkpoint
from .validate import CliError, turbo_quantized


def run(args) -> int:
    """`wan22 convert SRC DST`: streaming, atomic, optionally verified."""
    quantized = turbo_quantized(args.src, args.quant_linear)
    if quantized is not None:
        if args.layout != "wan22" or args.variant not in ("auto", "i2v-A14B"):
            raise CliError("TurboWan2.2 folders convert to the wan22 layout (stock diffusers has no Turbo "
                           "pipeline) as i2v-A14B")
        report = convert_turbo_checkpoint(args.src, args.dst, quantized=quantized, components=args.components,
                                          sla_topk=args.sla_topk, dtype=args.dtype, max_shard_size=args.max_shard_size,
                                          overwrite=args.overwrite, verify=args.verify)
    else:
        if args.components is not None:
            raise CliError("--components applies to TurboWan2.2 folders only")
        report = convert_checkpoint(args.src, args.dst, variant=args.variant, dtype=args.dtype, layout=args.layout,
                                    max_shard_size=args.max_shard_size, overwrite=args.overwrite, verify=args.verify)
    print(report.summary())
    return 0
