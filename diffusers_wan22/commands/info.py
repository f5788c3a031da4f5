"""`wan22 info`: what a model folder holds, read from file headers only (no model is built), after checking that
every file a pipeline needs is there and intact (a missing VAE or a truncated shard is an error, exit code 2)."""

from __future__ import annotations

from pathlib import Path

from ..core.folders import detect_official_variant, read_json_object
from ..core.names import MODEL_INDEX
from ..core.variants import get_variant
from ..loaders.checks import check_official_folder
from ..loaders.file_io import safetensors_shards
from ..loaders.folder_info import describe_folder

# model_index.json components that carry weights, by library class name suffix
NO_WEIGHTS = ("Tokenizer", "TokenizerFast", "Scheduler", "FeatureExtractor", "Processor")


def check_saved_folder(path: Path, index: dict) -> None:
    """Every component ``model_index.json`` lists is present, and every weight file is a complete safetensors."""
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list) or value[0] is None:
            continue
        folder = path / name
        if not folder.is_dir():
            raise FileNotFoundError(f"{path / MODEL_INDEX} lists {name!r} but {folder} is missing.")
        if not str(value[1]).endswith(NO_WEIGHTS):
            safetensors_shards(folder)  # headers of every shard: names a missing, truncated or foreign file


def run(args) -> int:
    """`wan22 info DIR`: variant, official defaults and parameters per component, from headers only."""
    path = Path(args.model)
    if (path / MODEL_INDEX).exists():
        index = read_json_object(path / MODEL_INDEX)
        check_saved_folder(path, index)
        print(f"{path}: diffusers-format pipeline {index.get('_class_name')}")
        for name, value in index.items():
            if not name.startswith("_"):
                print(f"  {name}: {value}")
    else:
        variant = detect_official_variant(path)
        check_official_folder(path, variant)
        d = get_variant(variant)
        print(f"{path}: official Wan 2.2 {variant} checkpoint (complete: every file present and readable)")
        print(f"  boundary={d.boundary_ratio} shift={d.sample_shift} steps={d.sample_steps} "
              f"guidance=({d.guidance_scale}, {d.guidance_scale_2}) fps={d.fps} frames={d.num_frames} "
              f"size={d.width}*{d.height} vae={d.vae_version}")
    rows = describe_folder(path)
    print("  parameters (stored dtype):")
    for name, count, dtypes in rows:
        print(f"    {name:34s} {count:>16,d}  {'/'.join(sorted(dtypes))}")
    print(f"    {'total':34s} {sum(r[1] for r in rows):>16,d}")
    return 0
