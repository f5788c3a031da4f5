"""Wan2.2-Animate-14B without torch: official file names, the official -> diffusers / transformers tensor map and
the model configurations read from tensor shapes.

Most official tensors are renamed; a few change form on the way, described by `TensorPart` so that the in-memory
loader (`loaders/animate.py`) and the shape checks made before any read apply one rule:

* the motion encoder's fused leaky-ReLU biases are stored ``[1, C, 1, 1]``; diffusers keeps ``[C]`` (squeeze);
* the face adapter's fused key/value projection is split into diffusers' ``to_k`` and ``to_v`` (chunks of dim 0),
  as is the CLIP tower's fused ``to_qkv`` into ``q_proj`` / ``k_proj`` / ``v_proj``;
* the motion encoder's stored blur filters map to nothing (diffusers rebuilds the fixed [1, 3, 3, 1] filter; the
  loader checks the stored one is that filter);
* the CLIP text tower, image head and logit scale map to nothing (Animate uses the visual tower only).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .official_keys import official_dit_key_to_diffusers

Shapes = Mapping[str, tuple[int, ...]]

# ------------------------------------------------------------------------------------------ official names
ANIMATE_CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
RELIGHTING_LORA_FILE = "relighting_lora.ckpt"
ANIMATE_DIT_CLASS = "WanAnimateModel"  # `_class_name` of the official DiT config.json
ANIMATE_PROMPT = "视频中的人在做动作"  # official config `prompt`: used when the prompt is empty
# `--src_root_path` (the official preprocessing output): argument name -> file
SOURCE_FILES = {"image": "src_ref.png", "pose_video": "src_pose.mp4", "face_video": "src_face.mp4",
                "background_video": "src_bg.mp4", "mask_video": "src_mask.mp4"}
REPLACE_ONLY = ("background_video", "mask_video")
MODES = ("animate", "replace")
REFERENCE_FRAME_CHOICES = (1, 5)  # official `refert_num`: "1 or 5"


def source_folder_files(src_root_path: str | os.PathLike, replace: bool) -> dict[str, Path]:
    """The input files of an official preprocessing output folder (``--src_root_path``): argument name -> path,
    all checked present (``FileNotFoundError`` naming the missing ones)."""
    root = Path(src_root_path)
    if not root.is_dir():
        raise FileNotFoundError(f"`src_root_path` {str(root)!r} is not a folder (the output of the official "
                                "Animate preprocessing).")
    names = [k for k in SOURCE_FILES if replace or k not in REPLACE_ONLY]
    missing = [SOURCE_FILES[k] for k in names if not (root / SOURCE_FILES[k]).is_file()]
    if missing:
        mode = "replacement" if replace else "animation"
        raise FileNotFoundError(f"`src_root_path` {str(root)!r} lacks {missing}; {mode} needs "
                                f"{[SOURCE_FILES[k] for k in names]}.")
    return {k: root / SOURCE_FILES[k] for k in names}


# Official constants the checkpoint does not record: the open-clip ViT-H/14 has 16 heads and LayerNorm eps 1e-5;
# the DiT injects face tokens after every 5th block and encodes face frames 8 at a time.
CLIP_VISION_HEADS = 16
CLIP_LAYER_NORM_EPS = 1e-5
FACE_INJECTION_INTERVAL = 5
MOTION_ENCODE_BATCH = 8
BLUR_TAPS = (1.0, 3.0, 3.0, 1.0)


@dataclass(frozen=True)
class TensorPart:
    """One diffusers tensor made from an official one: part ``chunk`` of ``chunks`` equal parts along dim 0, then
    the size-1 dims ``squeeze`` removed."""

    key: str
    chunk: int = 0
    chunks: int = 1
    squeeze: tuple[int, ...] = ()

    @property
    def is_whole(self) -> bool:
        """The official tensor as is (only renamed)."""
        return self.chunks == 1 and not self.squeeze

    def take(self, tensor):
        """This part of ``tensor`` (a torch tensor; called, not imported: the core layer stays torch-free). A cut
        part is a copy: parameters sharing one storage could not be saved with safetensors."""
        if self.chunks > 1:
            tensor = tensor.chunk(self.chunks, dim=0)[self.chunk].clone()
        return tensor.squeeze(self.squeeze) if self.squeeze else tensor

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of this part of a tensor of ``shape`` (``ValueError`` when the tensor cannot be cut so)."""
        shape = tuple(shape)
        if self.chunks > 1:
            if not shape or shape[0] % self.chunks:
                raise ValueError(f"a tensor of shape {shape} does not split into {self.chunks} equal parts along dim 0")
            shape = (shape[0] // self.chunks, *shape[1:])
        if any(d >= len(shape) or shape[d] != 1 for d in self.squeeze):
            raise ValueError(f"a tensor of shape {shape} has no size-1 dims {self.squeeze}")
        return tuple(s for i, s in enumerate(shape) if i not in self.squeeze)


# ------------------------------------------------------------------------------------------ DiT keys
_ANIMATE_BLOCK = {"cross_attn.k_img": "attn2.add_k_proj", "cross_attn.v_img": "attn2.add_v_proj",
                  "cross_attn.norm_k_img": "attn2.norm_added_k"}
_IMAGE_EMBEDDER = {"0": "norm1", "1": "ff.net.0.proj", "3": "ff.net.2", "4": "norm2"}
_FACE_ADAPTER = {"linear1_q": "to_q", "linear2": "to_out", "q_norm": "norm_q", "k_norm": "norm_k"}
_RES_BLOCK = {"conv1.0.weight": "conv1.weight", "conv1.1.bias": "conv1.act_fn.bias", "conv2.1.weight": "conv2.weight",
              "conv2.2.bias": "conv2.act_fn.bias", "skip.1.weight": "conv_skip.weight"}
_PARAM = r"(weight|bias)"
_CONVS = r"motion_encoder\.enc\.net_app\.convs\."
BLUR_KERNEL_KEY = re.compile(_CONVS + r"\d+\.(conv2|skip)\.0\.kernel")
_FUSED_BIAS = (0, 2, 3)  # [1, C, 1, 1] -> [C]


def _motion_encoder_parts(key: str) -> tuple[TensorPart, ...] | None:
    """Official motion encoder (`Generator`) tensor -> diffusers `WanAnimateMotionEncoder` tensors."""
    if key == "motion_encoder.dec.direction.weight":
        return (TensorPart("motion_encoder.motion_synthesis_weight"),)
    if m := re.fullmatch(rf"motion_encoder\.enc\.fc\.(\d+)\.{_PARAM}", key):
        return (TensorPart(f"motion_encoder.motion_network.{m[1]}.{m[2]}"),)
    if BLUR_KERNEL_KEY.fullmatch(key):
        return ()
    if key == "motion_encoder.enc.net_app.convs.0.0.weight":
        return (TensorPart("motion_encoder.conv_in.weight"),)
    if key == "motion_encoder.enc.net_app.convs.0.1.bias":
        return (TensorPart("motion_encoder.conv_in.act_fn.bias", squeeze=_FUSED_BIAS),)
    if re.fullmatch(_CONVS + r"\d+\.weight", key):
        return (TensorPart("motion_encoder.conv_out.weight"),)  # the final 4x4 conv, the only bare one after convs.0
    m = re.fullmatch(_CONVS + r"(\d+)\.(.+)", key)
    if m and m[2] in _RES_BLOCK and int(m[1]) > 0:
        new = f"motion_encoder.res_blocks.{int(m[1]) - 1}.{_RES_BLOCK[m[2]]}"
        return (TensorPart(new, squeeze=_FUSED_BIAS if new.endswith(".bias") else ()),)
    return None


def _face_parts(key: str) -> tuple[TensorPart, ...] | None:
    """Official face encoder / face adapter tensor -> diffusers tensors (the fused K|V projection is split)."""
    if m := re.fullmatch(rf"face_encoder\.(conv1_local|conv2|conv3)\.conv\.{_PARAM}", key):
        return (TensorPart(f"face_encoder.{m[1]}.{m[2]}"),)
    if re.fullmatch(rf"face_encoder\.(out_proj\.{_PARAM}|padding_tokens)", key):
        return (TensorPart(key),)
    if m := re.fullmatch(rf"face_adapter\.fuser_blocks\.(\d+)\.linear1_kv\.{_PARAM}", key):
        # official layout: [K | V] along the output features
        return tuple(TensorPart(f"face_adapter.{m[1]}.{name}.{m[2]}", i, 2) for i, name in enumerate(("to_k", "to_v")))
    m = re.fullmatch(rf"face_adapter\.fuser_blocks\.(\d+)\.(\w+)\.{_PARAM}", key)
    if m and m[2] in _FACE_ADAPTER:
        return (TensorPart(f"face_adapter.{m[1]}.{_FACE_ADAPTER[m[2]]}.{m[3]}"),)
    return None


def _backbone_key(key: str) -> str:
    """Official Wan 2.1 I2V-style backbone key (image cross-attention, image embedder, pose patches) -> diffusers."""
    m = re.fullmatch(rf"blocks\.(\d+)\.(cross_attn\.\w+)\.{_PARAM}", key)
    if m and m[2] in _ANIMATE_BLOCK:
        return f"blocks.{m[1]}.{_ANIMATE_BLOCK[m[2]]}.{m[3]}"
    m = re.fullmatch(rf"img_emb\.proj\.(\d)\.{_PARAM}", key)
    if m and m[1] in _IMAGE_EMBEDDER:
        return f"condition_embedder.image_embedder.{_IMAGE_EMBEDDER[m[1]]}.{m[2]}"
    if re.fullmatch(rf"pose_patch_embedding\.{_PARAM}", key):
        return key
    return official_dit_key_to_diffusers(key)


def official_animate_key_to_diffusers(key: str) -> tuple[TensorPart, ...]:
    """One official `WanAnimateModel` tensor -> the `WanAnimateTransformer3DModel` tensors made from it (none for a
    blur filter). Raises ``KeyError`` naming an unknown key."""
    parts = _motion_encoder_parts(key) if key.startswith("motion_encoder.") else None
    if parts is None and key.startswith("face_"):
        parts = _face_parts(key)
    if parts is not None:
        return parts
    try:
        return (TensorPart(_backbone_key(key)),)
    except KeyError:
        raise KeyError(f"official Wan Animate transformer key {key!r} is not a known WanAnimateModel tensor") from None


# ------------------------------------------------------------------------------------------ DiT config
def _count(shapes: Shapes, pattern: str) -> int:
    return len({m[1] for k in shapes if (m := re.fullmatch(pattern, k))})


def _motion_encoder_config(shapes: Shapes) -> dict:
    """Face-crop size and channel widths of the motion encoder, from its tensors (any size, not only 512)."""
    num_res = _count(shapes, _CONVS + r"(\d+)\.conv1\.0\.weight")
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


ANIMATE_CONFIG_TENSORS = (
    "patch_embedding.weight", "pose_patch_embedding.weight", "text_embedding.0.weight", "time_embedding.0.weight",
    "blocks.0.ffn.0.weight", "img_emb.proj.0.weight", "blocks.0.cross_attn.k_img.weight",
    "face_encoder.conv2.conv.weight", "face_encoder.conv1_local.conv.weight", "motion_encoder.dec.direction.weight",
    "motion_encoder.enc.net_app.convs.0.0.weight",
)


def animate_config_from_official(config_json: Mapping, shapes: Shapes) -> dict:
    """`WanAnimateTransformer3DModel` kwargs from the official `config.json` and the official tensor shapes
    (``ValueError`` when a tensor the sizes are read from is missing, or the face adapters do not fit the depth)."""
    missing = [k for k in ANIMATE_CONFIG_TENSORS if k not in shapes]
    if missing:
        raise ValueError(f"not an official Wan2.2-Animate DiT: tensor(s) {missing} missing (it holds {len(shapes)} "
                         f"tensors, e.g. {sorted(shapes)[:3]})")
    dim, heads = shapes["patch_embedding.weight"][0], int(config_json["num_heads"])
    face_hidden = shapes["face_encoder.conv2.conv.weight"][0]
    num_layers = int(config_json["num_layers"])
    adapters = _count(shapes, r"face_adapter\.fuser_blocks\.(\d+)\.linear2\.weight")
    if adapters != num_layers // FACE_INJECTION_INTERVAL:
        raise ValueError(f"num_layers={num_layers} needs {num_layers // FACE_INJECTION_INTERVAL} face adapter "
                         f"block(s) (one per {FACE_INJECTION_INTERVAL} blocks); the checkpoint has {adapters}")
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


# ------------------------------------------------------------------------------------------ CLIP
_CLIP_LAYER = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.proj": "self_attn.out_proj",
               "mlp.0": "mlp.fc1", "mlp.2": "mlp.fc2"}
_CLIP_TOP = {"visual.patch_embedding.weight": "embeddings.patch_embedding.weight",
             "visual.pre_norm.weight": "pre_layrnorm.weight", "visual.pre_norm.bias": "pre_layrnorm.bias",
             "visual.post_norm.weight": "post_layernorm.weight", "visual.post_norm.bias": "post_layernorm.bias"}
_CLIP_UNUSED = re.compile(r"textual\..*|log_scale|visual\.head")  # text tower, image head, logit scale
CLIP_REQUIRED = ("visual.patch_embedding.weight", "visual.pos_embedding", "visual.cls_embedding",
                 "visual.transformer.0.mlp.0.weight")


def official_clip_key_to_transformers(key: str) -> tuple[TensorPart, ...]:
    """One official open-clip XLM-RoBERTa ViT tensor -> `transformers.CLIPVisionModel` tensors (none for the
    unused text tower, image head and logit scale). Raises ``KeyError`` naming an unknown key."""
    if _CLIP_UNUSED.fullmatch(key):
        return ()
    if key in _CLIP_TOP:
        return (TensorPart(_CLIP_TOP[key]),)
    if key == "visual.cls_embedding":
        return (TensorPart("embeddings.class_embedding", squeeze=(0, 1)),)
    if key == "visual.pos_embedding":
        return (TensorPart("embeddings.position_embedding.weight", squeeze=(0,)),)
    m = re.fullmatch(rf"visual\.transformer\.(\d+)\.(.+)\.{_PARAM}", key)
    if m and m[2] == "attn.to_qkv":  # official layout: [Q | K | V] along the output features
        base = f"encoder.layers.{m[1]}.self_attn"
        return tuple(TensorPart(f"{base}.{name}.{m[3]}", i, 3) for i, name in enumerate(("q_proj", "k_proj", "v_proj")))
    if m and m[2] in _CLIP_LAYER:
        return (TensorPart(f"encoder.layers.{m[1]}.{_CLIP_LAYER[m[2]]}.{m[3]}"),)
    raise KeyError(f"official CLIP key {key!r} is not a known open-clip XLM-RoBERTa ViT tensor")


def clip_vision_config_from_official(shapes: Shapes) -> dict:
    """`transformers.CLIPVisionConfig` kwargs of the official visual tower (width, depth, MLP, patch and image
    size from the shapes; heads and LayerNorm eps are the official constants)."""
    missing = [k for k in CLIP_REQUIRED if k not in shapes]
    if missing:
        raise ValueError(f"not the official open-clip XLM-RoBERTa ViT-H/14 state dict: tensor(s) {missing} missing "
                         f"(it holds {len(shapes)} tensors, e.g. {sorted(shapes)[:3]})")
    width, _, patch, _ = shapes["visual.patch_embedding.weight"]
    grid = math.isqrt(shapes["visual.pos_embedding"][1] - 1)  # positions = grid^2 patches + the class token
    return dict(
        hidden_size=width, intermediate_size=shapes["visual.transformer.0.mlp.0.weight"][0],
        num_hidden_layers=_count(shapes, r"visual\.transformer\.(\d+)\.norm1\.weight"),
        num_attention_heads=CLIP_VISION_HEADS, image_size=grid * patch, patch_size=patch, hidden_act="gelu",
        layer_norm_eps=CLIP_LAYER_NORM_EPS, projection_dim=shapes.get("visual.head", (width, width))[1],
    )
