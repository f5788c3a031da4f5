"""Official Wan 2.2 tensor names -> diffusers / transformers names, and configs inferred from tensor shapes.

Every rename is a pure per-key function (no torch), so the in-memory loaders (`loaders/official_models.py`), the
streaming converter (`loaders/conversion.py`), the lazy expert sources and the GGUF reader share one mapping.
Configurations are inferred from tensor shapes, so real and tiny checkpoints load the same way. Unknown keys raise
`KeyError` naming the key; loaders turn that into a `ValueError` naming the file.
"""

from __future__ import annotations

import re
from typing import Mapping

# Official Wan 2.2 VAE latent normalisation (48 channels); the 16 Wan 2.1 values are AutoencoderKLWan's defaults.
WAN22_VAE_LATENTS_MEAN = [
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891, 0.157,
    -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502, -0.2055, -0.0322,
    0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.123, -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.052,
    0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
]
WAN22_VAE_LATENTS_STD = [
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.499, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165,
    0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659, 0.7069, 0.5338, 0.4889, 0.4917,
    0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.06,
    0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
]

Shapes = Mapping[str, tuple[int, ...]]

# ------------------------------------------------------------------------------------------ DiT (WanModel)
_DIT_TOP = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
}
# Official block order is norm1 (self-attn), norm3 (cross-attn, affine), norm2 (FFN); diffusers names them in
# execution order, so the official affine `norm3` is diffusers' `norm2`.
_DIT_BLOCK = {
    "norm3": "norm2",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
    **{f"self_attn.{a}": f"attn1.{b}" for a, b in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0"))},
    **{f"cross_attn.{a}": f"attn2.{b}" for a, b in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0"))},
    "self_attn.norm_q": "attn1.norm_q", "self_attn.norm_k": "attn1.norm_k",
    "cross_attn.norm_q": "attn2.norm_q", "cross_attn.norm_k": "attn2.norm_k",
}
_PARAM = r"\.(weight|bias)$"


def official_dit_key_to_diffusers(key: str) -> str:
    """Official `WanModel` key → diffusers `WanTransformer3DModel` key (also the keys S2V shares with it)."""
    if key == "head.modulation":
        return "scale_shift_table"
    m = re.fullmatch(r"blocks\.(\d+)\.modulation", key)
    if m:
        return f"blocks.{m[1]}.scale_shift_table"
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)" + _PARAM, key)
    if m and m[2] in _DIT_BLOCK:
        return f"blocks.{m[1]}.{_DIT_BLOCK[m[2]]}.{m[3]}"
    m = re.fullmatch(r"(.+)" + _PARAM, key)
    if m and m[1] in _DIT_TOP:
        return f"{_DIT_TOP[m[1]]}.{m[2]}"
    raise KeyError(f"official Wan transformer key {key!r} is not a known WanModel tensor")


def dit_config_from_official(config_json: Mapping, shapes: Shapes) -> dict:
    """`WanTransformer3DModel` kwargs from an official `config.json` and the official tensor shapes."""
    dim, heads = int(config_json["dim"]), int(config_json["num_heads"])
    if dim % heads:
        raise ValueError(f"config.json: dim={dim} is not divisible by num_heads={heads}.")
    return dict(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=dim // heads,
        in_channels=int(config_json["in_dim"]), out_channels=int(config_json["out_dim"]),
        text_dim=int(shapes["text_embedding.0.weight"][1]), freq_dim=int(config_json.get("freq_dim", 256)),
        ffn_dim=int(config_json["ffn_dim"]), num_layers=int(config_json["num_layers"]), cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=float(config_json.get("eps", 1e-6)), rope_max_seq_len=1024,
    )


# ------------------------------------------------------------------------------------------ S2V DiT (WanModel_S2V)
_S2V_TOP = {
    "cond_encoder": "pose_embedding",
    "trainable_cond_mask": "token_type_embedding",
    "frame_packer.proj": "motion_packer.proj_1x",
    "frame_packer.proj_2x": "motion_packer.proj_2x",
    "frame_packer.proj_4x": "motion_packer.proj_4x",
    "casual_audio_encoder.encoder.final_linear": "audio_encoder.final_linear",
    **{f"casual_audio_encoder.encoder.{c}.conv": f"audio_encoder.{c}"
       for c in ("conv1_local", "conv1_global", "conv2", "conv3")},
}
_S2V_INJECTOR = {"q": "attn.to_q", "k": "attn.to_k", "v": "attn.to_v", "o": "attn.to_out.0",
                 "norm_q": "attn.norm_q", "norm_k": "attn.norm_k"}


def official_s2v_key_to_diffusers(key: str) -> str:
    """Official `WanModel_S2V` key → `WanS2VTransformer3DModel` key (the Wan backbone keys map as for WanModel)."""
    if key == "casual_audio_encoder.weights":
        return "audio_encoder.layer_weights"
    if key == "casual_audio_encoder.encoder.padding_tokens":
        return "audio_encoder.padding_tokens"
    m = re.fullmatch(r"audio_injector\.injector\.(\d+)\.(\w+)" + _PARAM, key)
    if m and m[2] in _S2V_INJECTOR:
        return f"audio_injectors.{m[1]}.{_S2V_INJECTOR[m[2]]}.{m[3]}"
    m = re.fullmatch(r"audio_injector\.injector_adain_layers\.(\d+)\.linear" + _PARAM, key)
    if m:
        return f"audio_injectors.{m[1]}.norm.linear.{m[2]}"
    m = re.fullmatch(r"(.+)" + _PARAM, key)
    if m and m[1] in _S2V_TOP:
        return f"{_S2V_TOP[m[1]]}.{m[2]}"
    try:
        return official_dit_key_to_diffusers(key)
    except KeyError:
        raise KeyError(f"official Wan S2V transformer key {key!r} is not a known WanModel_S2V tensor") from None


def s2v_config_from_official(config_json: Mapping, shapes: Shapes) -> dict:
    """`WanS2VTransformer3DModel` kwargs from an official S2V `config.json` and the tensor shapes."""
    if config_json.get("enable_motioner") or not config_json.get("enable_framepack", False):
        raise ValueError("config.json: only the released S2V design (enable_framepack=true, enable_motioner=false) "
                         f"is supported; got enable_framepack={config_json.get('enable_framepack')}, "
                         f"enable_motioner={config_json.get('enable_motioner')}.")
    if config_json.get("enable_adain", False) and config_json.get("adain_mode", "attn_norm") != "attn_norm":
        raise ValueError(f"config.json: adain_mode={config_json.get('adain_mode')!r} is not supported "
                         "(the released model uses 'attn_norm').")
    base = dit_config_from_official(config_json, shapes)
    base.pop("rope_max_seq_len")
    return dict(
        base,
        pose_channels=int(shapes["cond_encoder.weight"][1]) if "cond_encoder.weight" in shapes else 0,
        audio_dim=int(shapes["casual_audio_encoder.encoder.conv1_local.conv.weight"][1]),
        num_audio_layers=int(shapes["casual_audio_encoder.weights"][1]),
        num_audio_tokens=int(config_json.get("num_audio_token", 4)),
        audio_inject_layers=[int(i) for i in config_json["audio_inject_layers"]],
        enable_adain=bool(config_json.get("enable_adain", False)),
        zero_timestep=bool(config_json.get("zero_timestep", False)),
        add_last_motion=bool(config_json.get("add_last_motion", True)),
        framepack_drop_mode=str(config_json.get("framepack_drop_mode", "drop")),
    )


# ------------------------------------------------------------------------------------------ T5 (umt5-xxl encoder)
_T5_BLOCK = {
    "norm1": "layer.0.layer_norm",
    "attn.q": "layer.0.SelfAttention.q", "attn.k": "layer.0.SelfAttention.k",
    "attn.v": "layer.0.SelfAttention.v", "attn.o": "layer.0.SelfAttention.o",
    "pos_embedding.embedding": "layer.0.SelfAttention.relative_attention_bias",  # per layer: umt5 has no sharing
    "norm2": "layer.1.layer_norm",
    "ffn.gate.0": "layer.1.DenseReluDense.wi_0",  # gelu(gate(x)) * fc1(x)  ==  act(wi_0(x)) * wi_1(x)
    "ffn.fc1": "layer.1.DenseReluDense.wi_1",
    "ffn.fc2": "layer.1.DenseReluDense.wo",
}


def official_t5_key_to_diffusers(key: str) -> str:
    """Official umt5 encoder `.pth` key → `transformers.UMT5EncoderModel` key."""
    if key == "token_embedding.weight":
        return "shared.weight"  # UMT5EncoderModel ties encoder.embed_tokens to it
    if key == "norm.weight":
        return "encoder.final_layer_norm.weight"
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)\.weight", key)
    if m and m[2] in _T5_BLOCK:
        return f"encoder.block.{m[1]}.{_T5_BLOCK[m[2]]}.weight"
    raise KeyError(f"official T5 key {key!r} is not a known umt5 encoder tensor")


# ------------------------------------------------------------------------------------------ VAE (2.1 and 2.2)
_VAE_RESNET = {"residual.0.gamma": "norm1.gamma", "residual.3.gamma": "norm2.gamma"}
_VAE_RESNET_PARAM = {"residual.2": "conv1", "residual.6": "conv2", "shortcut": "conv_shortcut"}


def _vae_resnet_tail(tail: str) -> str | None:
    if tail in _VAE_RESNET:
        return _VAE_RESNET[tail]
    m = re.fullmatch(r"(residual\.2|residual\.6|shortcut)" + _PARAM, tail)
    return f"{_VAE_RESNET_PARAM[m[1]]}.{m[2]}" if m else None


def _vae_common(key: str) -> str | None:
    """Keys named the same way in both VAE versions (stems, middle, heads, quant convs)."""
    m = re.fullmatch(r"(conv1|conv2)" + _PARAM, key)
    if m:
        return f"{'quant_conv' if m[1] == 'conv1' else 'post_quant_conv'}.{m[2]}"
    m = re.fullmatch(r"(encoder|decoder)\.conv1" + _PARAM, key)
    if m:
        return f"{m[1]}.conv_in.{m[2]}"
    m = re.fullmatch(r"(encoder|decoder)\.head\.(0\.gamma|2\.weight|2\.bias)", key)
    if m:
        return f"{m[1]}." + {"0.gamma": "norm_out.gamma", "2.weight": "conv_out.weight", "2.bias": "conv_out.bias"}[m[2]]
    m = re.fullmatch(r"(encoder|decoder)\.middle\.([02])\.(.+)", key)
    if m and _vae_resnet_tail(m[3]):
        return f"{m[1]}.mid_block.resnets.{int(m[2]) // 2}.{_vae_resnet_tail(m[3])}"
    m = re.fullmatch(r"(encoder|decoder)\.middle\.1\.(norm\.gamma|to_qkv\.weight|to_qkv\.bias|proj\.weight|proj\.bias)",
                     key)
    if m:
        return f"{m[1]}.mid_block.attentions.0.{m[2]}"
    return None


def _vae21_key(key: str, resnets_per_up_stage: int) -> str | None:
    m = re.fullmatch(r"encoder\.downsamples\.(\d+)\.(.+)", key)
    if m:
        tail = _vae_resnet_tail(m[2]) or (m[2] if m[2].startswith(("resample.", "time_conv.")) else None)
        return f"encoder.down_blocks.{m[1]}.{tail}" if tail else None
    m = re.fullmatch(r"decoder\.upsamples\.(\d+)\.(.+)", key)
    if m:  # flat list: per stage `resnets_per_up_stage` resnets then one upsampler (none after the last stage)
        stage, pos = divmod(int(m[1]), resnets_per_up_stage + 1)
        if pos == resnets_per_up_stage:
            return f"decoder.up_blocks.{stage}.upsamplers.0.{m[2]}" if m[2].startswith(("resample.", "time_conv.")) else None
        tail = _vae_resnet_tail(m[2])
        return f"decoder.up_blocks.{stage}.resnets.{pos}.{tail}" if tail else None
    return None


def _vae22_key(key: str) -> str | None:
    m = re.fullmatch(r"(encoder|decoder)\.(downsamples|upsamples)\.(\d+)\.(?:downsamples|upsamples)\.(\d+)\.(.+)", key)
    if not m:
        return None
    side, stage, index, tail = m[1], m[3], m[4], m[5]
    block = "down_blocks" if side == "encoder" else "up_blocks"
    if tail.startswith(("resample.", "time_conv.")):
        return f"{side}.{block}.{stage}.{'downsampler' if side == 'encoder' else 'upsampler'}.{tail}"
    resnet = _vae_resnet_tail(tail)
    return f"{side}.{block}.{stage}.resnets.{index}.{resnet}" if resnet else None


def official_vae_key_to_diffusers(key: str, version: str, num_res_blocks: int = 2) -> str:
    """Official `WanVAE_` key → diffusers `AutoencoderKLWan` key, for ``version`` "2.1" or "2.2"."""
    if version not in ("2.1", "2.2"):
        raise ValueError(f"VAE version must be '2.1' or '2.2'; got {version!r}.")
    new = _vae_common(key) or (_vae21_key(key, num_res_blocks + 1) if version == "2.1" else _vae22_key(key))
    if new is None:
        raise KeyError(f"official Wan {version} VAE key {key!r} is not a known tensor")
    return new


def detect_vae_version(shapes: Shapes) -> str:
    """``"2.2"`` when the encoder takes 2x2-patchified RGB (12 channels) and has nested stages, else ``"2.1"``."""
    nested = any(re.match(r"encoder\.downsamples\.\d+\.downsamples\.", k) for k in shapes)
    return "2.2" if nested or shapes["encoder.conv1.weight"][1] == 12 else "2.1"


def _vae_num_res_blocks(shapes: Shapes, version: str) -> int:
    if version == "2.2":
        return 1 + max(int(m[1]) for k in shapes if (m := re.match(r"encoder\.downsamples\.0\.downsamples\.(\d+)\.residual", k)))
    # 2.1: the encoder list holds 4 stages of `n` resnets plus 3 resamples
    return (1 + max(int(k.split(".")[2]) for k in shapes if k.startswith("encoder.downsamples.")) - 3) // 4


def vae_config_from_official(shapes: Shapes, version: str) -> dict:
    """`AutoencoderKLWan` kwargs for an official VAE state dict (any width)."""
    base_dim = shapes["encoder.conv1.weight"][0]
    z_dim = shapes["conv2.weight"][0]
    cfg = dict(base_dim=base_dim, z_dim=z_dim, dim_mult=[1, 2, 4, 4], num_res_blocks=_vae_num_res_blocks(shapes, version),
               attn_scales=[], temperal_downsample=[False, True, True])
    if version == "2.2":
        cfg.update(decoder_base_dim=shapes["decoder.head.2.weight"][1], is_residual=True, in_channels=12,
                   out_channels=12, patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4,
                   latents_mean=list(WAN22_VAE_LATENTS_MEAN), latents_std=list(WAN22_VAE_LATENTS_STD))
    return cfg
