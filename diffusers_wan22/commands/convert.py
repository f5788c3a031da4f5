"""`wan22 convert`: an official Wan 2.2 folder -> a diffusers folder (see `loaders/conversion.py`)."""

from __future__ import annotations

from ..loaders.conversion import convert_checkpoint


def run(args) -> int:
    """`wan22 convert SRC DST`: streaming, atomic, optionally verified (SRC and DST checked by `validate_convert`)."""
    report = convert_checkpoint(args.src, args.dst, variant=args.variant, dtype=args.dtype, layout=args.layout,
                                max_shard_size=args.max_shard_size, overwrite=args.overwrite, verify=args.verify)
    print(report.summary())
    return 0
