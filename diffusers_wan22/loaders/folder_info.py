"""`wan22 info`: what a model folder holds (variant, parameter counts, stored dtypes), from headers only."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import safe_open

from ..core.animate import ANIMATE_CLIP_FILE
from ..core.folders import detect_official_variant
from ..core.names import EXPERT_DIRS, EXPERTS, MODEL_INDEX, T5_FILE, VAE_FILES, WAV2VEC_DIR
from ..core.variants import get_variant
from .file_io import SAFETENSORS_DTYPES, load_pth_weights_only, shard_files


def _tensor_counts(files: list[Path]) -> tuple[int, set[str]]:
    """(parameter count, dtypes) of safetensors / `.pth` files, read from headers / memory maps only."""
    total, dtypes = 0, set()
    for path in files:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    sl = f.get_slice(key)
                    shape = sl.get_shape()
                    total += int(torch.Size(shape).numel())
                    dtypes.add(str(SAFETENSORS_DTYPES[sl.get_dtype()]).replace("torch.", ""))
        else:
            for tensor in load_pth_weights_only(path).values():
                total += tensor.numel()
                dtypes.add(str(tensor.dtype).replace("torch.", ""))
    return total, dtypes


def _dit_files(folder: Path) -> list[Path]:
    """The DiT weight files of an official folder (its index when sharded: other safetensors may sit beside it)."""
    return shard_files(folder)[0]


def describe_folder(folder: str | os.PathLike) -> list[tuple[str, int, set[str]]]:
    """(component, parameter count, stored dtypes) for every weight-bearing part of an official or saved folder,
    without loading any model."""
    root = Path(folder)
    if (root / MODEL_INDEX).exists():
        parts = [(d.name, sorted(d.glob("*.safetensors"))) for d in sorted(root.iterdir()) if d.is_dir()]
    else:
        variant = detect_official_variant(root)
        dits = ([(f"transformer ({EXPERT_DIRS[k]})", _dit_files(root / EXPERT_DIRS[k]))
                 for k in EXPERTS] if get_variant(variant).boundary_ratio is not None
                else [("transformer", _dit_files(root))])
        parts = dits + [("text_encoder", [root / T5_FILE]),
                        ("vae", [root / VAE_FILES[get_variant(variant).vae_version]])]
        if variant == "s2v-14B":
            parts.append(("audio_encoder", sorted((root / WAV2VEC_DIR).glob("*.safetensors"))))
        if variant == "animate-14B":  # the whole open-clip file: Animate loads its visual tower only
            parts.append(("image_encoder (CLIP .pth)", [root / ANIMATE_CLIP_FILE]))
    rows = []
    for name, files in parts:
        files = [f for f in files if f.exists()]
        if files:
            rows.append((name, *_tensor_counts(files)))
    return rows
