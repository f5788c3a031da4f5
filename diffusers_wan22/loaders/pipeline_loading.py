"""The loading classmethods of every Wan 2.2 pipeline, in one place: ``from_official`` and ``from_pretrained``.

* ``from_official(dir)``: an official checkpoint folder as downloaded (variant detected, every file checked first).
* ``from_pretrained(dir_or_repo)``: diffusers' loader, plus
  - folders in the stock ``Wan-AI/Wan2.2-*-Diffusers`` layout (``transformer/`` + ``transformer_2/``), assembled
    into a `WanMoETransformer3DModel`;
  - Hub repo ids, downloaded with ``huggingface_hub.snapshot_download`` first (diffusers 0.42's own download step
    rejects third-party component libraries such as ours);
  - ``lazy_experts=True``: the experts are not read now but at their first step, one at a time (our layout and the
    stock one).

Both accept diffusers' ``dtype=`` as well as ``torch_dtype=`` (which diffusers 0.42 deprecates). Every loaded
pipeline records where its experts came from in ``pipe.lazy_source`` (``None`` for a dense model), so
``enable_lazy_experts()`` / ``enable_memory_mode("lazy_experts")`` need no source argument.

A pipeline class lists the official variants it runs in ``_variants``; loading another variant's folder is refused
with the name of the class that runs it.
"""

from __future__ import annotations

import os
from pathlib import Path

import huggingface_hub
import torch
from accelerate import init_empty_weights
from diffusers import DiffusionPipeline, WanTransformer3DModel

from ..core.folders import detect_official_variant, read_json_object
from ..core.names import MODEL_INDEX
from ..hooks.lazy_experts import retype_meta_parameters
from ..models.transformer_wan_moe import WanMoETransformer3DModel
from .expert_sources import (
    SafetensorsExpertSource,
    has_plain_safetensors,
    meta_moe_from_folder,
    official_expert_sources,
    sources_from_folder,
)
from .file_io import SAFETENSORS_DTYPES, read_safetensors_folder
from .official import load_official_components

HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "revision", "token", "proxies")
LAZY_KWARGS = ("prefetch_steps", "prefetch_bytes")
# The pipeline class that runs each official variant (named in errors; the classes live in `pipelines/`).
VARIANT_PIPELINES = {"t2v-A14B": "Wan22Pipeline", "i2v-A14B": "Wan22ImageToVideoPipeline",
                     "ti2v-5B": "Wan22Pipeline or Wan22ImageToVideoPipeline",
                     "s2v-14B": "Wan22SpeechToVideoPipeline", "animate-14B": "Wan22AnimatePipeline"}


def resolve_pipeline_folder(name_or_path: str | os.PathLike, kwargs: dict) -> tuple[Path, dict]:
    """A local pipeline folder (downloading a Hub repo id if needed) and its ``model_index.json``.

    Hub options are popped from ``kwargs``; the rest is left for ``from_pretrained``.
    """
    path = Path(name_or_path)
    hub = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
    text = str(name_or_path)
    if not path.is_dir():
        if path.exists() or text.count("/") != 1 or text.startswith((".", "/", "~")):
            raise FileNotFoundError(f"{text!r} is neither a pipeline folder nor a Hub repo id.")
        path = Path(huggingface_hub.snapshot_download(text, **hub))
    return path, read_json_object(path / MODEL_INDEX)


class Wan22LoadingMixin:
    """``from_official`` and ``from_pretrained`` for the Wan 2.2 pipelines (see the module docstring)."""

    _variants: tuple[str, ...] = ()  # official variants this pipeline runs

    @classmethod
    def check_variant(cls, variant: str, source) -> None:
        """Refuse, before any weight is read, a folder holding a variant this pipeline class does not run."""
        if cls._variants and variant not in cls._variants:
            raise ValueError(f"{str(source)!r} holds a {variant} model, which {cls.__name__} does not run (it runs "
                             f"{', '.join(cls._variants)}); load it with {VARIANT_PIPELINES.get(variant, '?')}.")

    @classmethod
    def from_official(cls, ckpt_dir: str | os.PathLike, torch_dtype: torch.dtype | None = None, **kwargs):
        """Build the pipeline straight from an official Wan 2.2 checkpoint folder (as downloaded).

        Reads the DiT(s) (``high_noise_model/`` + ``low_noise_model/`` for A14B, the root DiT otherwise), the official
        T5 `.pth`, the VAE `.pth`, ``google/umt5-xxl/`` (and wav2vec2 for S2V); the scheduler is UniPC with the
        variant's official shift. ``torch_dtype`` casts every floating weight (wav2vec2 stays float32).

        Keyword args:
            expert_precision: ``{"high": ..., "low": ..., "scope": ...}`` applied with `set_expert_precision`.
            lazy_experts: read no expert now; each is read from the official folder at its first step and released
                when the other runs (host RAM holds one expert). With ``prefetch_steps`` / ``prefetch_bytes``.
        """
        torch_dtype = kwargs.pop("dtype", None) or torch_dtype  # diffusers' newer name
        expert_precision = kwargs.pop("expert_precision", None)
        lazy = kwargs.pop("lazy_experts", False)
        lazy_kwargs = {k: kwargs.pop(k) for k in LAZY_KWARGS if k in kwargs}
        variant = kwargs.pop("variant", None) or detect_official_variant(ckpt_dir)
        cls.check_variant(variant, ckpt_dir)
        components = load_official_components(ckpt_dir, torch_dtype=torch_dtype, variant=variant,
                                              lazy_experts=lazy, **kwargs)
        pipe = cls(**components)
        pipe.lazy_source = official_expert_sources(ckpt_dir) if isinstance(pipe.transformer,
                                                                           WanMoETransformer3DModel) else None
        if lazy:  # the experts stay on meta; each is read from the official folder at its first step
            pipe.enable_lazy_experts(pipe.lazy_source, **lazy_kwargs)
        if expert_precision is not None:  # e.g. {"high": "fp8", "low": "fp8", "scope": "ffn"}
            pipe.set_expert_precision(**expert_precision)
        return pipe

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        """`DiffusionPipeline.from_pretrained`, plus stock Wan 2.2 diffusers folders, Hub repo ids and
        ``lazy_experts=True`` (with ``prefetch_steps`` / ``prefetch_bytes``); see the module docstring."""
        lazy = kwargs.pop("lazy_experts", False)
        lazy_kwargs = {k: kwargs.pop(k) for k in LAZY_KWARGS if k in kwargs}
        folder, index = resolve_pipeline_folder(pretrained_model_name_or_path, kwargs)
        dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
        if lazy and "transformer" in kwargs:
            raise ValueError("`lazy_experts=True` builds the transformer itself; do not pass `transformer`.")
        if "transformer_2" in index:
            pipe = cls._from_stock_layout(folder, lazy=lazy, **kwargs)
        else:
            if lazy:
                kwargs["transformer"] = meta_moe_from_folder(folder / "transformer", dtype)
            pipe = super().from_pretrained(folder, **kwargs)
            moe = getattr(pipe, "transformer", None)
            # the experts can be re-read lazily from plain safetensors only (not `.bin` / variant files)
            readable = isinstance(moe, WanMoETransformer3DModel) and (
                lazy or has_plain_safetensors(folder / "transformer"))
            pipe.lazy_source = sources_from_folder(folder, moe.loaded_experts) if readable else None
        if lazy:
            if pipe.lazy_source is None:
                raise ValueError(f"`lazy_experts=True` needs the A14B mixture of experts; {folder} holds one "
                                 "transformer.")
            pipe.enable_lazy_experts(pipe.lazy_source, **lazy_kwargs)
        return pipe

    @classmethod
    def _from_stock_layout(cls, folder: Path, lazy: bool = False, **kwargs):
        """A folder in the stock diffusers Wan 2.2 layout: diffusers' own pipeline loads it, we wrap its two
        transformers into one `WanMoETransformer3DModel` (no copy). With ``lazy`` the experts are built on ``meta``
        and read from ``transformer/`` / ``transformer_2/`` at their first step."""
        if lazy:
            kwargs.update(transformer=None, transformer_2=None)
        stock = DiffusionPipeline.from_pretrained(folder, **kwargs)
        experts = [stock.transformer, stock.transformer_2]
        if lazy:
            dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
            experts = [meta_stock_expert(folder / name, dtype) for name in ("transformer", "transformer_2")]
        transformer = experts[0]
        if experts[1] is not None:
            transformer = WanMoETransformer3DModel.from_experts(
                *experts, boundary_ratio=stock.config.boundary_ratio,
                num_train_timesteps=stock.scheduler.config.num_train_timesteps,
            )
        pipe = cls(tokenizer=stock.tokenizer, text_encoder=stock.text_encoder, transformer=transformer,
                   vae=stock.vae, scheduler=stock.scheduler)
        pipe.lazy_source = None if experts[1] is None else {
            "high": SafetensorsExpertSource(folder / "transformer"),
            "low": SafetensorsExpertSource(folder / "transformer_2")}
        return pipe


def meta_stock_expert(folder: Path, dtype: torch.dtype | None) -> WanTransformer3DModel:
    """A stock `WanTransformer3DModel` folder's model with every parameter on ``meta``, in the dtypes an eager
    ``from_pretrained`` gives (``dtype`` except the ``_keep_in_fp32_modules``, or the stored dtypes)."""
    with init_empty_weights():
        expert = WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(folder))
    keep = tuple(WanTransformer3DModel._keep_in_fp32_modules or ())
    stored = {} if dtype is not None else {
        key: SAFETENSORS_DTYPES[stored_dtype] for key, (_, _, stored_dtype) in read_safetensors_folder(folder).items()}
    retype_meta_parameters(expert, lambda name, p: stored.get(name, p.dtype) if dtype is None else (
        torch.float32 if any(m in name.split(".") for m in keep) else dtype))
    return expert.eval()
