"""Every private name of diffusers, accelerate, peft and torch that this package uses, in one place.

A diffusers / accelerate upgrade must re-check exactly this file. Each entry says what it is for and the version it
was checked on (diffusers 0.42.1, accelerate 1.15.0, peft 0.17-0.21, torch 2.13.0). The rest of the package uses
only public names, plus the documented class-attribute protocol of diffusers' base classes that subclasses are
meant to set (``_no_split_modules``, ``_keep_in_fp32_modules``, ``_repeated_blocks``, ``_optional_components``,
``_callback_tensor_inputs``, ``_exclude_from_cpu_offload``, ``_lora_loadable_modules``, ``_cp_plan``, ...).
`tests/test_architecture.py` checks that no other module reaches for a private name.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from diffusers import DiffusionPipeline, WanPipeline
from diffusers.hooks.layerwise_casting import _disable_peft_input_autocast
from diffusers.loaders.lora_pipeline import _LOW_CPU_MEM_USAGE_DEFAULT_LORA

# ------------------------------------------------------------------------------------------ diffusers: models


def diffusers_hook_registry(module: torch.nn.Module):
    """The diffusers `HookRegistry` attached to ``module`` (``None`` without diffusers hooks).

    diffusers 0.42.1 stores it as ``module._diffusers_hook``; used to find layerwise-casting (fp8) hooks.
    """
    return getattr(module, "_diffusers_hook", None)


def disable_peft_input_autocast(model: torch.nn.Module) -> None:
    """Stop peft LoRA layers from casting their inputs to the fp8 storage dtype of a layerwise-cast model.

    diffusers 0.42.1 `hooks.layerwise_casting._disable_peft_input_autocast`; `enable_layerwise_casting` calls it for
    whole models, we apply layerwise casting per layer and so call it ourselves.
    """
    _disable_peft_input_autocast(model)


def reset_stateful_cache(model: torch.nn.Module) -> None:
    """Reset the state of every diffusers cache hook (FirstBlockCache, MagCache, ...) on ``model``.

    diffusers 0.42.1 `CacheMixin._reset_stateful_cache`; used at the expert switch so no cached residual of the
    outgoing expert is replayed by the incoming one.
    """
    model._reset_stateful_cache()


def processor_supports_context_parallel(processor) -> bool:
    """Whether diffusers' context parallelism reaches an attention processor: diffusers 0.42.1
    `ModelMixin.enable_parallelism` hands its config only to processors with a ``_parallel_config`` attribute (those
    dispatching through its attention dispatcher); others are skipped without a word."""
    return hasattr(processor, "_parallel_config")


def parallel_config(model: torch.nn.Module):
    """The context-parallel config diffusers attached to ``model`` (``None`` when parallelism is off).

    diffusers 0.42.1 `ModelMixin.enable_parallelism` stores it as ``model._parallel_config``.
    """
    return getattr(model, "_parallel_config", None)


# ------------------------------------------------------------------------------------------ diffusers: pipelines
# diffusers 0.42.1 `WanPipeline._get_t5_prompt_embeds`: prompt cleaning (ftfy), tokenisation to
# `max_sequence_length`, umT5, rows past each prompt's length zeroed, repeated per video. Our pipelines reuse it as
# a method (it reads only `self.tokenizer`, `self.text_encoder`, `self._execution_device`).
WAN_T5_PROMPT_EMBEDS = WanPipeline._get_t5_prompt_embeds


def offload_hooks(pipe: DiffusionPipeline) -> list:
    """The accelerate hooks `enable_model_cpu_offload` keeps on a pipeline (``pipe._all_hooks``, diffusers 0.42.1)."""
    return getattr(pipe, "_all_hooks", None) or []


def set_offload_state(pipe: DiffusionPipeline, hooks: list, device: torch.device | None, gpu_id: int | None) -> None:
    """Record model-offload hooks the way `DiffusionPipeline.enable_model_cpu_offload` does, so diffusers'
    `maybe_free_model_hooks` (end of every call) re-applies our offload with the same device.

    diffusers 0.42.1 reads ``_all_hooks``, ``_offload_device`` and ``_offload_gpu_id``.
    """
    pipe._all_hooks = hooks
    if device is not None:
        pipe._offload_device = device
    if gpu_id is not None:
        pipe._offload_gpu_id = gpu_id


def offload_device(pipe: DiffusionPipeline) -> torch.device | str | None:
    """The device of a previous `enable_model_cpu_offload` (``pipe._offload_device``), ``None`` if none."""
    return getattr(pipe, "_offload_device", None)


def offload_gpu_id(pipe: DiffusionPipeline, default: int = 0) -> int:
    """The accelerator index of a previous `enable_model_cpu_offload` (``pipe._offload_gpu_id``)."""
    return getattr(pipe, "_offload_gpu_id", default)


def raise_if_group_offload_active(pipe: DiffusionPipeline) -> None:
    """diffusers 0.42.1 `DiffusionPipeline._maybe_raise_error_if_group_offload_active(raise_error=True)`: model
    offload and group offload cannot be combined."""
    pipe._maybe_raise_error_if_group_offload_active(raise_error=True)


# ------------------------------------------------------------------------------------------ accelerate / peft
# diffusers 0.42.1 `loaders.lora_pipeline._LOW_CPU_MEM_USAGE_DEFAULT_LORA`: the default of `low_cpu_mem_usage` when
# loading LoRA weights (True when peft and torch are recent enough).
LOW_CPU_MEM_USAGE_DEFAULT_LORA = _LOW_CPU_MEM_USAGE_DEFAULT_LORA

def has_accelerate_hook(module: torch.nn.Module) -> bool:
    """True when accelerate attached a hook (offload, device placement) to ``module`` (``module._hf_hook``)."""
    return hasattr(module, "_hf_hook")


def peft_adapters_loaded(model: torch.nn.Module) -> bool:
    """True when a diffusers model holds peft adapters (``PeftAdapterMixin._hf_peft_config_loaded``)."""
    return bool(getattr(model, "_hf_peft_config_loaded", False))


def set_peft_adapters_loaded(model: torch.nn.Module, loaded: bool) -> None:
    """Set the flag diffusers' `PeftAdapterMixin` keeps after adding adapters (``_hf_peft_config_loaded``)."""
    model._hf_peft_config_loaded = loaded


def set_fused_lora_names(pipe: DiffusionPipeline, names: set[str]) -> None:
    """Set what `LoraBaseMixin.fused_loras` / ``num_fused_loras`` report (``pipe._merged_adapters``, diffusers 0.42.1);
    kept up to date by `fuse_lora` / `unfuse_lora`, which our per-expert `unfuse_lora` bypasses."""
    pipe._merged_adapters = set(names)


# ------------------------------------------------------------------------------------------ torch
def int8_matmul_available() -> bool:
    """Whether torch has its int8 GEMM (``torch._int_mm``: int8 x int8 -> int32, CPU and CUDA, torch >= 2.2)."""
    return hasattr(torch, "_int_mm")


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a [M, K] @ b [K, N]`` for int8 matrices with exact int32 accumulation: torch 2.13.0's private
    ``torch._int_mm`` (CUDA needs M > 16 and K, N multiples of 8; ``b`` may be a transposed view)."""
    return torch._int_mm(a, b)


@contextlib.contextmanager
def accelerator_count_at_least_one() -> Iterator[None]:
    """On a machine without an accelerator, let ``torch.accelerator.device_count()`` read 1 inside the block.

    diffusers 0.42.1 `ModelMixin._resolve_parallel_config` computes ``rank % torch.accelerator.device_count()``
    (ZeroDivisionError on CPU) to name a device it only records. The original function is restored on exit; with an
    accelerator present nothing is touched.
    """
    accel = getattr(torch, "accelerator", None)
    if accel is None or accel.device_count() > 0:
        yield
        return
    original = accel.device_count
    accel.device_count = lambda: 1
    try:
        yield
    finally:
        accel.device_count = original

