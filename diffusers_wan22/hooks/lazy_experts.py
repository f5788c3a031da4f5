"""Lazy experts: host RAM holds one expert of the A14B mixture, the other waits on disk (its parameters on ``meta``).

`LazyExperts` reads an expert from its *source* when the expert's first step comes and releases the previous one
back to ``meta``; an expert no step uses is never read. With prefetch, a background thread reads the next expert's
bytes during the last ``prefetch_steps`` steps of the current one, so the switch step does not wait for the disk.
For safetensors sources the thread fills the OS page cache (reclaimable, not process memory; the tensors are
mmap-backed and mapped at the switch), so the process still holds one expert.

A source is anything with ``iter_tensors()`` yielding ``(expert key, tensor)`` (`loaders.SafetensorsExpertSource`
reads a saved or official folder in place), or a function returning the materialised expert. The MoE is used
through ``get_expert(name)`` only (the model layer sits above the hooks).
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Callable, Iterator

import torch

__all__ = ["CallableExpertSource", "LazyExperts", "as_expert_source", "is_materialised", "release_to_meta",
           "retype_meta_parameters"]


def is_materialised(module: torch.nn.Module) -> bool:
    """True when no parameter of ``module`` is a ``meta`` tensor."""
    return not any(p.is_meta for p in module.parameters())


def release_to_meta(module: torch.nn.Module) -> None:
    """Drop the storage of every parameter (buffers such as RoPE tables stay): params become ``meta`` tensors with
    the same shape and dtype, which is what `LazyExperts` reads back into."""
    for sub in module.modules():
        for name, p in list(sub.named_parameters(recurse=False)):
            if not p.is_meta:  # re-registering under the same name replaces the parameter
                sub.register_parameter(name, torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False))


def _target_dtypes(module: torch.nn.Module) -> dict[str, torch.dtype]:
    return {name: p.dtype for name, p in module.named_parameters()}


def retype_meta_parameters(model: torch.nn.Module, dtype_of: Callable[[str, torch.nn.Parameter], torch.dtype]
                           ) -> None:
    """Give each ``meta`` parameter the dtype it will be read in, so a lazily read expert matches an eager load."""
    for name, p in list(model.named_parameters()):
        dtype = dtype_of(name, p)
        if p.dtype != dtype:
            module_name, _, attr = name.rpartition(".")
            model.get_submodule(module_name).register_parameter(
                attr, torch.nn.Parameter(torch.empty_like(p, dtype=dtype), requires_grad=False))


class CallableExpertSource:
    """An expert produced by a function (e.g. an official-checkpoint loader); read in one piece."""

    def __init__(self, load: Callable[[], torch.nn.Module]):
        self.load = load

    def iter_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        yield from self.load().state_dict().items()


def as_expert_source(source):
    """An object with ``iter_tensors()`` (e.g. `loaders.SafetensorsExpertSource`) as is; a function returning the
    expert wrapped in a `CallableExpertSource`."""
    if hasattr(source, "iter_tensors"):
        return source
    if callable(source):
        return CallableExpertSource(source)
    raise TypeError(f"An expert source has `iter_tensors()` (e.g. SafetensorsExpertSource) or is a function "
                    f"returning the expert; got {type(source).__name__}.")


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

    def __init__(self, model: torch.nn.Module, sources: dict, device="cpu", prefetch_steps: int = 1,
                 prefetch_bytes: int | None = None):
        self.model, self.device = model, torch.device(device)
        self.sources = {name: as_expert_source(src) for name, src in sources.items()}
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
