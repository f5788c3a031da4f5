"""Reading an official Wan2.2-Animate-14B folder into diffusers / transformers components.

The folder (as released) holds the DiT (`config.json` + sharded safetensors of the official `WanAnimateModel`), the
open-clip XLM-RoBERTa ViT-H/14 `.pth` (its visual tower conditions the DiT), the umT5 encoder `.pth` with its
`google/umt5-xxl/` tokenizer, `Wan2.1_VAE.pth` and the optional `relighting_lora.ckpt` for character replacement.

* DiT -> diffusers `WanAnimateTransformer3DModel` (reused as is: its forward matches the official one). Most keys are
  renames; three kinds of tensors change form: the motion encoder's fused-activation biases (``[1, C, 1, 1]`` ->
  ``[C]``), the face adapter's fused key/value projection (split in two) and the motion encoder's fixed blur filters
  (checked, then dropped: diffusers rebuilds them). Every size, the face-crop size included, is read from the
  tensor shapes; all shapes are checked against the model before any tensor is read.
* CLIP -> `transformers.CLIPVisionModel`: the official features are the visual tower's hidden states after all but
  its last block, before the final LayerNorm, i.e. ``CLIPVisionModel(..., output_hidden_states=True).hidden_states[-2]``
  (the text tower, the image head and the logit scale are not used by Animate and are not loaded).
* Relighting LoRA -> a peft adapter on the transformer through diffusers' Wan LoRA loading, after checking that every
  tensor of the file lands on a Linear of the transformer blocks (releases spell the key prefix differently).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanAnimateTransformer3DModel
from diffusers.loaders import WanLoraLoaderMixin
from safetensors import safe_open
from transformers import CLIPVisionConfig, CLIPVisionModel

from ..checkpoint_checks import (
    check_t5_state, check_tensors_fit_model, check_tokenizer_folder, check_vae_state, load_pth_weights_only,
    read_official_dit_config, safetensors_shards, torch_load_error,
)
from ..conversion.official import (
    load_official_t5, load_official_tokenizer, load_official_vae, official_dit_key_to_diffusers,
    read_safetensors_folder,
)
from ..loading import T5_FILE, TOKENIZER_DIR, VAE_FILES

CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
RELIGHTING_LORA_FILE = "relighting_lora.ckpt"
ANIMATE_SHIFT = 5.0  # official `sample_shift` of Wan2.2-Animate-14B
# Official constants the checkpoint does not record: the open-clip ViT-H/14 has 16 heads and LayerNorm eps 1e-5;
# the DiT injects face tokens after every 5th block and encodes face frames 8 at a time.
CLIP_VISION_HEADS = 16
CLIP_LAYER_NORM_EPS = 1e-5
FACE_INJECTION_INTERVAL = 5
MOTION_ENCODE_BATCH = 8
BLUR_TAPS = (1.0, 3.0, 3.0, 1.0)

Shapes = Mapping[str, tuple[int, ...]]


# ------------------------------------------------------------------------------------------------ DiT keys
_ANIMATE_BLOCK = {"cross_attn.k_img": "attn2.add_k_proj", "cross_attn.v_img": "attn2.add_v_proj",
                  "cross_attn.norm_k_img": "attn2.norm_added_k"}
_IMAGE_EMBEDDER = {"0": "norm1", "1": "ff.net.0.proj", "3": "ff.net.2", "4": "norm2"}
_FACE_ADAPTER = {"linear1_q": "to_q", "linear2": "to_out", "q_norm": "norm_q", "k_norm": "norm_k"}
_RES_BLOCK = {"conv1.0.weight": "conv1.weight", "conv1.1.bias": "conv1.act_fn.bias", "conv2.1.weight": "conv2.weight",
              "conv2.2.bias": "conv2.act_fn.bias", "skip.1.weight": "conv_skip.weight"}
_PARAM = r"(weight|bias)"
BLUR_KERNEL_KEY = re.compile(r"motion_encoder\.enc\.net_app\.convs\.\d+\.(conv2|skip)\.0\.kernel")


def _motion_encoder_items(key: str, value) -> list | None:
    """Official motion encoder (`Generator`) tensor -> diffusers `WanAnimateMotionEncoder` tensors."""
    if key == "motion_encoder.dec.direction.weight":
        return [("motion_encoder.motion_synthesis_weight", value)]
    if m := re.fullmatch(rf"motion_encoder\.enc\.fc\.(\d+)\.{_PARAM}", key):
        return [(f"motion_encoder.motion_network.{m[1]}.{m[2]}", value)]
    if BLUR_KERNEL_KEY.fullmatch(key):
        return []  # a fixed filter (checked by `check_blur_kernels`); diffusers builds it as a buffer
    # The fused leaky-ReLU biases are stored as [1, C, 1, 1]; diffusers keeps them flat.
    if key == "motion_encoder.enc.net_app.convs.0.0.weight":
        return [("motion_encoder.conv_in.weight", value)]
    if key == "motion_encoder.enc.net_app.convs.0.1.bias":
        return [("motion_encoder.conv_in.act_fn.bias", value.reshape(-1))]
    if re.fullmatch(r"motion_encoder\.enc\.net_app\.convs\.\d+\.weight", key):
        return [("motion_encoder.conv_out.weight", value)]  # the final 4x4 conv, the only bare one after convs.0
    m = re.fullmatch(r"motion_encoder\.enc\.net_app\.convs\.(\d+)\.(.+)", key)
    if m and m[2] in _RES_BLOCK and int(m[1]) > 0:
        new = f"motion_encoder.res_blocks.{int(m[1]) - 1}.{_RES_BLOCK[m[2]]}"
        return [(new, value.reshape(-1) if new.endswith(".bias") else value)]
    return None


def _face_items(key: str, value) -> list | None:
    """Official face encoder / face adapter tensor -> diffusers tensors (the fused K|V projection is split)."""
    if m := re.fullmatch(rf"face_encoder\.(conv1_local|conv2|conv3)\.conv\.{_PARAM}", key):
        return [(f"face_encoder.{m[1]}.{m[2]}", value)]
    if re.fullmatch(rf"face_encoder\.(out_proj\.{_PARAM}|padding_tokens)", key):
        return [(key, value)]
    if m := re.fullmatch(rf"face_adapter\.fuser_blocks\.(\d+)\.linear1_kv\.{_PARAM}", key):
        k, v = value.chunk(2, dim=0)  # official layout: [K | V] along the output features
        return [(f"face_adapter.{m[1]}.to_k.{m[2]}", k), (f"face_adapter.{m[1]}.to_v.{m[2]}", v)]
    m = re.fullmatch(rf"face_adapter\.fuser_blocks\.(\d+)\.(\w+)\.{_PARAM}", key)
    if m and m[2] in _FACE_ADAPTER:
        return [(f"face_adapter.{m[1]}.{_FACE_ADAPTER[m[2]]}.{m[3]}", value)]
    return None


def _backbone_key(key: str) -> str:
    """Official Wan 2.1 I2V-style backbone key (image cross-attention, image embedder, pose patches) -> diffusers."""
    m = re.fullmatch(rf"blocks\.(\d+)\.(cross_attn\.\w+)\.{_PARAM}", key)
    if m and m[2] in _ANIMATE_BLOCK:
        return f"blocks.{m[1]}.{_ANIMATE_BLOCK[m[2]]}.{m[3]}"
    if m := re.fullmatch(rf"img_emb\.proj\.(\d)\.{_PARAM}", key):
        if m[1] in _IMAGE_EMBEDDER:
            return f"condition_embedder.image_embedder.{_IMAGE_EMBEDDER[m[1]]}.{m[2]}"
    if re.fullmatch(rf"pose_patch_embedding\.{_PARAM}", key):
        return key
    return official_dit_key_to_diffusers(key)


def animate_state_items(key: str, value) -> list[tuple[str, torch.Tensor]]:
    """One official `WanAnimateModel` tensor -> its ``(diffusers key, tensor)`` items (none for a blur filter).

    ``value`` may be a meta tensor: the shape checks run the same conversion on stand-ins before any read.
    Raises ``KeyError`` naming an unknown key.
    """
    items = _motion_encoder_items(key, value) if key.startswith("motion_encoder.") else None
    if items is None and key.startswith("face_"):
        items = _face_items(key, value)
    if items is not None:
        return items
    try:
        return [(_backbone_key(key), value)]
    except KeyError:
        raise KeyError(f"official Wan Animate transformer key {key!r} is not a known WanAnimateModel tensor") from None


# ------------------------------------------------------------------------------------------------ DiT config
def _count(shapes: Shapes, pattern: str) -> int:
    return len({m[1] for k in shapes if (m := re.fullmatch(pattern, k))})


def _motion_encoder_config(shapes: Shapes) -> dict:
    """Face-crop size and channel widths of the motion encoder, from its tensors (any size, not only 512)."""
    num_res = _count(shapes, r"motion_encoder\.enc\.net_app\.convs\.(\d+)\.conv1\.0\.weight")
    size = 2 ** (num_res + 2)  # each residual block halves the crop, down to the final 4x4 conv
    channels = {str(size): shapes["motion_encoder.enc.net_app.convs.0.0.weight"][0]}
    for i in range(1, num_res + 1):
        channels[str(size >> i)] = shapes[f"motion_encoder.enc.net_app.convs.{i}.conv2.1.weight"][0]
    direction = shapes["motion_encoder.dec.direction.weight"]
    return dict(
        motion_encoder_channel_sizes=channels, motion_encoder_size=size,
        motion_style_dim=shapes[f"motion_encoder.enc.net_app.convs.{num_res + 1}.weight"][0],
        motion_dim=direction[1], motion_encoder_dim=direction[0],
    )


def animate_config_from_official(config_json: Mapping, shapes: Shapes) -> dict:
    """`WanAnimateTransformer3DModel` kwargs from the official `config.json` and the official tensor shapes."""
    dim, heads = shapes["patch_embedding.weight"][0], int(config_json["num_heads"])
    face_hidden = shapes["face_encoder.conv2.conv.weight"][0]
    num_layers = int(config_json["num_layers"])
    adapters = _count(shapes, r"face_adapter\.fuser_blocks\.(\d+)\.linear2\.weight")
    if adapters != num_layers // FACE_INJECTION_INTERVAL:
        raise ValueError(f"config.json: num_layers={num_layers} needs {num_layers // FACE_INJECTION_INTERVAL} face "
                         f"adapter block(s) (one per {FACE_INJECTION_INTERVAL} blocks); the checkpoint has {adapters}.")
    return dict(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=dim // heads,
        in_channels=shapes["patch_embedding.weight"][1], latent_channels=shapes["pose_patch_embedding.weight"][1],
        out_channels=int(config_json["out_dim"]), text_dim=shapes["text_embedding.0.weight"][1],
        freq_dim=shapes["time_embedding.0.weight"][1], ffn_dim=shapes["blocks.0.ffn.0.weight"][0],
        num_layers=num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        eps=float(config_json.get("eps", 1e-6)), image_dim=shapes["img_emb.proj.0.weight"][0],
        added_kv_proj_dim=shapes["blocks.0.cross_attn.k_img.weight"][1], rope_max_seq_len=1024,
        face_encoder_hidden_dim=face_hidden,
        face_encoder_num_heads=shapes["face_encoder.conv1_local.conv.weight"][0] // face_hidden,
        inject_face_latents_blocks=FACE_INJECTION_INTERVAL, motion_encoder_batch_size=MOTION_ENCODE_BATCH,
        **_motion_encoder_config(shapes),
    )


_CONFIG_SHAPES = ("patch_embedding.weight", "pose_patch_embedding.weight", "text_embedding.0.weight",
                  "time_embedding.0.weight", "blocks.0.ffn.0.weight", "img_emb.proj.0.weight",
                  "blocks.0.cross_attn.k_img.weight", "face_encoder.conv2.conv.weight",
                  "face_encoder.conv1_local.conv.weight", "motion_encoder.dec.direction.weight",
                  "motion_encoder.enc.net_app.convs.0.0.weight")


def _require_animate_tensors(shapes: Shapes, folder: Path) -> None:
    missing = [k for k in _CONFIG_SHAPES if k not in shapes]
    if missing:
        raise ValueError(f"{folder}: not an official Wan2.2-Animate DiT: tensor(s) {missing} missing (the folder "
                         f"holds {len(shapes)} tensors, e.g. {sorted(shapes)[:3]}).")


# ------------------------------------------------------------------------------------------------ DiT loading
def check_blur_kernels(kernels: Mapping[str, torch.Tensor], source: str) -> None:
    """The motion encoder's stored blur filters are the fixed [1, 3, 3, 1] filter diffusers rebuilds."""
    taps = torch.tensor(BLUR_TAPS, dtype=torch.float64)
    expected = taps[None, :] * taps[:, None]
    expected = expected / expected.sum()
    for key, kernel in kernels.items():
        if tuple(kernel.shape) != (4, 4) or not torch.allclose(kernel.double(), expected, atol=1e-6):
            raise ValueError(f"{source} [{key}]: the motion encoder's blur filter differs from the official "
                             "[1, 3, 3, 1] filter that WanAnimateTransformer3DModel builds; not a Wan Animate DiT.")


def _meta_items(files: Mapping[str, tuple[Path, tuple[int, ...], str]]) -> dict[str, tuple[tuple[int, ...], str]]:
    """diffusers key -> (shape, where) for every official tensor, converted on meta stand-ins (nothing read)."""
    out = {}
    for key, (path, shape, _) in files.items():
        try:
            items = animate_state_items(key, torch.empty(shape, device="meta"))
        except KeyError as e:
            raise ValueError(f"{path}: {e.args[0]}.") from None
        out.update({new: (tuple(t.shape), f"{path} [{key}]") for new, t in items})
    return out


def _iter_shard_tensors(files: Mapping[str, tuple[Path, tuple[int, ...], str]]) -> Iterator[tuple[str, torch.Tensor]]:
    for path in sorted({v[0] for v in files.values()}):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                yield key, f.get_tensor(key)


def load_official_animate_transformer(folder: str | os.PathLike, torch_dtype: torch.dtype | None = None
                                      ) -> WanAnimateTransformer3DModel:
    """diffusers `WanAnimateTransformer3DModel` from an official Animate DiT folder (config.json + shards).

    Sizes come from the tensor shapes (any width, depth or face-crop size). Every tensor's converted shape is
    checked against the model before the first one is read. ``torch_dtype=None`` keeps the stored dtype.
    """
    folder = Path(folder)
    config_json = read_official_dit_config(folder / "config.json")
    files = read_safetensors_folder(folder)
    shapes = {k: v[1] for k, v in files.items()}
    _require_animate_tensors(shapes, folder)
    config = animate_config_from_official(config_json, shapes)
    with init_empty_weights():
        model = WanAnimateTransformer3DModel(**config)
    check_tensors_fit_model(model, _meta_items(files), f"as configured by {folder / 'config.json'}")
    state, kernels = {}, {}
    for key, tensor in _iter_shard_tensors(files):
        if BLUR_KERNEL_KEY.fullmatch(key):
            kernels[key] = tensor
        for new, value in animate_state_items(key, tensor):
            state[new] = value.to(torch_dtype) if torch_dtype is not None and value.is_floating_point() else value
    check_blur_kernels(kernels, str(folder))
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


# ------------------------------------------------------------------------------------------------ CLIP
_CLIP_LAYER = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.proj": "self_attn.out_proj",
               "mlp.0": "mlp.fc1", "mlp.2": "mlp.fc2"}
_CLIP_TOP = {"visual.patch_embedding.weight": "embeddings.patch_embedding.weight",
             "visual.pre_norm.weight": "pre_layrnorm.weight", "visual.pre_norm.bias": "pre_layrnorm.bias",
             "visual.post_norm.weight": "post_layernorm.weight", "visual.post_norm.bias": "post_layernorm.bias"}
CLIP_UNUSED = re.compile(r"textual\..*|log_scale|visual\.head")  # text tower, image head, logit scale


def clip_state_items(key: str, value) -> list[tuple[str, torch.Tensor]]:
    """One official open-clip visual tensor -> ``transformers.CLIPVisionModel`` items (none for unused tensors)."""
    if CLIP_UNUSED.fullmatch(key):
        return []
    if key in _CLIP_TOP:
        return [(_CLIP_TOP[key], value)]
    if key == "visual.cls_embedding":
        return [("embeddings.class_embedding", value.reshape(-1))]
    if key == "visual.pos_embedding":
        return [("embeddings.position_embedding.weight", value.reshape(value.shape[-2:]))]
    m = re.fullmatch(rf"visual\.transformer\.(\d+)\.(.+)\.{_PARAM}", key)
    if m and m[2] == "attn.to_qkv":
        q, k, v = value.chunk(3, dim=0)  # official layout: [Q | K | V] along the output features
        base = f"encoder.layers.{m[1]}.self_attn"
        return [(f"{base}.q_proj.{m[3]}", q), (f"{base}.k_proj.{m[3]}", k), (f"{base}.v_proj.{m[3]}", v)]
    if m and m[2] in _CLIP_LAYER:
        return [(f"encoder.layers.{m[1]}.{_CLIP_LAYER[m[2]]}.{m[3]}", value)]
    raise KeyError(f"official CLIP key {key!r} is not a known open-clip XLM-RoBERTa ViT tensor")


_CLIP_REQUIRED = ("visual.patch_embedding.weight", "visual.pos_embedding", "visual.cls_embedding",
                  "visual.transformer.0.mlp.0.weight")


def clip_vision_config_from_official(shapes: Shapes) -> CLIPVisionConfig:
    """`CLIPVisionConfig` of the official visual tower (width, depth, MLP, patch and image size from the shapes)."""
    width, _, patch, _ = shapes["visual.patch_embedding.weight"]
    grid = math.isqrt(shapes["visual.pos_embedding"][1] - 1)  # positions = grid^2 patches + the class token
    return CLIPVisionConfig(
        hidden_size=width, intermediate_size=shapes["visual.transformer.0.mlp.0.weight"][0],
        num_hidden_layers=_count(shapes, r"visual\.transformer\.(\d+)\.norm1\.weight"),
        num_attention_heads=CLIP_VISION_HEADS, image_size=grid * patch, patch_size=patch, hidden_act="gelu",
        layer_norm_eps=CLIP_LAYER_NORM_EPS, projection_dim=shapes.get("visual.head", (width, width))[1],
    )


def load_official_clip_vision(pth_path: str | os.PathLike, torch_dtype: torch.dtype | None = None
                              ) -> CLIPVisionModel:
    """`transformers.CLIPVisionModel` with the visual tower of the official open-clip XLM-RoBERTa ViT-H/14 `.pth`.

    The official Animate features are ``model(pixels, output_hidden_states=True).hidden_states[-2]``: every block
    but the last, without the final LayerNorm (see `diffusers_wan22.pipelines.pipeline_wan22_animate`).
    """
    state = load_pth_weights_only(pth_path)
    missing = [k for k in _CLIP_REQUIRED if k not in state]
    if missing:
        raise ValueError(f"{pth_path}: not the official open-clip XLM-RoBERTa ViT-H/14 state dict: tensor(s) "
                         f"{missing} missing (the file holds {len(state)} tensors, e.g. {sorted(state)[:3]}).")
    config = clip_vision_config_from_official({k: tuple(v.shape) for k, v in state.items()})
    with init_empty_weights():
        model = CLIPVisionModel(config)
    mapped = {}
    for key, value in state.items():
        try:
            items = clip_state_items(key, value)
        except KeyError as e:
            raise ValueError(f"{pth_path}: {e.args[0]}.") from None
        mapped.update({k: v.to(torch_dtype) if torch_dtype is not None else v for k, v in items})
    check_tensors_fit_model(model, {k: (tuple(v.shape), f"{pth_path}") for k, v in mapped.items()}, str(pth_path))
    model.load_state_dict(mapped, strict=True, assign=True)
    return model.eval()


# ------------------------------------------------------------------------------------------------ relighting LoRA
# Prefixes seen in front of the official module names (peft wrappers, ComfyUI/original exports, diffusers).
_LORA_PREFIXES = ("base_model.model.", "diffusion_model.", "model.", "transformer.")
_LORA_KEY = re.compile(r"(blocks\.\d+\..+)\.lora_(A|B)\.weight")


def read_relighting_lora(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The peft state dict of `relighting_lora.ckpt` (``{"state_dict": ...}`` or a bare dict), loaded with
    ``torch.load(weights_only=True)`` so a pickle holding code is refused, never run; keys normalised to the
    official module names (``blocks.<i>.<module>.lora_<A|B>.weight``) whatever prefix the release used."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for bad or unsafe files
        raise torch_load_error(path, e) from None
    state = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a LoRA state dict (a dict of tensors, optionally under 'state_dict').")
    out = {}
    for key, value in state.items():
        name = key
        while name.startswith(_LORA_PREFIXES):
            name = name.split(".", 1)[1]
        if not _LORA_KEY.fullmatch(name):
            raise ValueError(f"{path}: tensor {key!r} is not a LoRA weight of a transformer block "
                             "(expected [prefix.]blocks.<i>.<module>.lora_<A|B>.weight).")
        out[name] = value
    return out


def _check_lora_lands(converted: Mapping[str, torch.Tensor], transformer, source: str, expected: int) -> None:
    """Every converted tensor names a Linear under ``blocks.*`` (not the face adapter) with matching shapes."""
    if len(converted) != expected:
        raise ValueError(f"{source}: {expected} LoRA tensors became {len(converted)} in diffusers naming; some "
                         "would not be loaded.")
    modules = dict(transformer.named_modules())
    for key, value in converted.items():
        m = re.fullmatch(r"transformer\.(.+)\.lora_(A|B)\.weight", key)
        module = modules.get(m[1]) if m else None
        if not isinstance(module, torch.nn.Linear) or not m[1].startswith("blocks."):
            raise ValueError(f"{source}: LoRA tensor {key!r} lands on no Linear of the transformer blocks.")
        want = (value.shape[0], module.in_features) if m[2] == "A" else (module.out_features, value.shape[1])
        if tuple(value.shape) != want:
            raise ValueError(f"{source}: LoRA tensor {key!r} has shape {tuple(value.shape)}; the Linear it adapts "
                             f"({module.in_features} -> {module.out_features}) needs {want}.")


def relighting_lora_state_dict(path: str | os.PathLike, transformer) -> dict[str, torch.Tensor]:
    """The relighting LoRA in diffusers naming (``transformer.blocks...``), checked to land completely on
    ``transformer``: diffusers' Wan LoRA converter reads the official module names under ``diffusion_model.``."""
    official = read_relighting_lora(path)
    converted = WanLoraLoaderMixin.lora_state_dict({f"diffusion_model.{k}": v for k, v in official.items()})
    _check_lora_lands(converted, transformer, str(path), len(official))
    return converted


def load_relighting_lora(transformer, path: str | os.PathLike, adapter_name: str = "relighting") -> None:
    """Add the relighting LoRA to ``transformer`` as the peft adapter ``adapter_name`` (rank and alpha 128: scale
    1, as the official `WanAnimate` applies it)."""
    state = relighting_lora_state_dict(path, transformer)
    transformer.load_lora_adapter(state, prefix="transformer", adapter_name=adapter_name)


# ------------------------------------------------------------------------------------------------ whole folder
def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"Missing {what}: {path}.")
    return path


def check_official_animate_folder(root: str | os.PathLike, use_relighting_lora: bool = False) -> None:
    """Every file an official Animate folder needs is present and well-formed, before any weight is read."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Checkpoint folder {str(root)!r} does not exist.")
    read_official_dit_config(_require_file(root / "config.json", "Animate DiT config"))
    safetensors_shards(root)
    check_tokenizer_folder(root / TOKENIZER_DIR)
    t5 = _require_file(root / T5_FILE, "T5 text encoder (umt5-xxl)")
    check_t5_state(load_pth_weights_only(t5), t5)  # memory-mapped: only the index is read
    vae = _require_file(root / VAE_FILES["2.1"], "Wan 2.1 VAE")
    check_vae_state(load_pth_weights_only(vae), vae, "2.1", "animate-14B")
    _require_file(root / CLIP_FILE, "CLIP image encoder (open-clip XLM-RoBERTa ViT-H/14)")
    if use_relighting_lora:
        _require_file(root / RELIGHTING_LORA_FILE, "relighting LoRA (use_relighting_lora=True)")


def animate_scheduler() -> UniPCMultistepScheduler:
    """The official default sampler (UniPC, flow matching) with the Animate shift in its config, so
    ``DPMSolverMultistepScheduler.from_config(scheduler.config)`` carries the same shift."""
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                   num_train_timesteps=1000, flow_shift=ANIMATE_SHIFT)


def load_official_animate_components(root: str | os.PathLike, torch_dtype: torch.dtype | None = None,
                                     use_relighting_lora: bool = False, progress: Callable | None = None) -> dict:
    """Every component of the Animate pipeline from an official folder: tokenizer, text_encoder, transformer (with
    the relighting LoRA when asked), vae, image_encoder, scheduler. Checks the folder first."""
    root = Path(root)
    check_official_animate_folder(root, use_relighting_lora)
    say = progress or (lambda _name: None)
    say("transformer")
    transformer = load_official_animate_transformer(root, torch_dtype)
    if use_relighting_lora:
        load_relighting_lora(transformer, root / RELIGHTING_LORA_FILE)
    say("text encoder")
    text_encoder = load_official_t5(root / T5_FILE, torch_dtype)
    say("image encoder")
    image_encoder = load_official_clip_vision(root / CLIP_FILE, torch_dtype)
    say("VAE")
    vae: AutoencoderKLWan = load_official_vae(root / VAE_FILES["2.1"], torch_dtype)
    return dict(tokenizer=load_official_tokenizer(root / TOKENIZER_DIR), text_encoder=text_encoder,
                transformer=transformer, vae=vae, image_encoder=image_encoder, scheduler=animate_scheduler())
