"""The sizes of a Wan 2.2 model for the memory planner, read without torch: exactly counted transformer parameters
from a config, and the text encoder / VAE / wav2vec2 from their weight files' byte sizes (``stat`` only: no weight
file is opened). For an official folder as downloaded, a folder written by `wan22 convert` / ``save_pretrained``
(either layout), or an official variant's name. Used by the command line's memory check, `wan22 plan` and the
web page's plan.

Transformer parameters: `dit_parameter_counts`, checked against diffusers' `WanTransformer3DModel` in the tests.
"""

from __future__ import annotations

from pathlib import Path

from .folders import detect_official_variant, read_json_object
from .memory_planner import A14B, S2V_14B, SPECS, ModelSpec
from .names import EXPERT_DIRS, HIGH, MODEL_INDEX, T5_FILE, VAE_FILES, WAV2VEC_DIR
from .variants import get_variant

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "bfloat16": 2, "float16": 2, "float32": 4}
# Wan 2.2 VAE (TI2V-5B): 704.7M parameters; its decoder's last stage runs at half resolution with 256 channels,
# i.e. the activations of 64 channels at full resolution in the planner's VAE formula.
WAN22_VAE_PARAMS = 704_688_668
WAN22_VAE_TOP_CHANNELS = 64


def dit_parameter_counts(dim: int, ffn_dim: int, num_layers: int, in_channels: int, out_channels: int,
                         text_dim: int = 4096, freq_dim: int = 256, patch: tuple[int, int, int] = (1, 2, 2)
                         ) -> tuple[int, int]:
    """(parameters of one Wan 2.2 transformer, parameters of one of its blocks).

    A block: self- and cross-attention (4 d x d projections with biases and two RMS norms each), the affine
    cross-attention norm, the FFN (d -> f -> d) and its 6 d modulation table: ``8 d^2 + 2 d f + 21 d + f``. Outside
    the blocks: patch embedding, time and text embedders, time projection (6 d), output head, 2 d table.
    """
    p = patch[0] * patch[1] * patch[2]
    block = 8 * dim * dim + 2 * dim * ffn_dim + 21 * dim + ffn_dim
    outside = (8 * dim * dim + dim * (p * (in_channels + out_channels) + freq_dim + text_dim) + 13 * dim
               + out_channels * p)
    return num_layers * block + outside, block


def _dit_spec(dims: dict, num_experts: int, vae_version: str, text_encoder_params: int, vae_params: int,
              audio_encoder_params: int = 0, s2v: bool = False) -> ModelSpec:
    expert, block = dit_parameter_counts(dims["dim"], dims["ffn_dim"], dims["num_layers"], dims["in_channels"],
                                         dims["out_channels"], dims.get("text_dim", 4096), dims.get("freq_dim", 256),
                                         tuple(dims.get("patch_size", (1, 2, 2))))
    if s2v and (dims["dim"], dims["num_layers"]) == (5120, 40):
        expert = S2V_14B.expert_params  # the real S2V-14B: audio injectors, pose and FramePack layers on top
    wan22_vae = vae_version == "2.2"
    return ModelSpec(
        expert_params=expert, block_params=block, num_layers=dims["num_layers"], num_experts=num_experts,
        text_encoder_params=text_encoder_params, text_encoder_block_params=text_encoder_params // 24,
        vae_params=vae_params, dim=dims["dim"], ffn_dim=dims["ffn_dim"], num_heads=dims["num_heads"],
        vae_top_channels=WAN22_VAE_TOP_CHANNELS if wan22_vae else A14B.vae_top_channels,
        vae_stride=(4, 16) if wan22_vae else (4, 8), patch=tuple(dims.get("patch_size", (1, 2, 2))),
        latent_channels=dims["out_channels"], context_token_frames=2.5 if s2v else 0.0,
        audio_encoder_params=audio_encoder_params,
    )


TI2V_5B = _dit_spec(dict(dim=3072, ffn_dim=14336, num_layers=30, num_heads=24, in_channels=48, out_channels=48),
                    1, "2.2", A14B.text_encoder_params, WAN22_VAE_PARAMS)


def variant_spec(name: str) -> ModelSpec | None:
    """The real model of an official variant name (``t2v-A14B``, ``i2v-A14B``, ``ti2v-5B``, ``s2v-14B``)."""
    return TI2V_5B if name.lower() == "ti2v-5b" else SPECS.get(name.lower())


def _file_bytes(paths) -> int:
    return sum(p.stat().st_size for p in paths if p.exists())


def official_folder_spec(root: Path, variant: str) -> ModelSpec:
    """Sizes of an official folder: DiT config(s) and the byte sizes of the T5 (bf16) / VAE (fp32) `.pth` files."""
    defaults = get_variant(variant)
    moe = defaults.boundary_ratio is not None
    cfg = read_json_object((root / EXPERT_DIRS[HIGH] if moe else root) / "config.json")
    dims = dict(dim=cfg["dim"], ffn_dim=cfg["ffn_dim"], num_layers=cfg["num_layers"], num_heads=cfg["num_heads"],
                in_channels=cfg["in_dim"], out_channels=cfg["out_dim"], text_dim=cfg.get("text_dim", 4096),
                freq_dim=cfg.get("freq_dim", 256))
    audio = _file_bytes(list((root / WAV2VEC_DIR).glob("*.safetensors")) + list((root / WAV2VEC_DIR).glob("*.bin")))
    return _dit_spec(dims, 2 if moe else 1, defaults.vae_version, _file_bytes([root / T5_FILE]) // 2,
                     _file_bytes([root / VAE_FILES[defaults.vae_version]]) // 4, audio // 4, s2v=variant == "s2v-14B")


def saved_folder_spec(root: Path, task: str) -> ModelSpec:
    """Sizes of a diffusers folder (ours, or the stock layout with ``transformer_2``), from its config files."""
    index = read_json_object(root / MODEL_INDEX)
    cfg = read_json_object(root / "transformer" / "config.json")
    # our MoE (official or Turbo experts) or the stock layout's second transformer
    moe = cfg.get("_class_name", "").endswith("MoETransformer3DModel") or (index.get("transformer_2") or [None])[0]
    dims = dict(dim=cfg["num_attention_heads"] * cfg["attention_head_dim"], ffn_dim=cfg["ffn_dim"],
                num_layers=cfg["num_layers"], num_heads=cfg["num_attention_heads"], in_channels=cfg["in_channels"],
                out_channels=cfg["out_channels"], text_dim=cfg.get("text_dim", 4096),
                freq_dim=cfg.get("freq_dim", 256), patch_size=cfg.get("patch_size", (1, 2, 2)))
    te_cfg = read_json_object(root / "text_encoder" / "config.json") if (root / "text_encoder").is_dir() else {}
    te_bytes = DTYPE_BYTES.get(str(te_cfg.get("dtype") or te_cfg.get("torch_dtype") or "float32"), 4)
    vae_cfg = read_json_object(root / "vae" / "config.json") if (root / "vae" / "config.json").exists() else {}
    return _dit_spec(dims, 2 if moe else 1, "2.2" if vae_cfg.get("scale_factor_spatial", 8) == 16 else "2.1",
                     _file_bytes((root / "text_encoder").glob("*.safetensors")) // te_bytes,
                     _file_bytes((root / "vae").glob("*.safetensors")) // 4,
                     _file_bytes((root / "audio_encoder").glob("*.safetensors")) // 4, s2v=task == "s2v-14B")


def folder_spec(model: str, task: str) -> ModelSpec | None:
    """The sizes of ``--model`` from config files only, or ``None`` when they cannot be read that way (the loader
    then reports what is wrong with the folder)."""
    root = Path(model)
    try:
        if (root / MODEL_INDEX).exists():
            return saved_folder_spec(root, task)
        return official_folder_spec(root, detect_official_variant(root))
    except (KeyError, TypeError, ValueError, OSError):
        return None
