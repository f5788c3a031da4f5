"""Official Wan 2.2 folders: every pipeline component loaded from one (which variant it is: `core/folders.py`).

`check_official_folder` runs first, so a missing, truncated or unsafe file is named before minutes of loading; the
component loaders are in `official_models.py`, the key maps in `core/official_keys.py`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..core.folders import detect_official_variant
from ..core.names import EXPERT_DIRS, EXPERTS, T5_FILE, TOKENIZER_DIR, VAE_FILES
from ..core.variants import get_variant
from ..models.transformer_wan_moe import WanMoETransformer3DModel
from ..schedulers.official import official_scheduler
from .checks import check_official_folder
from .expert_sources import meta_moe_from_official
from .official_models import (
    load_official_audio_stack,
    load_official_t5,
    load_official_tokenizer,
    load_official_transformer,
    load_official_vae,
)

__all__ = ["detect_official_variant", "load_official_components", "load_official_text_stack"]


def load_official_text_stack(ckpt_dir: str | os.PathLike, torch_dtype: torch.dtype | None = None) -> dict:
    """Tokenizer and UMT5 text encoder from an official folder."""
    root = Path(ckpt_dir)
    return dict(tokenizer=load_official_tokenizer(root / TOKENIZER_DIR),
                text_encoder=load_official_t5(root / T5_FILE, torch_dtype=torch_dtype))


def _official_transformer(root: Path, variant: str, torch_dtype: torch.dtype | None, lazy_experts: bool):
    boundary = get_variant(variant).boundary_ratio
    if lazy_experts:
        if boundary is None:
            raise ValueError(f"`lazy_experts` applies to the A14B mixtures of experts, not to {variant}.")
        return meta_moe_from_official(root, boundary, torch_dtype)
    if boundary is None:
        return load_official_transformer(root, torch_dtype=torch_dtype)
    high, low = (load_official_transformer(root / EXPERT_DIRS[k], torch_dtype) for k in EXPERTS)
    return WanMoETransformer3DModel.from_experts(high, low, boundary_ratio=boundary)


def load_official_components(
    ckpt_dir: str | os.PathLike, torch_dtype: torch.dtype | None = None, variant: str | None = None,
    lazy_experts: bool = False,
) -> dict:
    """Every component of the pipeline of an official folder (``variant`` detected when not given).

    ``lazy_experts=True`` builds the A14B experts on ``meta`` (see `meta_moe_from_official`); wav2vec2 (S2V) stays
    float32 as the official code runs it.
    """
    root = Path(ckpt_dir)
    variant = variant or detect_official_variant(root)
    check_official_folder(root, variant)  # every file present and well-formed before the first tensor is read
    vae_path = root / VAE_FILES[get_variant(variant).vae_version]
    # Loading a 27B checkpoint takes minutes: say which component is being read (on a terminal only).
    steps = ["transformer", "text encoder", "VAE"] + (["wav2vec2"] if variant == "s2v-14B" else [])
    with tqdm(total=len(steps), desc=f"loading {variant}", unit="component", disable=None) as bar:
        bar.set_postfix_str(steps[0])
        components = dict(transformer=_official_transformer(root, variant, torch_dtype, lazy_experts),
                          scheduler=official_scheduler(variant))
        for step in steps[1:]:
            bar.update()
            bar.set_postfix_str(step)
            if step == "text encoder":
                components.update(load_official_text_stack(root, torch_dtype))
            elif step == "VAE":
                components["vae"] = load_official_vae(vae_path, torch_dtype=torch_dtype)
            else:
                components.update(load_official_audio_stack(root))
        bar.update()
    return components
