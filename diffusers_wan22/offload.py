"""Memory modes for the Wan 2.2 pipelines: one expert resident, a hidden expert swap, host RAM bounded to one expert.

`Wan22OffloadMixin` (a base of `Wan22Pipeline`) provides:

* ``enable_model_cpu_offload(gpu_id=None, device=None)`` — accelerate's model offload with the two experts hooked
  *individually*: ``text_encoder -> high_noise_expert -> low_noise_expert -> vae``. Running the low-noise expert
  offloads the high-noise one, so at most one expert is on the accelerator. Stock diffusers hooks a component as a
  whole (and skips dotted names in ``model_cpu_offload_seq``), which would keep both experts on the accelerator.
  ``maybe_free_model_hooks`` (end of every call) re-applies it, as in diffusers.
* ``enable_lazy_experts(source)`` / ``Wan22Pipeline.from_pretrained(folder, lazy_experts=True)`` — the idle expert
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
* ``enable_memory_mode(mode, ...)`` — one switch for the modes the memory planner (`memory_planner.py`) predicts:
  ``"none"``, ``"model_offload"`` (stock whole-component offload), ``"expert_offload"``, ``"group_offload"``,
  ``"lazy_experts"``; VAE tiling is part of the mode.
* ``estimate_memory(height=, width=, num_frames=, mode=)`` — the planner applied to this pipeline's components.

An *expert source* is either a folder + key prefix (`SafetensorsExpertSource`, e.g. the ``transformer/`` folder
written by `save_pretrained`, keys ``high_noise_expert.*``) or any function returning the materialised expert
(`CallableExpertSource`, e.g. ``lambda: load_official_transformer(root / "high_noise_model", torch.bfloat16)``).
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

import torch
from accelerate.hooks import CpuOffload, UserCpuOffloadHook, add_hook_to_module, remove_hook_from_module

from .memory_planner import MODES as MEMORY_MODES  # one list of modes, shared with the planner
from .models.transformer_wan_moe import EXPERT_ATTRS, WanMoETransformer3DModel

__all__ = [
    "CallableExpertSource",
    "LazyExperts",
    "MEMORY_MODES",
    "SafetensorsExpertSource",
    "Wan22OffloadMixin",
    "is_materialised",
    "release_to_meta",
]

SAFETENSORS_WEIGHTS = "diffusion_pytorch_model.safetensors"


# ---------------------------------------------------------------------------------------------------- meta helpers
def is_materialised(module: torch.nn.Module) -> bool:
    """True when no parameter of ``module`` is a ``meta`` tensor."""
    return not any(p.is_meta for p in module.parameters())


def release_to_meta(module: torch.nn.Module) -> None:
    """Drop the storage of every parameter (buffers such as RoPE tables stay): params become ``meta`` tensors with
    the same shape and dtype, which is what `LazyExperts` reads back into."""
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None and not p.is_meta:
                sub._parameters[name] = torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)


def _target_dtypes(module: torch.nn.Module) -> dict[str, torch.dtype]:
    return {name: p.dtype for name, p in module.named_parameters()}


# ---------------------------------------------------------------------------------------------------- expert sources
class SafetensorsExpertSource:
    """An expert stored in a diffusers model folder (single or sharded safetensors) under ``prefix``.

    ``SafetensorsExpertSource(folder / "transformer", "high_noise_expert.")`` reads the keys of our saved MoE;
    ``prefix=""`` reads a whole stock `WanTransformer3DModel` folder; ``key_map`` renames keys (e.g.
    `official_dit_key_to_diffusers` to read an official expert folder as is). Tensors are read one at a time
    (``safe_open``), so a read can stop and resume (partial prefetch).
    """

    def __init__(self, folder: str | os.PathLike, prefix: str = "", key_map: Callable[[str], str] | None = None):
        self.folder, self.prefix, self.key_map = Path(folder), prefix, key_map
        index = self.folder / f"{SAFETENSORS_WEIGHTS}.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
        elif (self.folder / SAFETENSORS_WEIGHTS).exists():
            from safetensors import safe_open

            with safe_open(self.folder / SAFETENSORS_WEIGHTS, framework="pt") as f:
                weight_map = {k: SAFETENSORS_WEIGHTS for k in f.keys()}
        else:
            raise FileNotFoundError(f"No {SAFETENSORS_WEIGHTS} (or its .index.json) in {self.folder}.")
        self.files: dict[str, list[str]] = {}  # file -> keys of this expert, in file order
        for key, file in weight_map.items():
            if key.startswith(prefix):
                self.files.setdefault(file, []).append(key)
        if not self.files:
            raise ValueError(f"No tensor named {prefix!r}* in {self.folder}.")

    def __repr__(self) -> str:
        return f"SafetensorsExpertSource({str(self.folder)!r}, {self.prefix!r})"

    def byte_ranges(self) -> list[tuple[Path, int, int]]:
        """(file, start, end) of this expert's tensor data, from the safetensors headers."""
        ranges = []
        for file, keys in self.files.items():
            path = self.folder / file
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(n))
            ranges += [(path, 8 + n + header[k]["data_offsets"][0], 8 + n + header[k]["data_offsets"][1])
                       for k in keys]
        return ranges

    def warm(self, limit: int | None = None, chunk: int = 64 << 20) -> int:
        """Read this expert's bytes into the OS page cache (not into the process: a 64 MB buffer is reused).

        `iter_tensors` maps the files (safetensors mmap), so the tensors' pages are only read when first used;
        after `warm` that first use is served from memory. Returns the bytes read (at most ``limit``).
        """
        done, buf = 0, bytearray(chunk)
        for path, start, end in self.byte_ranges():
            with open(path, "rb", buffering=0) as f:
                f.seek(start)
                while start < end and (limit is None or done < limit):
                    n = f.readinto(memoryview(buf)[: min(chunk, end - start)])
                    if not n:
                        break
                    start, done = start + n, done + n
        return done

    def iter_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        from safetensors import safe_open

        for file, keys in self.files.items():
            with safe_open(self.folder / file, framework="pt") as f:
                for key in keys:
                    name = key[len(self.prefix):]
                    yield (self.key_map(name) if self.key_map else name), f.get_tensor(key)


class CallableExpertSource:
    """An expert produced by a function (e.g. an official-checkpoint loader); read in one piece."""

    def __init__(self, load: Callable[[], torch.nn.Module]):
        self.load = load

    def iter_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        yield from self.load().state_dict().items()


def _as_source(source) -> SafetensorsExpertSource | CallableExpertSource:
    if isinstance(source, (SafetensorsExpertSource, CallableExpertSource)):
        return source
    if callable(source):
        return CallableExpertSource(source)
    raise TypeError(f"An expert source is a SafetensorsExpertSource or a function; got {type(source).__name__}.")


def sources_from_folder(folder: str | os.PathLike) -> dict[str, SafetensorsExpertSource]:
    """Expert sources of a folder written by `Wan22Pipeline.save_pretrained` (the pipeline or its ``transformer/``)."""
    folder = Path(folder)
    if (folder / "transformer").is_dir():
        folder = folder / "transformer"
    return {name: SafetensorsExpertSource(folder, f"{attr}.") for name, attr in EXPERT_ATTRS.items()}


# ---------------------------------------------------------------------------------------------------- lazy experts
class LazyExperts:
    """Keeps at most one expert of a `WanMoETransformer3DModel` materialised; the others are ``meta`` tensors.

    Args:
        model: the MoE container (its experts may start on ``meta``).
        sources: ``{"high": source, "low": source}``.
        device: where a read expert is put (``cpu`` with model offload: the hooks move it to the accelerator).
        prefetch_steps: start reading the next expert this many steps before the switch (0: no prefetch).
        prefetch_bytes: read at most this many bytes ahead (``None``: the whole expert); the rest at the switch.

    ``reads`` counts, per expert, how many times it was read from its source (tests use it).
    """

    def __init__(self, model: WanMoETransformer3DModel, sources: dict, device="cpu", prefetch_steps: int = 1,
                 prefetch_bytes: int | None = None):
        self.model, self.device = model, torch.device(device)
        self.sources = {name: _as_source(src) for name, src in sources.items()}
        self.prefetch_steps, self.prefetch_bytes = int(prefetch_steps), prefetch_bytes
        self.dtypes = {name: _target_dtypes(model.get_expert(name)) for name in self.sources}
        self.reads: Counter = Counter()
        self._pending: dict | None = None  # {"name", "thread", "tensors", "rest", "error"}

    def is_materialised(self, name: str) -> bool:
        return is_materialised(self.model.get_expert(name))

    def release(self, name: str) -> None:
        release_to_meta(self.model.get_expert(name))

    def release_all(self) -> None:
        self._join()
        self._pending = None
        for name in self.sources:
            self.release(name)

    # -- reading
    def _convert(self, name: str, key: str, tensor: torch.Tensor) -> torch.Tensor:
        dtype = self.dtypes[name].get(key)
        return tensor.to(device=self.device, dtype=dtype if dtype is not None and tensor.is_floating_point() else None)

    def _read(self, pending: dict, limit: int | None) -> None:
        """Read tensors of ``pending["name"]`` until ``limit`` bytes (None: all); may run in a thread."""
        try:
            done = 0
            for key, tensor in pending["rest"]:
                t = self._convert(pending["name"], key, tensor)
                pending["tensors"][key] = t
                done += t.numel() * t.element_size()
                if limit is not None and done >= limit:
                    return
        except BaseException as e:  # re-raised by the main thread at the switch
            pending["error"] = e

    def _start(self, name: str) -> dict:
        self.reads[name] += 1
        return {"name": name, "thread": None, "tensors": {}, "rest": self.sources[name].iter_tensors(),
                "error": None}

    def _join(self) -> None:
        if self._pending is not None and self._pending["thread"] is not None:
            self._pending["thread"].join()
            self._pending["thread"] = None

    def prefetch(self, name: str) -> None:
        """Start reading expert ``name`` in a background thread (no-op if it is resident or already coming)."""
        if self.is_materialised(name) or (self._pending is not None and self._pending["name"] == name):
            return
        self._join()
        self._pending = pending = self._start(name)
        source = self.sources[name]
        if hasattr(source, "warm"):  # mmap-backed tensors: read the file pages ahead, map them at the switch
            target, args = self._warm, (pending, source)
        else:  # a loader function: build the expert's tensors ahead
            target, args = self._read, (pending, self.prefetch_bytes)
        pending["thread"] = threading.Thread(target=target, args=args, name=f"wan22-prefetch-{name}", daemon=True)
        pending["thread"].start()

    def _warm(self, pending: dict, source) -> None:
        try:
            source.warm(self.prefetch_bytes)
        except BaseException as e:
            pending["error"] = e

    def ensure(self, name: str) -> None:
        """Make expert ``name`` the only materialised one (waits for its prefetch, reads what is missing)."""
        if not self.is_materialised(name):
            self.materialise(name)

    def materialise(self, name: str, release_others: bool = True) -> None:
        """Read expert ``name`` (finishing its prefetch if one is under way); release the others first."""
        if self.is_materialised(name):
            return
        self._join()
        if release_others:  # release first: host RAM never holds two experts here
            for other in self.sources:
                if other != name:
                    self.release(other)
        pending = self._pending if self._pending is not None and self._pending["name"] == name else self._start(name)
        self._pending = None
        self._read(pending, None)
        if pending["error"] is not None:
            raise pending["error"]
        expert = self.model.get_expert(name)
        expert.load_state_dict(pending["tensors"], strict=True, assign=True)
        for p in expert.parameters():
            p.requires_grad_(False)

    def before_step(self, i: int, experts: list[str]) -> None:
        """Called at the top of denoising step ``i``: materialise this step's expert, prefetch the next one."""
        self.ensure(experts[i])
        if self.prefetch_steps <= 0:
            return
        nxt = next((j for j in range(i + 1, len(experts)) if experts[j] != experts[i]), None)
        if nxt is not None and nxt - i <= self.prefetch_steps:
            self.prefetch(experts[nxt])


# ---------------------------------------------------------------------------------------------------- offload hooks
class _ExpertCpuOffload(CpuOffload):
    """accelerate's `CpuOffload`, except that offloading a released (``meta``) expert is a no-op."""

    def init_hook(self, module):
        return module.to("cpu") if is_materialised(module) else module


def _offload_with_hook(model: torch.nn.Module, device, prev_module_hook: UserCpuOffloadHook | None = None):
    """`accelerate.cpu_offload_with_hook`, with `_ExpertCpuOffload` so lazy (``meta``) experts are left alone."""
    hook = _ExpertCpuOffload(execution_device=device, prev_module_hook=prev_module_hook)
    add_hook_to_module(model, hook, append=True)
    return UserCpuOffloadHook(model, hook)


# ---------------------------------------------------------------------------------------------------- the mixin
class Wan22OffloadMixin:
    """Per-expert offload, lazy experts with prefetch, per-expert group offload and the memory planner."""

    _lazy_experts: LazyExperts | None = None

    # -- loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """`DiffusionPipeline.from_pretrained`, plus ``lazy_experts=True`` (and ``prefetch_steps``,
        ``prefetch_bytes``): the MoE experts are not read at load time but at their first step, one at a time.

        Works on folders written by `Wan22Pipeline.save_pretrained` (``transformer/`` holding both experts).
        """
        lazy = kwargs.pop("lazy_experts", False)
        lazy_kwargs = {k: kwargs.pop(k) for k in ("prefetch_steps", "prefetch_bytes") if k in kwargs}
        if not lazy:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        folder = Path(pretrained_model_name_or_path)
        if "transformer" in kwargs:
            raise ValueError("`lazy_experts=True` builds the transformer itself; do not pass `transformer`.")
        kwargs["transformer"] = meta_moe_from_folder(folder / "transformer", kwargs.get("torch_dtype"))
        pipe = super().from_pretrained(folder, **kwargs)
        pipe.enable_lazy_experts(folder, **lazy_kwargs)
        return pipe

    # -- lazy experts
    def enable_lazy_experts(self, source=None, prefetch_steps: int = 1, prefetch_bytes: int | None = None,
                            device=None) -> LazyExperts:
        """Keep only the running expert materialised; read the other from ``source`` when its first step comes.

        Args:
            source: a folder written by `save_pretrained` (pipeline or its ``transformer/``), or a dict
                ``{"high": src, "low": src}`` of `SafetensorsExpertSource` / functions returning the expert.
            prefetch_steps: read the next expert in a background thread during the last ``prefetch_steps`` steps of
                the current one (0 disables the prefetch: host RAM then never holds two experts).
            prefetch_bytes: read at most this many bytes ahead; the rest is read at the switch.
            device: where read experts go (default: the device of the other components, ``cpu`` under offload).

        Both experts are released (set to ``meta``) now; their current values are dropped.
        """
        if not isinstance(self.transformer, WanMoETransformer3DModel):
            raise ValueError("Lazy experts need a mixture-of-experts transformer (WanMoETransformer3DModel).")
        if any(getattr(e, "_hf_peft_config_loaded", False) for e in self.transformer.experts_named()):
            raise ValueError("Lazy experts re-read the saved weights and would drop LoRA adapters; fuse and save "
                             "the pipeline first, or do not use lazy experts with adapters.")
        from .quantization import quantization_state

        quantized = {n: quantization_state(self.transformer.get_expert(n)) for n in self.transformer.loaded_experts}
        if any(state not in (None, "layerwise") for state in quantized.values()):
            raise ValueError(f"Lazy experts re-read plain tensors and cannot hold torchao / GGUF experts "
                             f"({quantized}).")
        if source is None:
            raise ValueError("`enable_lazy_experts` needs a source: a folder written by `save_pretrained` or a dict "
                             "{'high': source, 'low': source}.")
        sources = source if isinstance(source, dict) else sources_from_folder(source)
        if device is None:
            device = "cpu" if getattr(self, "_all_hooks", None) else (self.vae.device if self.vae is not None
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
        if device is not None and not getattr(self, "_all_hooks", None):
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
                if hasattr(expert, "_hf_hook"):
                    remove_hook_from_module(expert, recurse=True)

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device: torch.device | str | None = None):
        """Model CPU offload with the MoE experts hooked individually: at most one expert on the accelerator.

        Chain (accelerate ``cpu_offload_with_hook`` with ``prev_module_hook``): ``text_encoder -> high_noise_expert
        -> low_noise_expert -> vae``. Running a model offloads the previous one, so the text encoder leaves the
        accelerator when the first expert runs (text-encoder release after encoding) and the high-noise expert
        leaves when the low-noise one starts. Wan 2.2 timesteps only decrease, so this one-way chain is enough;
        the chain is rebuilt after every call (``maybe_free_model_hooks``). ``device="cpu"`` works (tests).
        """
        from diffusers.utils.torch_utils import get_device

        self._maybe_raise_error_if_group_offload_active(raise_error=True)
        self.remove_all_hooks()
        if device is None:
            device = get_device()
            if device == "cpu":
                raise RuntimeError("`enable_model_cpu_offload` requires an accelerator; pass device='cpu' to test.")
        torch_device = torch.device(device)
        if gpu_id is not None and torch_device.index is not None:
            raise ValueError(f"Pass either `gpu_id`={gpu_id} or a device with an index ({device}), not both.")
        self._offload_gpu_id = gpu_id or torch_device.index or getattr(self, "_offload_gpu_id", 0)
        device = torch.device(f"{torch_device.type}:{self._offload_gpu_id}")
        self._offload_device = device  # read by `maybe_free_model_hooks`, which calls us again after each call

        self.to("cpu", silence_dtype_warnings=True)
        if self._lazy_experts is not None:
            self._lazy_experts.device = torch.device("cpu")
        self._all_hooks = []
        hook = None
        chained = set()
        for _, module in self._offload_chain():
            hook = _offload_with_hook(module, device, prev_module_hook=hook)
            self._all_hooks.append(hook)
            chained.add(id(module))
        for name, module in self.components.items():  # anything else gets a standalone hook, as in diffusers
            if isinstance(module, torch.nn.Module) and id(module) not in chained and name != "transformer":
                if name in self._exclude_from_cpu_offload:
                    module.to(device)
                else:
                    self._all_hooks.append(_offload_with_hook(module, device))

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
        from diffusers.hooks import apply_group_offloading

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
        * ``"lazy_experts"``: `enable_lazy_experts(source)` plus the per-expert chain.

        ``vae_tiling`` (default: on for every offload mode) enables `AutoencoderKLWan` tiling and slicing so the
        decode never becomes the peak.
        """
        if mode not in MEMORY_MODES:
            raise ValueError(f"Unknown memory mode {mode!r}; expected one of {MEMORY_MODES}.")
        if device is None:
            from diffusers.utils.torch_utils import get_device

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
        from accelerate import cpu_offload_with_hook

        self.remove_all_hooks()
        self._offload_device = torch.device(device)
        self.to("cpu", silence_dtype_warnings=True)
        self._all_hooks, hook = [], None
        for name in self.model_cpu_offload_seq.split("->"):
            module = getattr(self, name, None)
            if isinstance(module, torch.nn.Module):
                _, hook = cpu_offload_with_hook(module, device, prev_module_hook=hook)
                self._all_hooks.append(hook)

    def estimate_memory(self, height: int | None = None, width: int | None = None, num_frames: int | None = None,
                        mode: str = "expert_offload", **kwargs):
        """Predicted peak accelerator memory and host RAM of a call in ``mode`` (a `MemoryEstimate`).

        Parameter counts are read from the components (works on ``meta``/released experts); other arguments go to
        `memory_planner.estimate_memory` (``batched_cfg``, ``vae_tiling``, ``prefetch``, ``execution`` ...).
        """
        from .memory_planner import estimate_memory, spec_from_pipeline

        d = self.variant_defaults
        return estimate_memory(spec_from_pipeline(self), height or d.height, width or d.width,
                               num_frames or d.num_frames, mode=mode, **kwargs)


def meta_moe_from_folder(folder: str | os.PathLike, torch_dtype: torch.dtype | None = None) -> WanMoETransformer3DModel:
    """A `WanMoETransformer3DModel` built from ``folder/config.json`` with every parameter on ``meta``.

    Parameter dtypes follow diffusers' loading rule, so a lazily read expert matches `from_pretrained`: floating
    parameters in ``torch_dtype``, except the ``_keep_in_fp32_modules`` which stay float32. Without ``torch_dtype``
    the dtypes of the checkpoint are kept (read from the safetensors header).
    """
    from accelerate import init_empty_weights

    config = WanMoETransformer3DModel.load_config(folder)
    if config.get("_class_name") not in (None, WanMoETransformer3DModel.__name__):
        raise ValueError(f"{folder} holds a {config.get('_class_name')}, not a WanMoETransformer3DModel; lazy "
                         "experts need a folder written by Wan22Pipeline.save_pretrained.")
    with init_empty_weights():
        model = WanMoETransformer3DModel.from_config(config)
    keep = tuple(WanMoETransformer3DModel._keep_in_fp32_modules or ())
    stored = _stored_dtypes(folder) if torch_dtype is None else {}
    retype_meta_parameters(model, lambda name, p: stored.get(name, p.dtype) if torch_dtype is None else (
        torch.float32 if any(m in name.split(".") for m in keep) else torch_dtype))
    if config.get("expert_precision"):  # saved per-expert precision: same dtypes and fp8 hooks as from_pretrained
        from .quantization import apply_stored_precision

        apply_stored_precision(model)
    return model.eval()


def retype_meta_parameters(model: torch.nn.Module, dtype_of: Callable[[str, torch.nn.Parameter], torch.dtype]
                           ) -> None:
    """Give each ``meta`` parameter the dtype it will be read in, so a lazily read expert matches an eager load."""
    for name, p in list(model.named_parameters()):
        dtype = dtype_of(name, p)
        if p.dtype != dtype:
            module_name, _, attr = name.rpartition(".")
            model.get_submodule(module_name)._parameters[attr] = torch.nn.Parameter(
                torch.empty_like(p, dtype=dtype), requires_grad=False)


def _stored_dtypes(folder: str | os.PathLike) -> dict[str, torch.dtype]:
    from safetensors import safe_open

    dtypes = {}
    for attr in EXPERT_ATTRS.values():
        src = SafetensorsExpertSource(folder, f"{attr}.")
        for file, keys in src.files.items():
            with safe_open(Path(folder) / file, framework="pt", device="cpu") as f:
                for key in keys:
                    dtypes[key] = f.get_slice(key).get_dtype()
    from .conversion.official import SAFETENSORS_DTYPES

    return {k: SAFETENSORS_DTYPES.get(v, torch.float32) for k, v in dtypes.items()}
