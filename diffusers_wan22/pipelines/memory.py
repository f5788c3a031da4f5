"""Memory modes for the Wan 2.2 pipelines: one expert resident, a hidden expert swap, host RAM bounded to one expert.

`Wan22MemoryMixin` (a base of every Wan 2.2 pipeline) provides:

* ``enable_model_cpu_offload(gpu_id=None, device=None)`` — accelerate's model offload with the two experts hooked
  *individually*: ``text_encoder -> high_noise_expert -> low_noise_expert -> vae``. Running the low-noise expert
  offloads the high-noise one, so at most one expert is on the accelerator. Stock diffusers hooks a component as a
  whole (and skips dotted names in ``model_cpu_offload_seq``), which would keep both experts on the accelerator.
  ``maybe_free_model_hooks`` (end of every call) re-applies it, as in diffusers.
* ``enable_lazy_experts(source)`` / ``from_pretrained(folder, lazy_experts=True)`` / ``from_official(..., lazy_experts=True)`` — the idle expert
  lives on disk only: its parameters are ``meta`` tensors, it is read when its first step comes and the previous
  expert is released (back to ``meta``). An expert that no step of the call uses is never read. Host RAM then holds
  one expert instead of two.
* Prefetch (the hidden swap) — with lazy experts, a background thread reads the next expert's bytes during the last
  ``prefetch_steps`` steps of the current expert, so the switch step does not wait for the disk. The pipeline decides
  every step's expert before the loop (``plan_steps``) and calls ``_before_step(i, experts)`` at the top of each
  step. For safetensors sources the thread fills the OS page cache (reclaimable, not process memory; the tensors
  are mmap-backed and mapped at the switch), so host RAM of the process still holds one expert. ``prefetch_bytes``
  bounds how much is read ahead.
* ``enable_group_offload(...)`` — diffusers group offloading applied per component and per expert, each with its own
  ``offload_to_disk_path`` sub-directory (``<path>/transformer/high_noise_expert``, ...). diffusers 0.42.1 otherwise
  writes two same-class models into the same files and silently runs the wrong weights.
* ``enable_memory_mode(mode, ...)`` — one switch for the modes the memory planner (`core/memory_planner.py`) predicts:
  ``"none"``, ``"model_offload"`` (stock whole-component offload), ``"expert_offload"``, ``"group_offload"``,
  ``"lazy_experts"``; VAE tiling is part of the mode.
* ``estimate_memory(height=, width=, num_frames=, mode=)`` — the planner applied to this pipeline's components.

An *expert source* is either a folder + key prefix (`SafetensorsExpertSource`, e.g. the ``transformer/`` folder
written by `save_pretrained`, keys ``high_noise_expert.*``) or any function returning the materialised expert
(`CallableExpertSource`, e.g. ``lambda: load_official_transformer(root / "high_noise_model", torch.bfloat16)``).
"""

from __future__ import annotations

import os

import torch
from accelerate import cpu_offload_with_hook
from accelerate.hooks import remove_hook_from_module
from diffusers.hooks import apply_group_offloading
from diffusers.utils.torch_utils import get_device

from .._compat import (
    has_accelerate_hook,
    offload_device,
    offload_gpu_id,
    offload_hooks,
    peft_adapters_loaded,
    raise_if_group_offload_active,
    set_offload_state,
)
from ..core.memory_planner import estimate_memory
from ..core.names import EXPERT_ATTRS, MEMORY_MODES
from ..hooks.lazy_experts import LazyExperts, is_materialised
from ..hooks.offload import offload_with_hook
from ..hooks.precision import quantization_state
from ..loaders.expert_sources import sources_from_folder
from ..models.transformer_wan_moe import WanMoETransformer3DModel
from ..utils.memory_specs import spec_from_pipeline

__all__ = ["Wan22MemoryMixin"]


class Wan22MemoryMixin:
    """Per-expert offload, lazy experts with prefetch, per-expert group offload and the memory planner."""

    _lazy_experts: LazyExperts | None = None

    # -- lazy experts
    def enable_lazy_experts(self, source=None, prefetch_steps: int = 1, prefetch_bytes: int | None = None,
                            device=None) -> LazyExperts:
        """Keep only the running expert materialised; read the other from ``source`` when its first step comes.

        Args:
            source: a folder written by `save_pretrained` (pipeline or its ``transformer/``), or a dict
                ``{"high": src, "low": src}`` of `SafetensorsExpertSource` / functions returning the expert.
                Default: ``pipe.lazy_source``, the experts' files recorded by the loader.
            prefetch_steps: read the next expert in a background thread during the last ``prefetch_steps`` steps of
                the current one (0 disables the prefetch: host RAM then never holds two experts).
            prefetch_bytes: read at most this many bytes ahead; the rest is read at the switch.
            device: where read experts go (default: the device of the other components, ``cpu`` under offload).

        Both experts are released (set to ``meta``) now; their current values are dropped.
        """
        if not isinstance(self.transformer, WanMoETransformer3DModel):
            raise ValueError("Lazy experts need a mixture-of-experts transformer (WanMoETransformer3DModel).")
        if any(peft_adapters_loaded(m) for m in (self.transformer, *self.transformer.experts_named())):
            raise ValueError("Lazy experts re-read the saved weights and would drop LoRA adapters; fuse and save "
                             "the pipeline first, or do not use lazy experts with adapters.")
        quantized = {n: quantization_state(self.transformer.get_expert(n)) for n in self.transformer.loaded_experts}
        if any(state not in (None, "layerwise") for state in quantized.values()):
            raise ValueError(f"Lazy experts re-read plain tensors and cannot hold torchao / GGUF experts "
                             f"({quantized}).")
        if source is None:  # where the loader read the experts from (`from_official` / `from_pretrained` record it)
            source = getattr(self, "lazy_source", None)
        if source is None:
            raise ValueError("`enable_lazy_experts` needs a source: a folder written by `save_pretrained` or a dict "
                             "{'high': source, 'low': source} (pipelines loaded with `from_official` / "
                             "`from_pretrained` / `load_pipeline` know their own: `pipe.lazy_source`).")
        sources = source if isinstance(source, dict) else sources_from_folder(source)
        if device is None:
            device = "cpu" if offload_hooks(self) else (self.vae.device if self.vae is not None
                                                                      else "cpu")
        if self._lazy_experts is not None:
            self._lazy_experts.release_all()
        self._lazy_experts = LazyExperts(self.transformer, sources, device, prefetch_steps, prefetch_bytes)
        self._lazy_experts.release_all()
        return self._lazy_experts

    def disable_lazy_experts(self) -> None:
        """Read every released expert back (both resident again) and leave the lazy mode."""
        lazy, self._lazy_experts = self._lazy_experts, None
        if lazy is not None:
            for name in lazy.sources:
                lazy.materialise(name, release_others=False)

    @property
    def lazy_experts(self) -> LazyExperts | None:
        """The `LazyExperts` manager when lazy experts are enabled."""
        return self._lazy_experts

    def _before_step(self, i: int, experts: list[str]) -> None:
        """Hook called by the denoising loop at the top of step ``i`` (``experts``: the plan of the whole call)."""
        if self._lazy_experts is not None:
            self._lazy_experts.before_step(i, experts)

    def to(self, *args, **kwargs):
        """`DiffusionPipeline.to`. With lazy experts, released (``meta``) experts stay on ``meta`` and are read onto
        the new device when their turn comes; changing the dtype is refused (load with ``torch_dtype=``)."""
        if self._lazy_experts is None:
            return super().to(*args, **kwargs)
        kwargs.pop("silence_dtype_warnings", None)
        device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
        for a in args:
            if isinstance(a, torch.dtype):
                dtype = a
            elif a is not None:
                device = a
        if dtype is not None:
            raise ValueError("A pipeline with lazy experts cannot change dtype; load it with `torch_dtype=` instead.")
        for name, module in self.components.items():
            if isinstance(module, WanMoETransformer3DModel):
                for expert in module.experts_named():
                    if is_materialised(expert):
                        expert.to(device)
            elif isinstance(module, torch.nn.Module):
                module.to(device)
        if device is not None and not offload_hooks(self):
            self._lazy_experts.device = torch.device(device)
        return self

    # -- model offload, one expert at a time
    def _offload_chain(self) -> list[tuple[str, torch.nn.Module]]:
        """(name, module) in execution order: text encoder, the experts (high, low), VAE."""
        chain = []
        for name in self.model_cpu_offload_seq.split("->"):
            module = getattr(self, name, None)
            if name == "transformer" and isinstance(module, WanMoETransformer3DModel):
                chain += [(f"transformer.{attr}", getattr(module, attr)) for attr in EXPERT_ATTRS.values()
                          if getattr(module, attr) is not None]
            elif isinstance(module, torch.nn.Module):
                chain.append((name, module))
        return chain

    def remove_all_hooks(self) -> None:
        """Remove accelerate hooks, including those on the experts inside the MoE container."""
        super().remove_all_hooks()
        if isinstance(getattr(self, "transformer", None), WanMoETransformer3DModel):
            for expert in self.transformer.experts_named():
                if has_accelerate_hook(expert):
                    remove_hook_from_module(expert, recurse=True)

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device: torch.device | str | None = None):
        """Model CPU offload with the MoE experts hooked individually: at most one expert on the accelerator.

        Chain (accelerate ``cpu_offload_with_hook`` with ``prev_module_hook``): ``text_encoder -> high_noise_expert
        -> low_noise_expert -> vae``. Running a model offloads the previous one, so the text encoder leaves the
        accelerator when the first expert runs (text-encoder release after encoding) and the high-noise expert
        leaves when the low-noise one starts. Wan 2.2 timesteps only decrease, so this one-way chain is enough;
        the chain is rebuilt after every call (``maybe_free_model_hooks``). ``device="cpu"`` works (tests).
        """
        raise_if_group_offload_active(self)
        self.remove_all_hooks()
        if device is None:  # diffusers re-enables offload without a device (after loading a LoRA): keep the last one
            device = offload_device(self)
        if device is None:
            device = get_device()
            if device == "cpu":
                raise RuntimeError("`enable_model_cpu_offload` requires an accelerator; pass device='cpu' to test.")
        torch_device = torch.device(device)
        if gpu_id is not None and torch_device.index is not None:
            raise ValueError(f"Pass either `gpu_id`={gpu_id} or a device with an index ({device}), not both.")
        gpu_id = gpu_id or torch_device.index or offload_gpu_id(self)
        device = torch.device(f"{torch_device.type}:{gpu_id}")

        self.to("cpu", silence_dtype_warnings=True)
        if self._lazy_experts is not None:
            self._lazy_experts.device = torch.device("cpu")
        hooks, hook, chained = [], None, set()
        for _, module in self._offload_chain():
            hook = offload_with_hook(module, device, prev_module_hook=hook)
            hooks.append(hook)
            chained.add(id(module))
        for name, module in self.components.items():  # anything else gets a standalone hook, as in diffusers
            if isinstance(module, torch.nn.Module) and id(module) not in chained and name != "transformer":
                if name in self._exclude_from_cpu_offload:
                    module.to(device)
                else:
                    hooks.append(offload_with_hook(module, device))
        # recorded where diffusers' `maybe_free_model_hooks` reads it: it calls us again after each call
        set_offload_state(self, hooks, device, gpu_id)

    # -- group offload, one directory per component and per expert
    def enable_group_offload(self, onload_device, offload_device=torch.device("cpu"), offload_type="block_level",
                             num_blocks_per_group: int | None = None, non_blocking: bool = False,
                             use_stream: bool = False, record_stream: bool = False, low_cpu_mem_usage: bool = False,
                             offload_to_disk_path: str | None = None, exclude_modules=None) -> None:
        """diffusers group offloading for every component; the MoE experts are offloaded as separate models.

        Arguments are those of `DiffusionPipeline.enable_group_offload`. Each expert of the MoE container
        (``_group_offload_block_modules``) gets its own groups, so after an expert's forward all of it is
        offloaded again: at most one expert is onloaded. With ``offload_to_disk_path=P`` every component writes to
        ``P/<component>`` and every expert to ``P/transformer/<expert>``: no file is shared between models.
        """
        if self._lazy_experts is not None:
            raise ValueError("Group offload and lazy experts cannot be combined; pick one memory mode.")
        exclude = [exclude_modules] if isinstance(exclude_modules, str) else list(exclude_modules or [])
        kwargs = dict(onload_device=onload_device, offload_device=offload_device, offload_type=offload_type,
                      num_blocks_per_group=num_blocks_per_group, non_blocking=non_blocking, use_stream=use_stream,
                      record_stream=record_stream, low_cpu_mem_usage=low_cpu_mem_usage)

        def apply(module: torch.nn.Module, *parts: str) -> None:
            path = None if offload_to_disk_path is None else os.path.join(offload_to_disk_path, *parts)
            if path is not None:
                os.makedirs(path, exist_ok=True)
            if hasattr(module, "enable_group_offload"):
                module.enable_group_offload(**kwargs, offload_to_disk_path=path)
            else:
                apply_group_offloading(module=module, **kwargs, offload_to_disk_path=path)

        for name, component in self.components.items():
            if not isinstance(component, torch.nn.Module):
                continue
            if name in exclude:
                component.to(onload_device)
            elif isinstance(component, WanMoETransformer3DModel):
                for attr in component._group_offload_block_modules:
                    if getattr(component, attr) is not None:
                        apply(getattr(component, attr), name, attr)
            else:
                apply(component, name)

    # -- memory modes and the planner
    def enable_memory_mode(self, mode: str, device=None, vae_tiling: bool | None = None,
                           offload_to_disk_path: str | None = None, source=None, **kwargs) -> None:
        """Apply one of the planner's modes (see `memory_planner.estimate_memory`).

        * ``"none"``: everything on ``device``.
        * ``"model_offload"``: stock diffusers behaviour, the MoE container is one offloaded component (both experts
          on the accelerator during denoising). Kept for comparison.
        * ``"expert_offload"``: `enable_model_cpu_offload` with the per-expert chain.
        * ``"group_offload"``: block-level group offload, one block per group (``offload_to_disk_path`` optional).
        * ``"lazy_experts"``: `enable_lazy_experts(source)` plus the per-expert chain (``source`` defaults to
          ``pipe.lazy_source``, where the loader read the experts from).

        ``vae_tiling`` (default: on for every offload mode) enables `AutoencoderKLWan` tiling and slicing so the
        decode never becomes the peak.
        """
        if mode not in MEMORY_MODES:
            raise ValueError(f"Unknown memory mode {mode!r}; expected one of {MEMORY_MODES}.")
        if device is None:
            device = get_device()
        if mode == "none":
            self.to(device)
        elif mode == "model_offload":
            self._enable_whole_component_offload(device)
        elif mode == "expert_offload":
            self.enable_model_cpu_offload(device=device)
        elif mode == "group_offload":
            self.enable_group_offload(device, offload_type="block_level", num_blocks_per_group=1,
                                      offload_to_disk_path=offload_to_disk_path, **kwargs)
        else:
            if self._lazy_experts is None:
                self.enable_lazy_experts(source, **kwargs)
            self.enable_model_cpu_offload(device=device)
        if vae_tiling is None:
            vae_tiling = mode != "none"
        if vae_tiling and self.vae is not None:
            self.vae.enable_tiling()
            self.vae.enable_slicing()

    def _enable_whole_component_offload(self, device) -> None:
        """Stock diffusers model offload (the MoE container as one component), for comparison only."""
        self.remove_all_hooks()
        self.to("cpu", silence_dtype_warnings=True)
        hooks, hook = [], None
        for name in self.model_cpu_offload_seq.split("->"):
            module = getattr(self, name, None)
            if isinstance(module, torch.nn.Module):
                _, hook = cpu_offload_with_hook(module, device, prev_module_hook=hook)
                hooks.append(hook)
        set_offload_state(self, hooks, torch.device(device), None)

    def estimate_memory(self, height: int | None = None, width: int | None = None, num_frames: int | None = None,
                        mode: str = "expert_offload", **kwargs):
        """Predicted peak accelerator memory and host RAM of a call in ``mode`` (a `MemoryEstimate`).

        Parameter counts are read from the components (works on ``meta``/released experts); other arguments go to
        `memory_planner.estimate_memory` (``batched_cfg``, ``vae_tiling``, ``prefetch``, ``execution`` ...).
        """
        d = self.variant_defaults
        return estimate_memory(spec_from_pipeline(self), height or d.height, width or d.width,
                               num_frames or d.num_frames, mode=mode, **kwargs)
