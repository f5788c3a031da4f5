"""Reading TurboDiffusion's TurboWan2.2-I2V-A14B checkpoints into diffusers models.

TurboDiffusion publishes each expert as one ``torch.save(state_dict)`` file, plain or W8A8-quantized::

    TurboWan2.2-I2V-A14B-high-720P.pth        TurboWan2.2-I2V-A14B-high-720P-quant.pth
    TurboWan2.2-I2V-A14B-low-720P.pth         TurboWan2.2-I2V-A14B-low-720P-quant.pth

The keys are the official `WanModel` keys, except that

* ``patch_embedding.weight`` is a Linear ``[dim, 144]``, the Conv3d ``[dim, 36, 1, 2, 2]`` flattened;
* each block has ``self_attn.attn_op.local_attn.proj_l.{weight, bias}`` (SLA's linear-branch projection);
* in ``-quant`` files the 8 block linears hold ``int8_weight`` (int8) + ``scale`` (float32 block scales) + ``bias``.

umT5, its tokenizer and the Wan 2.1 VAE are the official files (TurboDiffusion runs them in bfloat16, which
`load_turbo_text_encoder` / `load_turbo_vae` reproduce). Files are read with ``torch.load(weights_only=True,
mmap=True)``; every layout problem is reported, naming the file, before a tensor is materialised.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Mapping

import torch
from accelerate import init_empty_weights

from ..core.folders import turbo_file_name, turbo_folder_kinds
from ..core.names import HIGH, LOW, T5_FILE, TOKENIZER_DIR, VAE_FILES
from ..core.official_keys import official_dit_key_to_diffusers
from ..hooks.lazy_experts import retype_meta_parameters
from ..models.transformer_wan_turbo import TurboWanMoETransformer3DModel, TurboWanTransformer3DModel
from ..models.turbo_numerics import use_native_dtype_vae_norms
from ..schedulers.scheduling_rcm import RCMScheduler
from .checks import check_t5_state, check_tensors_fit_model, check_tokenizer_folder, check_vae_state
from .file_io import load_pth_weights_only
from .official_models import load_official_t5, load_official_tokenizer, load_official_vae

TURBO_I2V_BOUNDARY = 0.9  # TurboDiffusion's --boundary default for Wan2.2-I2V-A14B
_PROJ_L = re.compile(r"blocks\.(\d+)\.self_attn\.attn_op\.local_attn\.proj_l\.(weight|bias)")
_QUANT_TENSOR = re.compile(r"(.+)\.(int8_weight|scale)")
_PATCH = (1, 2, 2)
# Modules diffusers keeps in float32 for Wan (time embedder, modulation tables, block norms), minus the W8A8 scales.
WAN_FP32_MODULES = tuple(m for m in TurboWanTransformer3DModel._keep_in_fp32_modules if m != "scale")


def find_turbo_files(folder: str | os.PathLike, quantized: bool = False) -> dict[str, Path]:
    """The two expert files of a Turbo folder; a clear error names what is missing and what is there instead."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Turbo checkpoint folder {folder} does not exist.")
    files = {e: folder / turbo_file_name(e, quantized) for e in (HIGH, LOW)}
    missing = [p.name for p in files.values() if not p.is_file()]
    if missing:
        hint = f"; it has the {'-quant' if not quantized else 'plain'} pair: pass quantized={not quantized}" if (
            not quantized) in turbo_folder_kinds(folder) else ""
        raise FileNotFoundError(f"{folder}: missing {missing} (TurboWan2.2-I2V-A14B {'W8A8 ' if quantized else ''}"
                                f"experts){hint}.")
    return files


def is_turbo_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a TurboWan2.2-I2V-A14B expert pair (plain or ``-quant``)."""
    return bool(turbo_folder_kinds(folder))


# ----------------------------------------------------------------------------------------------- keys and config
def turbo_key_to_diffusers(key: str) -> str:
    """TurboDiffusion DiT key -> `TurboWanTransformer3DModel` key (SLA ``proj_l`` -> ``attn1.processor.proj_l``,
    W8A8 ``int8_weight`` / ``scale`` kept on the diffusers linear's name, everything else as official `WanModel`)."""
    m = _PROJ_L.fullmatch(key)
    if m:
        return f"blocks.{m[1]}.attn1.processor.proj_l.{m[2]}"
    m = _QUANT_TENSOR.fullmatch(key)
    if m:
        return official_dit_key_to_diffusers(f"{m[1]}.weight").rpartition(".")[0] + f".{m[2]}"
    return official_dit_key_to_diffusers(key)


def _layout_error(path, message: str) -> ValueError:
    return ValueError(f"{path}: {message}")


def _check_quant_layout(shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, torch.dtype], quantized: bool,
                        path) -> None:
    has_int8 = any(k.endswith(".int8_weight") for k in shapes)
    if quantized and not has_int8:
        raise _layout_error(path, "is not a W8A8 (-quant) checkpoint: its block linears are float `weight`s with no "
                                  "`int8_weight`/`scale`; pass quantized=False or use the -quant files.")
    if not quantized and has_int8:
        raise _layout_error(path, "holds W8A8 int8 weights (a -quant checkpoint); pass quantized=True.")
    for key in shapes:
        if key.endswith(".int8_weight"):
            scale_key = key[: -len("int8_weight")] + "scale"
            out_f, in_f = shapes[key]
            want = (math.ceil(out_f / 128), math.ceil(in_f / 128))
            if dtypes[key] != torch.int8:
                raise _layout_error(path, f"{key!r} must be int8, found {dtypes[key]}.")
            if tuple(shapes.get(scale_key, ())) != want:
                raise _layout_error(path, f"{scale_key!r} must have shape {want} (128x128 block scales of {key!r}), "
                                          f"found {tuple(shapes.get(scale_key, ())) or 'no such tensor'}.")


def _linear_shape(shapes: Mapping[str, tuple[int, ...]], name: str) -> tuple[int, ...]:
    return shapes.get(f"{name}.weight") or shapes[f"{name}.int8_weight"]


def turbo_config_from_shapes(shapes: Mapping[str, tuple[int, ...]], path, sla_topk: float | None = 0.1) -> dict:
    """`TurboWanTransformer3DModel` config (without the Turbo switches) from a Turbo file's tensor shapes."""
    patch = shapes.get("patch_embedding.weight")
    if patch is None or "blocks.0.modulation" not in shapes:
        raise _layout_error(path, "is not a Wan DiT state dict (no `patch_embedding.weight` / `blocks.0.modulation`).")
    if len(patch) != 2:
        raise _layout_error(path, f"has a Conv3d patch embedding {tuple(patch)}: an official Wan checkpoint, not a "
                                  "TurboDiffusion file (load it with from_official).")
    dim, in_channels = patch[0], patch[1] // math.prod(_PATCH)
    if in_channels != 36:
        kind = "text-to-video (16 input channels)" if in_channels == 16 else f"{in_channels}-channel"
        raise _layout_error(path, f"is a {kind} Turbo checkpoint; only TurboWan2.2-I2V-A14B (36 input channels, "
                                  "latents + image condition) is supported.")
    proj_l = shapes.get("blocks.0.self_attn.attn_op.local_attn.proj_l.weight")
    if proj_l is None and sla_topk is not None:
        raise _layout_error(path, "has no SLA weights (`blocks.N.self_attn.attn_op.local_attn.proj_l`): not a "
                                  "TurboDiffusion SLA checkpoint; pass sla_topk=None for dense attention.")
    head_dim = proj_l[0] if proj_l is not None else 128  # Wan's head size when no proj_l tells it
    if dim % head_dim:
        what = "SLA proj_l head size" if proj_l is not None else "without SLA weights the head size is taken as Wan's"
        raise _layout_error(path, f"{what} {head_dim}, which does not divide the model width {dim}.")
    return dict(
        patch_size=_PATCH, num_attention_heads=dim // head_dim, attention_head_dim=head_dim, in_channels=in_channels,
        out_channels=shapes["head.head.weight"][0] // math.prod(_PATCH), text_dim=shapes["text_embedding.0.weight"][1],
        freq_dim=shapes["time_embedding.0.weight"][1], ffn_dim=_linear_shape(shapes, "blocks.0.ffn.0")[0],
        num_layers=1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("blocks.")),
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
    )


# ----------------------------------------------------------------------------------------------- loading
def _check_arguments(quantized: bool, sla_topk: float | None, torch_dtype: torch.dtype | None) -> None:
    if not isinstance(quantized, bool):
        raise ValueError(f"`quantized` must be True or False, got {quantized!r}.")
    if sla_topk is not None and not (isinstance(sla_topk, (int, float)) and 0.0 < sla_topk <= 1.0):
        raise ValueError(f"`sla_topk` must be a fraction in (0, 1] (TurboDiffusion's default 0.1) or None for dense "
                         f"attention, got {sla_topk!r}.")
    if torch_dtype is not None and torch_dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"`torch_dtype` must be torch.float32, torch.bfloat16, torch.float16 or None, got {torch_dtype}.")


def _target_dtype(key: str, tensor: torch.Tensor, torch_dtype: torch.dtype | None) -> torch.dtype:
    """W8A8 tensors keep their dtypes; diffusers' keep-in-fp32 modules (time embedder, modulation tables, norms)
    become float32, which is how TurboDiffusion computes them (autocast to float32); the rest ``torch_dtype``."""
    if not tensor.is_floating_point() or key.endswith(".scale"):
        return tensor.dtype
    if set(key.split(".")) & set(WAN_FP32_MODULES):
        return torch.float32
    return torch_dtype or tensor.dtype



def turbo_patch_shape(key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The diffusers shape of a Turbo tensor: the Linear patch embedding ``[dim, 36 * 1 * 2 * 2]`` is the Conv3d
    kernel ``[dim, 36, 1, 2, 2]`` flattened over ``(c kt kh kw)``; every other tensor keeps its shape."""
    if key == "patch_embedding.weight" and len(shape) == 2:
        return (shape[0], shape[1] // math.prod(_PATCH), *_PATCH)
    return shape


def iter_turbo_tensors(state: Mapping[str, torch.Tensor], sla_topk: float | None, path):
    """``(diffusers key, tensor)`` of a Turbo state dict: keys renamed, the Linear patch embedding as the Conv3d
    kernel it flattens (``[dim, 36 * 1 * 2 * 2]`` -> ``[dim, 36, 1, 2, 2]``), SLA's ``proj_l`` dropped for dense
    attention (``sla_topk=None``)."""
    for key, tensor in state.items():
        if sla_topk is None and _PROJ_L.fullmatch(key):
            continue  # dense attention has no place for SLA's projection
        try:
            new_key = turbo_key_to_diffusers(key)
        except KeyError as e:
            raise _layout_error(path, e.args[0]) from None
        yield new_key, tensor.reshape(turbo_patch_shape(key, tuple(tensor.shape)))


class TurboExpertSource:
    """A lazy-expert source reading one Turbo `.pth` in place (memory-mapped, ``weights_only``; keys renamed as in
    `iter_turbo_tensors`): what `enable_lazy_experts` reads a released Turbo expert back from."""

    def __init__(self, path: str | os.PathLike, sla_topk: float | None = 0.1) -> None:
        self.path, self.sla_topk = Path(path), sla_topk

    def __repr__(self) -> str:
        return f"TurboExpertSource({str(self.path)!r})"

    def iter_tensors(self):
        yield from iter_turbo_tensors(load_pth_weights_only(self.path), self.sla_topk, self.path)


def load_turbo_expert(path: str | os.PathLike, quantized: bool = False, sla_topk: float | None = 0.1,
                      torch_dtype: torch.dtype | None = None, meta: bool = False) -> TurboWanTransformer3DModel:
    """One TurboWan2.2 expert file as a `TurboWanTransformer3DModel` (SLA with ``sla_topk``; W8A8 if ``quantized``).

    ``torch_dtype`` is the experts' compute dtype (``None`` keeps the file's); W8A8 scales stay float32 and the
    modules diffusers keeps in float32 are float32. ``meta=True`` checks the file but reads no tensor data: the
    parameters stay on ``meta`` (for lazy experts).
    """
    _check_arguments(quantized, sla_topk, torch_dtype)
    state = load_pth_weights_only(path)  # memory-mapped: shapes are known, no tensor data read yet
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    _check_quant_layout(shapes, {k: v.dtype for k, v in state.items()}, quantized, path)
    config = turbo_config_from_shapes(shapes, path, sla_topk)
    with init_empty_weights():
        model = TurboWanTransformer3DModel(**config, sla_topk=sla_topk, w8a8=quantized)
    mapped = dict(iter_turbo_tensors(state, sla_topk, path))
    check_tensors_fit_model(model, {k: (tuple(v.shape), f"{path} [{k}]") for k, v in mapped.items()}, str(path))
    if meta:  # parameters stay on meta, in the dtypes an eager load gives (lazy experts fill them in)
        retype_meta_parameters(model, lambda key, p: _target_dtype(key, mapped[key], torch_dtype))
        return model.eval()
    mapped = {k: v.to(_target_dtype(k, v, torch_dtype)) for k, v in mapped.items()}
    model.load_state_dict(mapped, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def load_turbo_transformer(folder: str | os.PathLike, quantized: bool = False, sla_topk: float | None = 0.1,
                           torch_dtype: torch.dtype | None = None, boundary_ratio: float = TURBO_I2V_BOUNDARY,
                           meta: bool = False) -> TurboWanMoETransformer3DModel:
    """Both experts of a Turbo folder as one `TurboWanMoETransformer3DModel` (high-noise while t >= 0.9);
    ``meta=True``: checked, parameters on ``meta`` (see `turbo_expert_sources` for lazy experts)."""
    _check_arguments(quantized, sla_topk, torch_dtype)
    files = find_turbo_files(folder, quantized)
    experts = [load_turbo_expert(files[e], quantized, sla_topk, torch_dtype, meta) for e in (HIGH, LOW)]
    return TurboWanMoETransformer3DModel.from_experts(*experts, boundary_ratio=boundary_ratio)


def turbo_expert_sources(folder: str | os.PathLike, quantized: bool = False,
                         sla_topk: float | None = 0.1) -> dict[str, TurboExpertSource]:
    """Lazy-expert sources reading a Turbo folder's two expert files in place."""
    return {e: TurboExpertSource(p, sla_topk) for e, p in find_turbo_files(folder, quantized).items()}


def load_turbo_text_encoder(path: str | os.PathLike):
    """The official umT5 encoder as TurboDiffusion runs it: bfloat16 weights and activations, eager attention (the
    default SDPA path differs from it by about one bf16 ulp)."""
    model = load_official_t5(path, torch.bfloat16)
    model.set_attn_implementation("eager")
    return model


def load_turbo_vae(path: str | os.PathLike):
    """The Wan 2.1 VAE as TurboDiffusion runs it: bfloat16 everywhere, RMS norms normalising in bfloat16."""
    vae = load_official_vae(path, torch.bfloat16)
    use_native_dtype_vae_norms(vae)
    return vae


# ----------------------------------------------------------------------------------------------- whole pipeline
def turbo_component_files(folder: str | os.PathLike, quantized: bool = False,
                          components: str | os.PathLike | None = None) -> dict[str, Path]:
    """Every file a Turbo pipeline reads, checked before any weight is: the two experts from ``folder``; umT5, its
    tokenizer and the Wan 2.1 VAE from ``components`` (the official Wan2.2-I2V-A14B download) or ``folder``."""
    files = find_turbo_files(folder, quantized)
    root = Path(components if components is not None else folder)
    hint = "" if components is not None else " (pass `components=` the official Wan2.2-I2V-A14B folder)"
    extra = {"text_encoder": root / T5_FILE, "vae": root / VAE_FILES["2.1"], "tokenizer": root / TOKENIZER_DIR}
    for name, path in extra.items():
        if not path.exists():
            raise FileNotFoundError(f"Missing the {name.replace('_', ' ')} {path}{hint}.")
    check_tokenizer_folder(extra["tokenizer"])
    check_t5_state(load_pth_weights_only(extra["text_encoder"]), extra["text_encoder"])  # memory-mapped: keys only
    check_vae_state(load_pth_weights_only(extra["vae"]), extra["vae"], "2.1", "TurboWan2.2-I2V-A14B")
    return {**files, **extra}


def load_turbo_components(folder: str | os.PathLike, quantized: bool = False, sla_topk: float | None = 0.1,
                          torch_dtype: torch.dtype | None = None, components: str | os.PathLike | None = None,
                          sampler: str = "sde", sigma_max: float = 200.0, lazy_experts: bool = False) -> dict:
    """The components of a TurboWan2.2-I2V-A14B pipeline (see `turbo_component_files`): the Turbo experts in
    ``torch_dtype`` (on ``meta`` with ``lazy_experts``), umT5 and the VAE in bfloat16 as TurboDiffusion runs them,
    and an `RCMScheduler`."""
    _check_arguments(quantized, sla_topk, torch_dtype)
    scheduler = RCMScheduler(sigma_max=sigma_max, sampler=sampler)  # validates sampler / sigma_max first
    files = turbo_component_files(folder, quantized, components)
    return dict(
        transformer=load_turbo_transformer(folder, quantized, sla_topk, torch_dtype, meta=lazy_experts),
        text_encoder=load_turbo_text_encoder(files["text_encoder"]),
        tokenizer=load_official_tokenizer(files["tokenizer"]),
        vae=load_turbo_vae(files["vae"]),
        scheduler=scheduler,
    )
