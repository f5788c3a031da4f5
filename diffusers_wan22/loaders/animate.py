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

import os
import re
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import torch
from accelerate import init_empty_weights
from diffusers import WanAnimateTransformer3DModel
from diffusers.loaders import WanLoraLoaderMixin
from diffusers.utils import is_peft_available
from safetensors import safe_open
from tqdm.auto import tqdm
from transformers import CLIPVisionConfig, CLIPVisionModel

from ..core.animate import (
    ANIMATE_CLIP_FILE,
    BLUR_KERNEL_KEY,
    BLUR_TAPS,
    RELIGHTING_LORA_FILE,
    TensorPart,
    animate_config_from_official,
    clip_vision_config_from_official,
    official_animate_key_to_diffusers,
    official_clip_key_to_transformers,
)
from ..core.names import T5_FILE, TOKENIZER_DIR, VAE_FILES
from ..schedulers.official import official_scheduler
from .checks import (
    check_official_folder,
    check_tensors_fit_model,
    read_official_dit_config,
)
from .file_io import load_pth_weights_only, read_safetensors_folder, torch_load_error
from .official_models import load_official_t5, load_official_tokenizer, load_official_vae


# ------------------------------------------------------------------------------------------------ tensor parts
def mapped_shapes(files: Mapping[str, tuple[Path, tuple[int, ...]]], key_map: Callable[[str], Iterable[TensorPart]]
                  ) -> dict[str, tuple[tuple[int, ...], str]]:
    """diffusers key -> (shape, where) for every official tensor ``files`` lists (key -> (file, shape)), read from
    the headers only; an unknown key or an uncuttable shape is a ``ValueError`` naming the file and the tensor."""
    out = {}
    for key, (path, shape) in files.items():
        try:
            out.update({part.key: (part.shape(shape), f"{path} [{key}]") for part in key_map(key)})
        except (KeyError, ValueError) as e:
            raise ValueError(f"{path} [{key}]: {e.args[0]}.") from None
    return out


def _assign(model: torch.nn.Module, items: Iterable[tuple[str, torch.Tensor]], key_map, dtype) -> None:
    """Cut every official tensor into its parts, cast (``dtype``) and assign them to ``model`` (built on meta)."""
    state = {}
    for key, tensor in items:
        for part in key_map(key):
            value = part.take(tensor)
            state[part.key] = value.to(dtype) if dtype is not None and value.is_floating_point() else value
    model.load_state_dict(state, strict=True, assign=True)


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
    try:
        config = animate_config_from_official(config_json, {k: v[1] for k, v in files.items()})
    except ValueError as e:
        raise ValueError(f"{folder}: {e}.") from None
    with init_empty_weights():
        model = WanAnimateTransformer3DModel(**config)
    shapes = mapped_shapes({k: v[:2] for k, v in files.items()}, official_animate_key_to_diffusers)
    check_tensors_fit_model(model, shapes, f"as configured by {folder / 'config.json'}")
    tensors = dict(_iter_shard_tensors(files))
    check_blur_kernels({k: v for k, v in tensors.items() if BLUR_KERNEL_KEY.fullmatch(k)}, str(folder))
    _assign(model, tensors.items(), official_animate_key_to_diffusers, torch_dtype)
    return model.eval()


# ------------------------------------------------------------------------------------------------ CLIP
def load_official_clip_vision(pth_path: str | os.PathLike, torch_dtype: torch.dtype | None = None
                              ) -> CLIPVisionModel:
    """`transformers.CLIPVisionModel` with the visual tower of the official open-clip XLM-RoBERTa ViT-H/14 `.pth`.

    The official Animate features are ``model(pixels, output_hidden_states=True).hidden_states[-2]``: every block
    but the last, without the final LayerNorm (see `pipelines/pipeline_wan22_animate.py`).
    """
    state = load_pth_weights_only(pth_path)
    try:
        config = CLIPVisionConfig(**clip_vision_config_from_official({k: tuple(v.shape) for k, v in state.items()}))
    except ValueError as e:
        raise ValueError(f"{pth_path}: {e}.") from None
    with init_empty_weights():
        model = CLIPVisionModel(config)
    shapes = mapped_shapes({k: (Path(pth_path), tuple(v.shape)) for k, v in state.items()},
                           official_clip_key_to_transformers)
    check_tensors_fit_model(model, shapes, str(pth_path))
    _assign(model, state.items(), official_clip_key_to_transformers, torch_dtype)
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
def check_official_animate_folder(root: str | os.PathLike, use_relighting_lora: bool = False) -> None:
    """Every file an official Animate folder needs is present and well-formed, before any weight is read: the
    shared `check_official_folder` (DiT, tokenizer, T5, VAE, CLIP) and, when asked, the relighting LoRA."""
    root = Path(root)
    check_official_folder(root, "animate-14B")
    if use_relighting_lora:
        lora = root / RELIGHTING_LORA_FILE
        if not lora.is_file():
            raise FileNotFoundError(f"Missing relighting LoRA (use_relighting_lora=True): {lora}.")
        if not is_peft_available():
            raise ImportError("use_relighting_lora=True needs peft (pip install 'diffusers-wan22[lora]').")


def load_official_animate_components(root: str | os.PathLike, torch_dtype: torch.dtype | None = None,
                                     use_relighting_lora: bool = False) -> dict:
    """Every component of `Wan22AnimatePipeline` from an official folder: tokenizer, text_encoder, transformer (with
    the relighting LoRA as the adapter ``"relighting"`` when asked), vae, image_encoder and the official scheduler.
    The folder is checked first, so a missing or unsafe file is named before minutes of loading."""
    root = Path(root)
    check_official_animate_folder(root, use_relighting_lora)
    loaders = {
        "transformer": lambda: load_official_animate_transformer(root, torch_dtype),
        "text_encoder": lambda: load_official_t5(root / T5_FILE, torch_dtype),
        "image_encoder": lambda: load_official_clip_vision(root / ANIMATE_CLIP_FILE, torch_dtype),
        "vae": lambda: load_official_vae(root / VAE_FILES["2.1"], torch_dtype),
    }
    components = {}
    # A 14B checkpoint takes minutes to read: say which component is being read (on a terminal only).
    with tqdm(total=len(loaders), desc="loading animate-14B", unit="component", disable=None) as bar:
        for name, load in loaders.items():
            bar.set_postfix_str(name)
            components[name] = load()
            bar.update()
    if use_relighting_lora:
        load_relighting_lora(components["transformer"], root / RELIGHTING_LORA_FILE)
    return dict(components, tokenizer=load_official_tokenizer(root / TOKENIZER_DIR),
                scheduler=official_scheduler("animate-14B"))
