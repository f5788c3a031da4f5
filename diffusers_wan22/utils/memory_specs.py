"""`ModelSpec`s for the memory planner (`core/memory_planner.py`) from real modules or configs.

The planner itself is torch-free arithmetic; counting the parameters of a model (possibly on the ``meta`` device)
needs torch, so it lives here.
"""

from __future__ import annotations

from dataclasses import replace

from accelerate import init_empty_weights
from diffusers import WanTransformer3DModel

from ..core.memory_planner import A14B, VAE_TOP_CHANNELS, ModelSpec


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def spec_from_modules(transformer, text_encoder=None, vae=None, text_encoder_params: int | None = None,
                      vae_params: int | None = None) -> ModelSpec:
    """A `ModelSpec` from (possibly ``meta``) modules: a `WanMoETransformer3DModel` or a dense transformer."""
    is_moe = hasattr(transformer, "experts_named")  # a WanMoETransformer3DModel (duck-typed: models sit above us)
    experts = transformer.experts_named() if is_moe else [transformer]
    expert = experts[0]
    cfg = transformer.config
    te_params = text_encoder_params if text_encoder_params is not None else _count(text_encoder)
    te_cfg = getattr(text_encoder, "config", None)
    te_blocks = getattr(te_cfg, "num_layers", 24) if te_cfg is not None else 24
    vae_cfg = getattr(vae, "config", None)
    return ModelSpec(
        expert_params=_count(expert),
        block_params=_count(expert.blocks[0]),
        num_layers=len(expert.blocks),
        num_experts=2 if is_moe else 1,
        text_encoder_params=te_params,
        text_encoder_block_params=te_params // max(te_blocks, 1),
        vae_params=vae_params if vae_params is not None else _count(vae),
        dim=cfg.num_attention_heads * cfg.attention_head_dim,
        ffn_dim=cfg.ffn_dim,
        num_heads=cfg.num_attention_heads,
        text_encoder_dim=getattr(te_cfg, "d_model", 4096) if te_cfg is not None else 4096,
        text_encoder_ffn=getattr(te_cfg, "d_ff", 10240) if te_cfg is not None else 10240,
        vae_top_channels=(vae_cfg.base_dim * vae_cfg.dim_mult[0]) if vae_cfg is not None else VAE_TOP_CHANNELS,
        vae_stride=((vae_cfg.scale_factor_temporal, vae_cfg.scale_factor_spatial) if vae_cfg is not None
                    else (4, 8)),
        patch=tuple(cfg.patch_size),
        latent_channels=cfg.out_channels,
    )


def spec_from_config(transformer_config: dict, text_encoder_params: int = A14B.text_encoder_params,
                     vae_params: int = A14B.vae_params, moe: bool = True) -> ModelSpec:
    """A `ModelSpec` from a `WanTransformer3DModel` config: the expert is built on ``meta`` (no memory) to count."""
    cfg = {k: v for k, v in dict(transformer_config).items()
           if not k.startswith("_") and k not in ("boundary_ratio", "num_train_timesteps", "expert_precision")}
    with init_empty_weights(include_buffers=True):
        expert = WanTransformer3DModel(**cfg)
    spec = spec_from_modules(expert, text_encoder_params=text_encoder_params, vae_params=vae_params)
    return replace(spec, num_experts=2 if moe else 1)


def spec_from_pipeline(pipe) -> ModelSpec:
    spec = spec_from_modules(pipe.transformer, pipe.text_encoder, pipe.vae)
    image_encoder = getattr(pipe, "image_encoder", None)
    if image_encoder is not None:  # Animate: the CLIP tower; the reference latent frame rides along each clip
        spec = replace(spec, image_encoder_params=_count(image_encoder), context_token_frames=1.0)
    return spec
