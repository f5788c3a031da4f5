"""Official Wan 2.2 checkpoints → diffusers: the key mapping + loaders (`official`) and the converter (`convert`)."""

from .official import (
    dit_config_from_official,
    load_official_t5,
    load_official_tokenizer,
    load_official_transformer,
    load_official_vae,
    official_dit_key_to_diffusers,
    official_t5_key_to_diffusers,
    official_vae_key_to_diffusers,
    t5_config_from_official,
    vae_config_from_official,
)

__all__ = [
    "dit_config_from_official",
    "load_official_t5",
    "load_official_tokenizer",
    "load_official_transformer",
    "load_official_vae",
    "official_dit_key_to_diffusers",
    "official_t5_key_to_diffusers",
    "official_vae_key_to_diffusers",
    "t5_config_from_official",
    "vae_config_from_official",
]
