"""The one mapping from official Wan 2.2 checkpoint files to diffusers / transformers classes.

Every rename is a pure per-key function, so the in-memory loaders here and the streaming converter
(`conversion/convert.py`) share it. Configurations are inferred from tensor shapes, so real and tiny checkpoints
load the same way. Unknown keys raise `KeyError` naming the key; loaders turn missing, unexpected or mis-shaped
tensors into a `ValueError` naming them and the file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Mapping

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from safetensors import safe_open

from ..checkpoint_checks import (
    check_dit_shapes, check_t5_state, check_vae_state, read_official_dit_config, shard_files, torch_load_error,
)

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


def t5_config_from_official(shapes: Shapes):
    """`transformers.UMT5Config` matching the official encoder's tensor shapes."""
    from transformers import UMT5Config

    layers = sorted({int(k.split(".")[1]) for k in shapes if k.startswith("blocks.")})
    num_buckets, num_heads = shapes["blocks.0.pos_embedding.embedding.weight"]
    inner = shapes["blocks.0.attn.q.weight"][0]
    vocab, d_model = shapes["token_embedding.weight"]
    return UMT5Config(
        vocab_size=vocab, d_model=d_model, d_kv=inner // num_heads, d_ff=shapes["blocks.0.ffn.fc1.weight"][0],
        num_layers=len(layers), num_decoder_layers=len(layers), num_heads=num_heads,
        relative_attention_num_buckets=num_buckets, relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu", dropout_rate=0.0, layer_norm_epsilon=1e-6, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0, tie_word_embeddings=True,
    )


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


# ------------------------------------------------------------------------------------------ reading files
# safetensors header dtype names -> torch dtypes (the converter writes headers with the inverse).
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


def read_safetensors_folder(folder: str | os.PathLike) -> dict[str, tuple[Path, tuple[int, ...], str]]:
    """key → (file, shape, dtype) for a (sharded) safetensors folder, without loading any tensor."""
    out = {}
    for path in shard_files(folder)[0]:
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    sl = f.get_slice(key)
                    out[key] = (path, tuple(sl.get_shape()), sl.get_dtype())
        except Exception as e:  # noqa: BLE001 - SafetensorError (e.g. a truncated file) is none of OSError/ValueError
            raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    return out


def load_pth_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A `.pth` state dict, memory-mapped and with ``weights_only=True`` (never arbitrary pickle)."""
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for bad or unsafe files
        raise torch_load_error(path, e) from None  # names the file; says so when it holds pickled code
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a dict of tensors (a state dict).")
    return state


def _load_mapped(model: torch.nn.Module, state: Mapping[str, torch.Tensor], map_key: Callable[[str], str],
                 source: str, dtype: torch.dtype | None, tied: tuple[str, ...] = ()) -> None:
    """Rename, check and assign ``state`` into ``model`` (built on meta); every problem names tensor and file."""
    mapped = {}
    for key, tensor in state.items():
        try:
            mapped[map_key(key)] = tensor
        except KeyError as e:
            raise ValueError(f"{source}: {e.args[0]}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(mapped) - set(tied))
    unexpected = sorted(set(mapped) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{source}: missing tensors {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected tensors {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}.")
    for key, tensor in mapped.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ValueError(f"{source}: tensor {key!r} has shape {tuple(tensor.shape)}, the model expects "
                             f"{tuple(expected[key].shape)}.")
    if dtype is not None:
        mapped = {k: v.to(dtype) if v.is_floating_point() else v for k, v in mapped.items()}
    model.load_state_dict(mapped, strict=not tied, assign=True)


# ------------------------------------------------------------------------------------------ loaders
def load_official_transformer(folder: str | os.PathLike, torch_dtype: torch.dtype | None = None):
    """A diffusers `WanTransformer3DModel` (or, for S2V, `WanS2VTransformer3DModel`) from an official DiT folder
    (config.json + sharded safetensors).

    ``torch_dtype=None`` keeps the checkpoint's dtype; otherwise every floating tensor is cast to it.
    """
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"Missing {cfg_path}.")
    files = read_safetensors_folder(folder)
    official_config = read_official_dit_config(cfg_path)
    model_cls, make_config, map_key = official_transformer_kind(official_config)
    config = make_config(official_config, {k: v[1] for k, v in files.items()})
    check_dit_shapes(model_cls, config, files, map_key, cfg_path)  # names the shard of a bad tensor, reads none
    state = {}
    for path in sorted({v[0] for v in files.values()}):
        with safe_open(str(path), framework="pt") as f:
            state.update({k: f.get_tensor(k) for k in f.keys()})
    with init_empty_weights():
        model = model_cls(**config)
    _load_mapped(model, state, map_key, str(folder), torch_dtype)
    return model.eval()


def official_transformer_kind(config_json: Mapping):
    """(model class, config builder, key map) for an official DiT `config.json` (WanModel or WanModel_S2V)."""
    if config_json.get("model_type") == "s2v":
        from ..models.transformer_wan_s2v import WanS2VTransformer3DModel

        return WanS2VTransformer3DModel, s2v_config_from_official, official_s2v_key_to_diffusers
    return WanTransformer3DModel, dit_config_from_official, official_dit_key_to_diffusers


def load_official_t5(pth_path: str | os.PathLike, torch_dtype: torch.dtype | None = None):
    """`transformers.UMT5EncoderModel` from the official `models_t5_umt5-xxl-enc-bf16.pth`."""
    from transformers import UMT5EncoderModel

    state = load_pth_state_dict(pth_path)
    check_t5_state(state, pth_path)  # a wrong or empty file is named, not a KeyError
    config = t5_config_from_official({k: tuple(v.shape) for k, v in state.items()})
    with init_empty_weights():
        model = UMT5EncoderModel(config)
    _load_mapped(model, state, official_t5_key_to_diffusers, str(pth_path), torch_dtype,
                 tied=("encoder.embed_tokens.weight",))
    model.tie_weights()
    return model.eval()


def load_official_vae(pth_path: str | os.PathLike, torch_dtype: torch.dtype | None = None) -> AutoencoderKLWan:
    """`AutoencoderKLWan` from `Wan2.1_VAE.pth` or `Wan2.2_VAE.pth` (version detected from the tensors)."""
    state = load_pth_state_dict(pth_path)
    check_vae_state(state, pth_path)  # a wrong or empty file is named, not a KeyError
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    version = detect_vae_version(shapes)
    config = vae_config_from_official(shapes, version)
    with init_empty_weights():
        model = AutoencoderKLWan(**config)
    n = config["num_res_blocks"]
    _load_mapped(model, state, lambda k: official_vae_key_to_diffusers(k, version, n), str(pth_path), torch_dtype)
    return model.eval()


def load_official_tokenizer(folder: str | os.PathLike):
    """The umt5 tokenizer from the official `google/umt5-xxl/` folder."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))
