"""`wan22 convert`: an official Wan 2.2 folder, or a TurboDiffusion TurboWan2.2 folder, -> a diffusers folder (see
`loaders/conversion.py`)."""

from __future__ import annotations

from ..loaders.conversion import convert_checkpoint, convert_turbo_checkpoint


def run(args) -> int:
    """`wan22 convert SRC DST`: streaming, atomic, optionally verified (SRC and DST checked by `validate_convert`,
    which also tells a TurboWan2.2 folder from an official one)."""
    if args.turbo_quantized is not None:
        report = convert_turbo_checkpoint(args.src, args.dst, quantized=args.turbo_quantized,
                                          components=args.components, sla_topk=args.sla_topk, dtype=args.dtype,
                                          max_shard_size=args.max_shard_size, overwrite=args.overwrite,
                                          verify=args.verify)
    else:
        report = convert_checkpoint(args.src, args.dst, variant=args.variant, dtype=args.dtype, layout=args.layout,
                                    max_shard_size=args.max_shard_size, overwrite=args.overwrite, verify=args.verify)
    print(report.summary())
    return 0
