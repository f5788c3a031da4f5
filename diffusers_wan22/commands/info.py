"""`wan22 info`: what a model folder holds, read from file headers only (no model is built)."""

from __future__ import annotations

from pathlib import Path

from ..core.folders import detect_official_variant, read_json_object
from ..core.names import MODEL_INDEX
from ..core.variants import get_variant
from ..loaders.folder_info import describe_folder


def run(args) -> int:
    """`wan22 info DIR`: variant, official defaults and parameters per component, from headers only."""
    path = Path(args.model)
    if (path / MODEL_INDEX).exists():
        index = read_json_object(path / MODEL_INDEX)
        print(f"{path}: diffusers-format pipeline {index.get('_class_name')}")
        for name, value in index.items():
            if not name.startswith("_"):
                print(f"  {name}: {value}")
    else:
        variant = detect_official_variant(path)
        d = get_variant(variant)
        print(f"{path}: official Wan 2.2 {variant} checkpoint")
        print(f"  boundary={d.boundary_ratio} shift={d.sample_shift} steps={d.sample_steps} "
              f"guidance=({d.guidance_scale}, {d.guidance_scale_2}) fps={d.fps} frames={d.num_frames} "
              f"size={d.width}*{d.height} vae={d.vae_version}")
    rows = describe_folder(path)
    print("  parameters (stored dtype):")
    for name, count, dtypes in rows:
        print(f"    {name:34s} {count:>16,d}  {'/'.join(sorted(dtypes))}")
    print(f"    {'total':34s} {sum(r[1] for r in rows):>16,d}")
    return 0
