"""Streaming, atomic, verified conversion of official Wan 2.2 checkpoints to diffusers folders (`wan22 convert`).

* **Streaming:** tensors are read one at a time (safetensors `safe_open`, or `torch.load(mmap=True,
  weights_only=True)` for `.pth`), renamed with the one key mapping in `core/official_keys.py`, optionally cast,
  and appended to a shard that is written as soon as it reaches ``max_shard_size``. Peak host RAM is about one
  output shard plus one tensor, whatever the model size.
* **Atomic:** everything is written into a hidden temporary sibling of DST, fsynced, and renamed to DST at the
  very end; an existing DST is only replaced with ``overwrite=True`` (it is moved aside first and deleted after the
  new folder is in place). A conversion killed at any moment leaves DST absent or untouched.
* **Verified:** ``verify=True`` re-opens DST and checks every tensor's presence, shape, dtype and a checksum
  against its source tensor (cast the same way).

Layouts: ``"wan22"`` is our pipeline folder (`DiffusionPipeline.from_pretrained` after `import diffusers_wan22`);
``"diffusers"`` is the stock layout (`transformer/` + `transformer_2/`, `boundary_ratio` in `model_index.json`)
that stock `diffusers.WanPipeline` / `WanImageToVideoPipeline` load, with the official `flow_shift`. Animate-14B:
``"wan22"`` is `Wan22AnimatePipeline`'s folder, ``"diffusers"`` stock `WanAnimatePipeline`'s (plus a CLIP image
processor); its few tensors that change form (split K|V / Q|K|V, squeezed biases) are cut by `core/animate.py`'s
`TensorPart`s while streaming, and any face-crop size converts.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import diffusers
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKLWan, WanAnimateTransformer3DModel, WanTransformer3DModel
from safetensors import safe_open
from tqdm.auto import tqdm
from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel, UMT5EncoderModel

from ..core import official_keys as official
from ..core.animate import (
    ANIMATE_CLIP_FILE,
    BLUR_KERNEL_KEY,
    TensorPart,
    animate_config_from_official,
    clip_vision_config_from_official,
    official_animate_key_to_diffusers,
    official_clip_key_to_transformers,
)
from ..core.folders import detect_official_variant
from ..core.names import (
    DIFFUSERS_WEIGHTS,
    EXPERT_ATTRS,
    EXPERT_DIRS,
    EXPERTS,
    MODEL_INDEX,
    T5_FILE,
    TOKENIZER_DIR,
    TRANSFORMERS_WEIGHTS,
    VAE_FILES,
)
from ..core.variants import get_variant
from ..models.transformer_wan_moe import WanMoETransformer3DModel
from ..models.transformer_wan_turbo import TurboWanMoETransformer3DModel
from ..schedulers.official import official_scheduler
from ..schedulers.scheduling_rcm import RCMScheduler
from .animate import check_blur_kernels
from .checks import check_official_folder, check_tensors_fit_model, read_official_dit_config
from .file_io import DTYPES, SAFETENSORS_DTYPES, load_pth_weights_only, shard_files
from .official_models import load_official_audio_stack, official_transformer_kind, t5_config_from_official
from .turbo import (
    TURBO_I2V_BOUNDARY,
    turbo_component_files,
    turbo_config_from_shapes,
    turbo_key_to_diffusers,
    turbo_patch_shape,
)

LAYOUTS = ("wan22", "diffusers")


# ------------------------------------------------------------------------------------------------ sources
@dataclass(frozen=True)
class TensorRef:
    """One source tensor and where it goes."""

    file: Path
    key: str
    out_key: str
    part: TensorPart | None = None  # a cut of the source tensor (Animate: split K|V / Q|K|V, squeezed biases)


_HEADER_DTYPES = {v: k for k, v in SAFETENSORS_DTYPES.items()}  # torch dtype -> header name, for writing


class TensorReader:
    """Hands out source tensors one at a time, without keeping source files mapped in between.

    Each read opens the file, copies the one tensor out and closes (unmaps) it again, so pages of a 50 GB
    checkpoint never pile up in the process's resident memory; only keys, shapes and dtypes are cached.
    """

    def __init__(self) -> None:
        self._meta: dict[Path, dict[str, tuple[tuple[int, ...], torch.dtype]]] = {}

    def _index(self, path: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        if path not in self._meta:
            if path.suffix == ".safetensors":
                try:
                    with safe_open(str(path), framework="pt") as f:
                        self._meta[path] = {k: (tuple(f.get_slice(k).get_shape()),
                                                SAFETENSORS_DTYPES[f.get_slice(k).get_dtype()]) for k in f.keys()}
                except Exception as e:  # noqa: BLE001 - truncated/corrupt files raise various errors
                    raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
            else:
                self._meta[path] = {k: (tuple(v.shape), v.dtype) for k, v in load_pth_weights_only(path).items()}
        return self._meta[path]

    def keys(self, path: Path) -> list[str]:
        return list(self._index(path))

    def source_shape(self, ref: TensorRef) -> tuple[int, ...]:
        return self._index(ref.file)[ref.key][0]

    def shape(self, ref: TensorRef) -> tuple[int, ...]:
        shape = self.source_shape(ref)
        return shape if ref.part is None else ref.part.shape(shape)

    def dtype(self, ref: TensorRef) -> torch.dtype:
        return self._index(ref.file)[ref.key][1]

    def get(self, ref: TensorRef) -> torch.Tensor:
        if ref.file.suffix == ".safetensors":
            with safe_open(str(ref.file), framework="pt") as f:
                tensor = f.get_tensor(ref.key)
        else:
            tensor = load_pth_weights_only(ref.file)[ref.key].clone()  # the copy lets the file's mapping go
        return tensor if ref.part is None else ref.part.take(tensor)


def _safetensors_files(folder: Path) -> list[Path]:
    return shard_files(folder)[0]


# ------------------------------------------------------------------------------------------------ shard writer
def parse_size(size: str | int) -> int:
    """``"5GB"`` / ``"500MB"`` / ``"50KB"`` / an int number of bytes."""
    if isinstance(size, int):
        return size
    text = size.strip().upper()
    for unit, factor in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3), ("B", 1)):
        if text.endswith(unit):
            try:
                return int(float(text[: -len(unit)]) * factor)
            except ValueError:
                break
    raise ValueError(f"`max_shard_size` must look like '5GB', '500MB' or a byte count; got {size!r}.")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _split_shards(entries: list[tuple[str, tuple[int, ...], torch.dtype]], max_bytes: int) -> list[list[int]]:
    """Group entry indices into consecutive shards of at most ``max_bytes`` (a larger tensor gets its own)."""
    shards, current, size = [], [], 0
    for i, (_, shape, dtype) in enumerate(entries):
        nbytes = math.prod(shape) * dtype.itemsize
        if current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(i)
        size += nbytes
    return shards + [current] if current else shards


def write_safetensors_streaming(path: Path, entries: list[tuple[str, tuple[int, ...], torch.dtype]],
                                tensors: Iterable[torch.Tensor]) -> None:
    """Write a safetensors file whose header is known up front, streaming the tensors' bytes one at a time.

    Unlike `safetensors.torch.save_file`, which serialises the whole file in memory, this holds one tensor at a
    time. Each tensor must match its entry's shape and dtype.
    """
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for key, shape, dtype in entries:
        nbytes = math.prod(shape) * dtype.itemsize
        header[key] = {"dtype": _HEADER_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset,
                                                                                                   offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format aligns the data section to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for (key, shape, dtype), tensor in zip(entries, tensors, strict=True):
            if tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype:
                raise ValueError(f"{key}: got {tuple(tensor.shape)} {tensor.dtype}, planned {shape} {dtype}.")
            f.write(tensor.contiguous().view(torch.uint8).numpy().data)
        f.flush()
        os.fsync(f.fileno())


def write_sharded(folder: Path, weights_name: str, entries, tensors: Iterable[torch.Tensor], max_bytes: int) -> int:
    """Shards named like diffusers/transformers (``name-00001-of-0000N``) + index; returns the bytes written."""
    groups = _split_shards(entries, max_bytes)
    stem, ext = weights_name.rsplit(".", 1)
    n = len(groups)
    names = [weights_name] if n == 1 else [f"{stem}-{i + 1:05d}-of-{n:05d}.{ext}" for i in range(n)]
    stream = iter(tensors)
    weight_map = {}
    for name, group in zip(names, groups):
        shard_entries = [entries[i] for i in group]
        write_safetensors_streaming(folder / name, shard_entries, (next(stream) for _ in group))
        weight_map.update({e[0]: name for e in shard_entries})
    total = sum(math.prod(shape) * dtype.itemsize for _, shape, dtype in entries)
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / f"{weights_name}.index.json").write_text(json.dumps(index, indent=2))
    return total


# ------------------------------------------------------------------------------------------------ plan
@dataclass
class ComponentPlan:
    """One component folder of DST: its config writer and the tensors that go into it."""

    name: str
    weights_name: str
    refs: list[TensorRef] = field(default_factory=list)
    write_config: Callable[[Path], None] | None = None
    model: Callable[[], torch.nn.Module] | None = None  # built on meta: the tensors must fit it exactly
    tied: tuple[str, ...] = ()  # model keys the checkpoint does not store (tied weights)
    model_source: str = ""  # where the model's configuration comes from, for error messages


def _mapped_refs(reader: TensorReader, files: Iterable[Path], map_key: Callable[[str], str | tuple[TensorPart, ...]],
                 prefix: str = ""):
    """The refs of every tensor of ``files``; ``map_key`` gives the new name, or the parts (Animate) it becomes."""
    refs = []
    for f in files:
        for key in reader.keys(f):
            try:
                mapped = map_key(key)
            except KeyError as e:
                raise ValueError(f"{f}: tensor {key!r} has no diffusers counterpart ({e}).") from None
            parts = (TensorPart(mapped),) if isinstance(mapped, str) else mapped
            refs += [TensorRef(f, key, prefix + p.key, None if p.is_whole else p) for p in parts]
    return refs


def _shapes(reader: TensorReader, refs: list[TensorRef]) -> dict[str, tuple[int, ...]]:
    """Official key -> official shape (what the configs are inferred from)."""
    return {r.key: reader.source_shape(r) for r in refs}


def _meta_model(model_cls, config) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        with init_empty_weights():
            return model_cls(**config) if isinstance(config, dict) else model_cls(config)

    return build


def check_plan(plan: ComponentPlan, reader: TensorReader) -> None:
    """Every tensor of ``plan`` has its place and shape in the model its config describes, none is missing."""
    if plan.model is not None:
        tensors = {r.out_key: (reader.shape(r), f"{r.file} [{r.key}]") for r in plan.refs}
        check_tensors_fit_model(plan.model(), tensors, f"{plan.name}, {plan.model_source}", plan.tied)


def _config_writer(model_cls, config: dict) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        with init_empty_weights():  # only the config is needed, no weights are allocated
            model_cls(**config).save_config(folder)

    return write


def plan_conversion(src: Path, variant: str, layout: str, reader: TensorReader) -> tuple[list[ComponentPlan], dict]:
    """Every component of DST (with its tensors) for an official folder, and the model_index.json content."""
    defaults = get_variant(variant)
    check_official_folder(src, variant)  # every file present and well-formed: fail before anything is written
    plans: list[ComponentPlan] = []

    # Transformer(s)
    if variant == "animate-14B":
        plans += _animate_plans(src, reader)
    elif defaults.boundary_ratio is not None:
        expert_dirs = [src / EXPERT_DIRS[k] for k in EXPERTS]
        expert_refs = [
            _mapped_refs(reader, _safetensors_files(d), official.official_dit_key_to_diffusers,
                         prefix=f"{attr}." if layout == "wan22" else "")
            for d, attr in zip(expert_dirs, EXPERT_ATTRS.values())
        ]
        cfg = official.dit_config_from_official(
            read_official_dit_config(expert_dirs[0] / "config.json"), _shapes(reader, expert_refs[0])
        )
        if layout == "wan22":
            moe_cfg = dict(cfg, boundary_ratio=defaults.boundary_ratio)
            plans.append(ComponentPlan("transformer", DIFFUSERS_WEIGHTS, expert_refs[0] + expert_refs[1],
                                       _config_writer(WanMoETransformer3DModel, moe_cfg),
                                       _meta_model(WanMoETransformer3DModel, moe_cfg),
                                       model_source=f"as configured by {expert_dirs[0] / 'config.json'}"))
        else:
            for name, refs in zip(("transformer", "transformer_2"), expert_refs):
                plans.append(ComponentPlan(name, DIFFUSERS_WEIGHTS, refs, _config_writer(WanTransformer3DModel, cfg),
                                           _meta_model(WanTransformer3DModel, cfg),
                                           model_source=f"as configured by {expert_dirs[0] / 'config.json'}"))
    else:
        official_cfg = read_official_dit_config(src / "config.json")
        model_cls, make_config, map_key = official_transformer_kind(official_cfg)  # WanModel or S2V
        refs = _mapped_refs(reader, _safetensors_files(src), map_key)
        cfg = make_config(official_cfg, _shapes(reader, refs))
        plans.append(ComponentPlan("transformer", DIFFUSERS_WEIGHTS, refs, _config_writer(model_cls, cfg),
                                   _meta_model(model_cls, cfg),
                                   model_source=f"as configured by {src / 'config.json'}"))

    vae_path = src / VAE_FILES[defaults.vae_version]
    if not vae_path.exists():
        raise FileNotFoundError(f"Missing VAE {defaults.vae_version}: {vae_path}.")
    plans += [text_encoder_plan(reader, src / T5_FILE), vae_plan(reader, vae_path, defaults.vae_version)]
    for plan in plans:  # a missing, extra or mis-shaped tensor is an error now, not a broken folder later
        check_plan(plan, reader)
    return plans, _model_index(variant, layout)


def text_encoder_plan(reader: TensorReader, t5_path: Path) -> ComponentPlan:
    """The official umT5 `.pth` as a transformers `UMT5EncoderModel` folder."""
    t5_refs = _mapped_refs(reader, [t5_path], official.official_t5_key_to_diffusers)
    t5_config = t5_config_from_official(_shapes(reader, t5_refs))

    def write_t5_config(folder: Path, config=t5_config) -> None:
        config.architectures = ["UMT5EncoderModel"]
        config.save_pretrained(folder)

    return ComponentPlan("text_encoder", TRANSFORMERS_WEIGHTS, t5_refs, write_t5_config,
                         _meta_model(UMT5EncoderModel, t5_config), tied=("encoder.embed_tokens.weight",),
                         model_source=f"as inferred from {t5_path}")


def vae_plan(reader: TensorReader, vae_path: Path, version: str) -> ComponentPlan:
    """An official VAE `.pth` (Wan ``version`` "2.1" / "2.2") as a diffusers `AutoencoderKLWan` folder."""
    vae_refs = _mapped_refs(reader, [vae_path], lambda k: official.official_vae_key_to_diffusers(k, version))
    vae_cfg = official.vae_config_from_official(_shapes(reader, vae_refs), version)
    return ComponentPlan("vae", DIFFUSERS_WEIGHTS, vae_refs, _config_writer(AutoencoderKLWan, vae_cfg),
                         _meta_model(AutoencoderKLWan, vae_cfg), model_source=f"as inferred from {vae_path}")


def _animate_plans(src: Path, reader: TensorReader) -> list[ComponentPlan]:
    """Animate-14B: the DiT (its blur filters checked, not written) and the CLIP visual tower (the folder was checked
    by `plan_conversion`)."""
    refs = _mapped_refs(reader, _safetensors_files(src), official_animate_key_to_diffusers)
    kernels = [TensorRef(f, k, k) for f in _safetensors_files(src) for k in reader.keys(f)
               if BLUR_KERNEL_KEY.fullmatch(k)]
    check_blur_kernels({r.key: reader.get(r) for r in kernels}, str(src))
    config = animate_config_from_official(read_official_dit_config(src / "config.json"),
                                          {**_shapes(reader, refs), **_shapes(reader, kernels)})
    clip_path = src / ANIMATE_CLIP_FILE
    clip_refs = _mapped_refs(reader, [clip_path], official_clip_key_to_transformers)
    clip_config = CLIPVisionConfig(**clip_vision_config_from_official(
        {k: reader.source_shape(TensorRef(clip_path, k, k)) for k in reader.keys(clip_path)}))

    def write_clip_config(folder: Path, config=clip_config) -> None:
        config.architectures = ["CLIPVisionModel"]
        config.save_pretrained(folder)

    return [ComponentPlan("transformer", DIFFUSERS_WEIGHTS, refs, _config_writer(WanAnimateTransformer3DModel, config),
                          _meta_model(WanAnimateTransformer3DModel, config),
                          model_source=f"as configured by {src / 'config.json'}"),
            ComponentPlan("image_encoder", TRANSFORMERS_WEIGHTS, clip_refs, write_clip_config,
                          _meta_model(CLIPVisionModel, clip_config), model_source=f"as inferred from {clip_path}")]


def _animate_model_index(index: dict, layout: str) -> dict:
    """Ours (`Wan22AnimatePipeline`) or diffusers' `WanAnimatePipeline` (which also takes a CLIP image processor)."""
    index = dict(index, image_encoder=["transformers", "CLIPVisionModel"],
                 transformer=["diffusers", "WanAnimateTransformer3DModel"])
    if layout == "wan22":
        return {"_class_name": "Wan22AnimatePipeline", **index}
    return {"_class_name": "WanAnimatePipeline", **index, "image_processor": ["transformers", "CLIPImageProcessor"]}


def _model_index(variant: str, layout: str) -> dict:
    defaults = get_variant(variant)
    index = {
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5Tokenizer"],
        "vae": ["diffusers", "AutoencoderKLWan"],
    }
    if variant == "animate-14B":
        return _animate_model_index(index, layout)
    if variant == "s2v-14B":
        return {"_class_name": "Wan22SpeechToVideoPipeline", **index,
                "transformer": ["diffusers_wan22", "WanS2VTransformer3DModel"],
                "audio_encoder": ["transformers", "Wav2Vec2ForCTC"],
                "audio_processor": ["transformers", "Wav2Vec2FeatureExtractor"]}
    if layout == "wan22":
        cls = "Wan22ImageToVideoPipeline" if variant == "i2v-A14B" else "Wan22Pipeline"
        transformer = (["diffusers_wan22", "WanMoETransformer3DModel"] if defaults.boundary_ratio is not None
                       else ["diffusers", "WanTransformer3DModel"])
        return {"_class_name": cls, **index, "transformer": transformer}
    stock = {"_class_name": "WanImageToVideoPipeline" if variant == "i2v-A14B" else "WanPipeline", **index,
             "transformer": ["diffusers", "WanTransformer3DModel"],
             "transformer_2": ["diffusers", "WanTransformer3DModel"] if defaults.boundary_ratio else [None, None],
             "boundary_ratio": defaults.boundary_ratio, "expand_timesteps": variant == "ti2v-5B"}
    if variant == "i2v-A14B":
        stock.update(image_encoder=[None, None], image_processor=[None, None])
    return stock


# ------------------------------------------------------------------------------------------------ model card
_ANIMATE_CARD_CALL = """# the official preprocessing's outputs (src_ref.png, src_pose.mp4, src_face.mp4 [, src_bg.mp4, src_mask.mp4])
out = pipe(image="src/src_ref.png", pose_video="src/src_pose.mp4", face_video="src/src_face.mp4")
# character replacement: mode="replace", background_video="src/src_bg.mp4", mask_video="src/src_mask.mp4"
from diffusers.utils import export_to_video
export_to_video(out.frames[0], "animate.mp4", fps=30)"""


def _card_defaults(variant: str, guidance: str) -> str:
    d = get_variant(variant)
    if variant == "animate-14B":
        return (f"{d.sample_steps} steps, flow shift {d.sample_shift}, {guidance} (classifier-free guidance only when "
                f"> 1), clips of {d.num_frames} frames at {d.fps} fps; the video takes the pose video's size. Only "
                "`Wan22AnimatePipeline` (diffusers-wan22) reproduces the official preprocessing and sigma grid; the "
                "relighting LoRA of the official folder (`relighting_lora.ckpt`) is applied with "
                "`diffusers_wan22.load_relighting_lora(pipe.transformer, path)`")
    return (f"{d.sample_steps} steps, flow shift {d.sample_shift}, {guidance}\n(high-noise / low-noise expert), "
            f"{d.num_frames} frames at {d.fps} fps, {d.width}x{d.height}")


def model_card(variant: str, layout: str) -> str:
    """Hub model card (YAML front matter + usage) for a converted folder."""
    d = get_variant(variant)
    tag = {"t2v-A14B": "text-to-video", "i2v-A14B": "image-to-video", "ti2v-5B": "text-to-video",
           "s2v-14B": "image-to-video", "animate-14B": "image-to-video"}[variant]
    base = {"t2v-A14B": "Wan-AI/Wan2.2-T2V-A14B", "i2v-A14B": "Wan-AI/Wan2.2-I2V-A14B",
            "ti2v-5B": "Wan-AI/Wan2.2-TI2V-5B", "s2v-14B": "Wan-AI/Wan2.2-S2V-14B",
            "animate-14B": "Wan-AI/Wan2.2-Animate-14B"}[variant]
    if variant == "animate-14B":  # stock WanAnimatePipeline loads the diffusers layout too, with its own numerics
        load = ("from diffusers_wan22 import Wan22AnimatePipeline\n\n"
                "pipe = Wan22AnimatePipeline.from_pretrained(\"<this folder or repo>\", torch_dtype=torch.bfloat16)")
    elif layout == "wan22":
        load = ("import diffusers_wan22  # registers the Wan 2.2 pipelines with diffusers\n"
                "from diffusers import DiffusionPipeline\n\n"
                "pipe = DiffusionPipeline.from_pretrained(\"<this folder or repo>\", torch_dtype=torch.bfloat16)")
    else:
        load = ("from diffusers import DiffusionPipeline\n\n"
                "pipe = DiffusionPipeline.from_pretrained(\"<this folder or repo>\", torch_dtype=torch.bfloat16)")
    guidance = (f"guidance_scale={d.guidance_scale}, guidance_scale_2={d.guidance_scale_2}"
                if d.guidance_scale_2 is not None else f"guidance_scale={d.guidance_scale}")
    if variant == "animate-14B":
        call = _ANIMATE_CARD_CALL
    elif variant == "s2v-14B":
        call = ("out = pipe(image=PIL.Image.open(\"face.png\"), audio=\"speech.wav\", prompt=\"A woman is singing.\")\n"
                "from diffusers_wan22 import save_video\n"
                "save_video(out.frames[0], \"talk.mp4\", out.fps, audio=out.audio)  # audio muxed in")
    else:
        call = (f"video = pipe(\"Two cats boxing on a stage.\", num_inference_steps={d.sample_steps}, "
                f"{guidance}).frames[0]")
    return f"""---
library_name: diffusers
pipeline_tag: {tag}
base_model: {base}
license: apache-2.0
tags:
- wan2.2
- video
- diffusers-wan22
---

# Wan 2.2 {variant} ({layout} layout)

Converted from the official `{base}` checkpoint with `wan22 convert` (diffusers-wan22). Sampling defaults of the
official code: {_card_defaults(variant, guidance)}.

```python
import torch
{load}
pipe.to("cuda")
{call}
```
"""


# ------------------------------------------------------------------------------------------------ convert
@dataclass
class ConversionReport:
    variant: str
    layout: str
    dst: Path
    tensors: int = 0
    bytes: int = 0
    dtypes: set = field(default_factory=set)
    seconds: float = 0.0
    verified: bool = False

    def summary(self) -> str:
        dtypes = ", ".join(sorted(str(d).replace("torch.", "") for d in self.dtypes))
        return (f"converted {self.variant} -> {self.dst} (layout {self.layout})\n"
                f"  tensors: {self.tensors}   bytes: {self.bytes / 1e9:.3f} GB   dtypes: {dtypes}\n"
                f"  time: {self.seconds:.1f} s   verified: {'yes' if self.verified else 'no'}")


def _checksum(tensor: torch.Tensor) -> str:
    data = tensor.detach().contiguous().cpu()
    return hashlib.sha256(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"").hexdigest()


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return tensor if dtype is None or not tensor.is_floating_point() else tensor.to(dtype)


def _write_component(plan: ComponentPlan, root: Path, reader: TensorReader, dtype, max_shard: int,
                     report: ConversionReport, progress: Callable[[int], None] | None) -> None:
    folder = root / plan.name
    folder.mkdir(parents=True, exist_ok=True)
    if plan.write_config is not None:
        plan.write_config(folder)

    def out_dtype(ref: TensorRef) -> torch.dtype:
        src = reader.dtype(ref)
        return dtype if dtype is not None and src.is_floating_point else src

    entries = [(ref.out_key, reader.shape(ref), out_dtype(ref)) for ref in plan.refs]

    def tensors() -> Iterator[torch.Tensor]:
        for ref in plan.refs:  # one source tensor in memory at a time
            yield _cast(reader.get(ref), dtype)
            if progress:
                progress(1)

    report.bytes += write_sharded(folder, plan.weights_name, entries, tensors(), max_shard)
    report.tensors += len(entries)
    report.dtypes.update(e[2] for e in entries)


def _iter_dst_tensors(folder: Path, weights_name: str) -> Iterator[tuple[str, torch.Tensor]]:
    index = folder / f"{weights_name}.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else [weights_name]
    for name in files:
        with safe_open(str(folder / name), framework="pt") as f:
            for key in f.keys():
                yield key, f.get_tensor(key)


def verify_conversion(plans: list[ComponentPlan], root: Path, reader: TensorReader, dtype) -> None:
    """Re-open the written folder: every planned tensor present with the right shape, dtype and checksum."""
    for plan in plans:
        expected = {r.out_key: r for r in plan.refs}
        seen = set()
        for key, tensor in _iter_dst_tensors(root / plan.name, plan.weights_name):
            ref = expected.get(key)
            if ref is None:
                raise ValueError(f"verify: {plan.name}/{key} was written but has no source tensor.")
            source = _cast(reader.get(ref), dtype)
            if tuple(tensor.shape) != tuple(source.shape) or tensor.dtype != source.dtype:
                raise ValueError(f"verify: {plan.name}/{key} is {tuple(tensor.shape)} {tensor.dtype}, expected "
                                 f"{tuple(source.shape)} {source.dtype} (from {ref.file.name}:{ref.key}).")
            if _checksum(tensor) != _checksum(source):
                raise ValueError(f"verify: {plan.name}/{key} differs from its source {ref.file.name}:{ref.key}.")
            seen.add(key)
        missing = sorted(set(expected) - seen)
        if missing:
            raise ValueError(f"verify: {plan.name} is missing {len(missing)} tensor(s), e.g. {missing[:3]}.")


def _temporary_sibling(dst: Path) -> Path:
    for stale in dst.parent.glob(f".{dst.name}.tmp-*"):  # left by a killed conversion
        shutil.rmtree(stale, ignore_errors=True)
    tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}"
    tmp.mkdir(parents=True)
    return tmp


def _replace_dir(tmp: Path, dst: Path) -> None:
    """Rename ``tmp`` to ``dst``; an existing ``dst`` is moved aside first and removed only afterwards."""
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{os.getpid()}"
        dst.rename(old)
    tmp.rename(dst)
    fd = os.open(dst.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_conversion_args(src: Path, dst: Path, dtype: str | None, max_shard_size: str | int,
                          overwrite: bool) -> tuple[torch.dtype | None, int]:
    """The arguments every conversion shares, checked before anything is read: (torch dtype or ``None``, shard
    bytes)."""
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"`dtype` must be one of {sorted(DTYPES)} or None (keep the source dtype); got {dtype!r}.")
    max_shard = parse_size(max_shard_size)
    if max_shard <= 0:
        raise ValueError(f"`max_shard_size` must be positive; got {max_shard_size!r}.")
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} already exists; pass --overwrite to replace it.")
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise ValueError(f"Destination {dst} must not be inside the source folder {src}.")
    return DTYPES.get(dtype) if dtype else None, max_shard


def convert_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    variant: str = "auto",
    dtype: str | None = None,
    layout: str = "wan22",
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
    verify: bool = False,
    progress: bool = True,
) -> ConversionReport:
    """Convert an official Wan 2.2 folder ``src`` into a diffusers folder ``dst`` (see the module docstring).

    Args:
        variant: ``"auto"`` (detect from the folder) or ``t2v-A14B`` / ``i2v-A14B`` / ``ti2v-5B`` / ``s2v-14B`` /
            ``animate-14B``.
        dtype: ``"bf16"``, ``"fp16"``, ``"fp32"``, or ``None`` to keep each source tensor's dtype.
        layout: ``"wan22"`` (our pipeline folder) or ``"diffusers"`` (stock `WanPipeline` layout; for Animate the stock
            `WanAnimatePipeline` layout, with a CLIP image processor).
        max_shard_size: largest output shard, e.g. ``"5GB"``.
        overwrite: replace an existing ``dst``.
        verify: re-read ``dst`` and compare every tensor with its source.
    """
    src, dst = Path(src), Path(dst)
    start = time.perf_counter()
    if layout not in LAYOUTS:
        raise ValueError(f"`layout` must be one of {LAYOUTS}; got {layout!r}.")
    detected = detect_official_variant(src)
    variant = detected if variant in (None, "auto") else variant
    if variant != detected:
        raise ValueError(f"{src} holds a {detected} checkpoint, not {variant}; pass --variant auto or {detected}.")
    if variant == "s2v-14B" and layout != "wan22":
        raise ValueError("S2V-14B has no stock diffusers pipeline; convert it with layout 'wan22'.")
    torch_dtype, max_shard = check_conversion_args(src, dst, dtype, max_shard_size, overwrite)

    reader = TensorReader()
    plans, index = plan_conversion(src, variant, layout, reader)  # every key is mapped before anything is written
    report = ConversionReport(variant, layout, dst)
    write_conversion(plans, dst, reader, torch_dtype, max_shard, report, verify, progress,
                     lambda root: _write_small_components(src, root, variant, layout, index))
    report.seconds = time.perf_counter() - start
    return report


def write_conversion(plans: list[ComponentPlan], dst: Path, reader: TensorReader, torch_dtype, max_shard: int,
                     report: ConversionReport, verify: bool, progress: bool,
                     write_small: Callable[[Path], None]) -> None:
    """Write every planned component (and, with ``write_small``, the small files) into a temporary sibling of
    ``dst``, optionally verify it, fsync it and rename it to ``dst`` (see the module docstring)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(dst)
    try:
        total = sum(len(p.refs) for p in plans)
        with tqdm(total=total, desc="converting", unit="tensor", disable=not progress) as bar:
            for plan in plans:
                _write_component(plan, tmp, reader, torch_dtype, max_shard, report, bar.update)
        write_small(tmp)
        if verify:
            verify_conversion(plans, tmp, reader, torch_dtype)
            report.verified = True
        for path in tmp.rglob("*"):
            if path.is_file():
                _fsync(path)
        _replace_dir(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _write_small_components(src: Path, root: Path, variant: str, layout: str, index: dict) -> None:
    tokenizer_dir = src / TOKENIZER_DIR
    if not tokenizer_dir.is_dir():
        raise FileNotFoundError(f"Missing tokenizer folder {tokenizer_dir}.")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.save_pretrained(root / "tokenizer")
    index["tokenizer"] = ["transformers", type(tokenizer).__name__]
    official_scheduler(variant).save_pretrained(root / "scheduler")
    if variant == "s2v-14B":  # wav2vec2 is already a transformers folder: re-save it as safetensors
        audio = load_official_audio_stack(src)
        audio["audio_encoder"].save_pretrained(root / "audio_encoder")
        audio["audio_processor"].save_pretrained(root / "audio_processor")
    if "image_processor" in index:  # stock WanAnimatePipeline: CLIPImageProcessor's defaults (224, OpenAI mean/std)
        CLIPImageProcessorPil().save_pretrained(root / "image_processor")  # no torchvision needed
    (root / MODEL_INDEX).write_text(json.dumps(index, indent=2))
    (root / "README.md").write_text(model_card(variant, layout))


# ------------------------------------------------------------------------------------------------ TurboDiffusion
class TurboTensorReader(TensorReader):
    """`TensorReader` for TurboDiffusion folders: the Linear patch embedding ``[dim, 144]`` is handed out as the
    Conv3d kernel ``[dim, 36, 1, 2, 2]``; floating tensors are cast to ``dtype`` except the W8A8 block scales, which
    stay float32 (int8 weights are never cast); ``dtypes`` overrides it per component (by source file)."""

    def __init__(self, dtype: torch.dtype | None = None, dtypes: dict[Path, torch.dtype] | None = None) -> None:
        super().__init__()
        self.cast, self.casts = dtype, dict(dtypes or {})

    def _target(self, path: Path, key: str, dtype: torch.dtype) -> torch.dtype:
        cast = self.casts.get(path, self.cast)
        return cast if cast is not None and dtype.is_floating_point and not key.endswith(".scale") else dtype

    def _index(self, path: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        if path not in self._meta:
            raw = super()._index(path)
            self._meta[path] = {k: (turbo_patch_shape(k, shape), self._target(path, k, dtype))
                                for k, (shape, dtype) in raw.items()}
        return self._meta[path]

    def get(self, ref: TensorRef) -> torch.Tensor:
        shape, dtype = self._index(ref.file)[ref.key]
        return super().get(ref).reshape(shape).to(dtype)


def plan_turbo_conversion(src: Path, components: Path | None, quantized: bool, sla_topk: float | None,
                          reader: TurboTensorReader) -> tuple[list[ComponentPlan], dict]:
    """The transformer (both Turbo experts, int8 weights and scales, SLA ``proj_l``), umT5 and the VAE of a Turbo
    folder, checked against their models before anything is written, and the pipeline's model_index.json."""
    files = turbo_component_files(src, quantized, components)
    reader.casts[files["vae"]] = torch.bfloat16  # TurboDiffusion runs the Wan 2.1 VAE in bf16: stored so
    reader.casts[files["text_encoder"]] = torch.bfloat16  # umT5 stays bf16 as shipped, whatever `dtype` is
    refs = [r for expert, attr in EXPERT_ATTRS.items() for r in _mapped_refs(
        reader, [files[expert]], turbo_key_to_diffusers, prefix=f"{attr}.")
        if sla_topk is not None or ".processor.proj_l." not in r.out_key]
    raw_shapes = {k: tuple(v.shape) for k, v in load_pth_weights_only(files[EXPERTS[0]]).items()}
    cfg = dict(turbo_config_from_shapes(raw_shapes, files[EXPERTS[0]], sla_topk), sla_topk=sla_topk, w8a8=quantized,
               boundary_ratio=TURBO_I2V_BOUNDARY)
    plans = [ComponentPlan("transformer", DIFFUSERS_WEIGHTS, refs, _config_writer(TurboWanMoETransformer3DModel, cfg),
                           _meta_model(TurboWanMoETransformer3DModel, cfg),
                           model_source=f"as inferred from {files[EXPERTS[0]]}"),
             text_encoder_plan(reader, files["text_encoder"]), vae_plan(reader, files["vae"], "2.1")]
    for plan in plans:
        check_plan(plan, reader)
    index = {"_class_name": "Wan22ImageToVideoPipeline", "_diffusers_version": diffusers.__version__,
             "scheduler": ["diffusers_wan22", "RCMScheduler"], "text_encoder": ["transformers", "UMT5EncoderModel"],
             "tokenizer": ["transformers", "T5Tokenizer"], "vae": ["diffusers", "AutoencoderKLWan"],
             "transformer": ["diffusers_wan22", "TurboWanMoETransformer3DModel"]}
    return plans, index


def convert_turbo_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, quantized: bool = False,
                             components: str | os.PathLike | None = None, sla_topk: float | None = 0.1,
                             dtype: str | None = None, max_shard_size: str | int = "5GB", overwrite: bool = False,
                             verify: bool = False, progress: bool = True) -> ConversionReport:
    """A TurboDiffusion TurboWan2.2-I2V-A14B folder (``quantized``: the ``-quant`` experts) -> our pipeline folder,
    streaming and atomic like `convert_checkpoint`. int8 weights stay int8 with their float32 scales, the SLA
    ``proj_l`` weights are kept (``sla_topk=None`` drops them: dense attention); ``dtype`` casts the experts' other
    floating tensors (umT5 stays bf16 as shipped, the VAE is stored in bf16 as TurboDiffusion runs it). umT5, its
    tokenizer and the VAE come from ``components`` (the official I2V-A14B folder) or ``src``. The result loads with
    `DiffusionPipeline.from_pretrained` (after ``import diffusers_wan22``)."""
    src, dst = Path(src), Path(dst)
    start = time.perf_counter()
    torch_dtype, max_shard = check_conversion_args(src, dst, dtype, max_shard_size, overwrite)
    reader = TurboTensorReader(torch_dtype)
    plans, index = plan_turbo_conversion(src, None if components is None else Path(components), quantized, sla_topk,
                                         reader)
    report = ConversionReport("TurboWan2.2-I2V-A14B" + (" W8A8" if quantized else ""), "wan22", dst)
    root = Path(components) if components is not None else src
    write_conversion(plans, dst, reader, None, max_shard, report, verify, progress,
                     lambda tmp: _write_turbo_small_files(root, tmp, index, quantized))
    report.seconds = time.perf_counter() - start
    return report


def _write_turbo_small_files(root: Path, tmp: Path, index: dict, quantized: bool) -> None:
    tokenizer = AutoTokenizer.from_pretrained(root / TOKENIZER_DIR)
    tokenizer.save_pretrained(tmp / "tokenizer")
    index["tokenizer"] = ["transformers", type(tokenizer).__name__]
    RCMScheduler().save_pretrained(tmp / "scheduler")
    (tmp / MODEL_INDEX).write_text(json.dumps(index, indent=2))
    (tmp / "README.md").write_text(turbo_model_card(quantized))


def turbo_model_card(quantized: bool) -> str:
    """Hub model card of a converted TurboWan2.2-I2V-A14B folder."""
    what = "W8A8 (int8 weights and activations, 128x128 block scales)" if quantized else "float"
    return f"""---
library_name: diffusers
pipeline_tag: image-to-video
base_model: TurboDiffusion/TurboWan2.2-I2V-A14B-720P
license: apache-2.0
tags:
- wan2.2
- turbodiffusion
- video
- diffusers-wan22
---

# TurboWan2.2-I2V-A14B ({what} experts)

TurboDiffusion's rCM-distilled Wan2.2-I2V-A14B experts with SLA sparse-linear attention, converted with
`wan22 convert` (diffusers-wan22). Sampling as TurboDiffusion: 4 rCM steps (`RCMScheduler`, SDE; `sampler="ode"` for
its `--ode`), no classifier-free guidance, 81 frames, 720p table sizes, SLA top-k 0.1.

```python
import PIL.Image
import torch
import diffusers_wan22  # registers the pipelines and models with diffusers
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("<this folder or repo>", torch_dtype=torch.bfloat16).to("cuda")
video = pipe(PIL.Image.open("cat.jpg"), "A white cat surfing at sunset.").frames[0]
```
"""
