"""Official Wan 2.2 component files -> diffusers / transformers models, in memory.

Each loader reads one official file or folder (DiT safetensors shards, umt5 `.pth`, VAE `.pth`, tokenizer and
wav2vec2 folders), renames its tensors with the key maps of `core/official_keys.py`, checks names and shapes against
the model built on the meta device, and assigns the tensors (no second copy). Configurations come from the tensor
shapes, so real and tiny checkpoints load the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from safetensors import safe_open
from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

from ..core.names import WAV2VEC_DIR
from ..core.official_keys import (
    Shapes,
    detect_vae_version,
    dit_config_from_official,
    official_dit_key_to_diffusers,
    official_s2v_key_to_diffusers,
    official_t5_key_to_diffusers,
    official_vae_key_to_diffusers,
    s2v_config_from_official,
    vae_config_from_official,
)
from ..models.transformer_wan_s2v import WanS2VTransformer3DModel
from .checks import check_dit_shapes, check_t5_state, check_vae_state, read_official_dit_config
from .file_io import load_pth_weights_only, read_safetensors_folder


def t5_config_from_official(shapes: Shapes):
    """`transformers.UMT5Config` matching the official encoder's tensor shapes."""
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
        return WanS2VTransformer3DModel, s2v_config_from_official, official_s2v_key_to_diffusers
    return WanTransformer3DModel, dit_config_from_official, official_dit_key_to_diffusers


def load_official_t5(pth_path: str | os.PathLike, torch_dtype: torch.dtype | None = None):
    """`transformers.UMT5EncoderModel` from the official `models_t5_umt5-xxl-enc-bf16.pth`."""
    state = load_pth_weights_only(pth_path)
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
    state = load_pth_weights_only(pth_path)
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
    return AutoTokenizer.from_pretrained(str(folder))


def load_official_audio_stack(ckpt_dir: str | os.PathLike, torch_dtype: torch.dtype | None = None) -> dict:
    """The wav2vec2 model (`Wav2Vec2ForCTC`, as the official code loads it) and its feature extractor.

    The official code runs wav2vec2 in float32 whatever the DiT's dtype; so do we unless ``torch_dtype`` is given
    explicitly for it here (`load_official_components` does not pass the pipeline's dtype on).
    """
    folder = Path(ckpt_dir) / WAV2VEC_DIR
    if not folder.exists():
        raise FileNotFoundError(f"Missing wav2vec2 audio encoder folder: {folder}.")
    return dict(
        audio_encoder=Wav2Vec2ForCTC.from_pretrained(str(folder), torch_dtype=torch_dtype or torch.float32).eval(),
        audio_processor=Wav2Vec2FeatureExtractor.from_pretrained(str(folder)),
    )
