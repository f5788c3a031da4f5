"""Multi-process inference for the Wan 2.2 pipelines on existing engines.

* Context (sequence) parallelism — `Wan22ParallelMixin.enable_parallelism(ulysses_degree=..., ring_degree=...)`
  wraps diffusers' `ContextParallelConfig` and applies it to every expert of a `WanMoETransformer3DModel` (each
  expert is a `ModelMixin` with its own `_cp_plan`) or to a dense `WanTransformer3DModel`. Launch with `torchrun`;
  every rank runs the same pipeline call, the transformer's tokens are split across the ranks, and only rank 0
  should write the result (`is_main_process()`).
* Data parallelism over prompts lives in the CLI (`wan22 generate --prompts FILE` under `accelerate launch`).

Typical use (one node, 8 GPUs)::

    # torchrun --nproc_per_node=8 run.py
    from diffusers_wan22 import Wan22Pipeline
    from diffusers_wan22 import init_distributed, is_main_process

    device = init_distributed()                      # NCCL on GPUs, gloo on CPU
    pipe = Wan22Pipeline.from_official("./Wan2.2-T2V-A14B", torch_dtype=torch.bfloat16).to(device)
    pipe.enable_parallelism(ulysses_degree=8)        # 40 heads / 8 = 5 heads per rank
    out = pipe(prompt, generator=torch.Generator("cpu").manual_seed(0))  # same seed on every rank
    if is_main_process():
        save_video(out.frames[0], "out.mp4", fps=16)

diffusers 0.42.1 builds the rank's device as ``rank % torch.accelerator.device_count()``, which divides by zero on a
CPU-only machine. We build the device mesh ourselves and, only when no accelerator exists, make the device count
read 1 for the duration of the `enable_parallelism` call (`_compat.accelerator_count_at_least_one`); diffusers
itself is not modified.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from diffusers import ContextParallelConfig

from .._compat import accelerator_count_at_least_one, parallel_config, processor_supports_context_parallel
from ..utils.distributed import cp_token_count, mesh_device_type

__all__ = ["Wan22ParallelMixin"]


# ---------------------------------------------------------------------------------------------------------- mixin
class Wan22ParallelMixin:
    """Context parallelism for a pipeline whose ``transformer`` is a Wan MoE container or a dense Wan transformer."""

    _cp_degree: int = 1  # ulysses x ring once enabled; 1 = off
    _cp_uneven_ok: bool = False  # ulysses_anything / ring_anything accept any sequence length

    def _parallel_models(self) -> list[tuple[str, torch.nn.Module]]:
        """(name, model) for every module that gets its own context-parallel hooks."""
        transformer = self.transformer
        if hasattr(transformer, "experts_named"):  # WanMoETransformer3DModel: one plan per expert
            names = getattr(transformer, "loaded_experts", ["high", "low"])
            return [(f"{name}-noise expert", transformer.get_expert(name)) for name in names]
        return [("transformer", transformer)]

    @property
    def parallel_degree(self) -> int:
        """Number of ranks the transformer's tokens are split across (1 when parallelism is off)."""
        return self._cp_degree

    def enable_parallelism(self, ulysses_degree: int = 1, ring_degree: int = 1, **cp_kwargs: Any) -> None:
        """Split the transformer's sequence across ``ulysses_degree x ring_degree`` ranks (diffusers context parallel).

        Call it on every rank after ``torch.distributed.init_process_group(...)`` (see `init_distributed`) and after
        moving the pipeline to the rank's device, then run the same pipeline call (same prompt and seed) on every
        rank. Every divisibility rule is checked before any model is touched:

        * ``ulysses_degree x ring_degree`` must equal the world size;
        * the attention head count (40 for A14B, 24 for TI2V-5B) must be divisible by ``ulysses_degree``;
        * at call time, the token count ``F_lat x H/16 x W/16`` (Wan 2.1 VAE; ``H/32 x W/32`` with the 2.2 VAE)
          must be divisible by ``ulysses_degree x ring_degree`` (checked with the other call arguments).

        Args:
            ulysses_degree: ranks exchanging heads for sequence with all-to-all (Ulysses attention).
            ring_degree: ranks passing key/value blocks around a ring (needs an attention backend that returns
                the log-sum-exp, e.g. ``flash`` or ``_native_cudnn``; not available on CPU).
            cp_kwargs: other `diffusers.ContextParallelConfig` fields (``convert_to_fp32``, ``ulysses_anything``,
                ``ring_anything``, ``mesh``, ...).
        """
        for name, value in (("ulysses_degree", ulysses_degree), ("ring_degree", ring_degree)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
        degree = ulysses_degree * ring_degree
        if degree == 1:
            raise ValueError("`enable_parallelism` needs `ulysses_degree` or `ring_degree` > 1 (both are 1).")
        if self._cp_degree > 1:
            raise RuntimeError(f"Context parallelism is already enabled on this pipeline (degree {self._cp_degree}).")
        uneven = bool(cp_kwargs.get("ulysses_anything") or cp_kwargs.get("ring_anything"))

        models = self._parallel_models()
        for name, model in models:
            _check_parallel_model(name, model, ulysses_degree, cp_kwargs)

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "`enable_parallelism` needs torch.distributed: launch with `torchrun --nproc_per_node=N ...` and "
                "call `torch.distributed.init_process_group(...)` (or `diffusers_wan22.init_distributed()`)"
                " first."
            )
        world = dist.get_world_size()
        if degree != world:
            raise ValueError(
                f"`ulysses_degree` x `ring_degree` = {ulysses_degree} x {ring_degree} = {degree} must equal the "
                f"world size {world} (the number of processes launched)."
            )
        if ring_degree > 1 and mesh_device_type() == "cpu":
            raise NotImplementedError(
                "Ring attention (`ring_degree` > 1) does not run on CPU in diffusers 0.42.1: it needs an attention "
                "backend returning the log-sum-exp (flash, _native_cudnn on CUDA). Use `ulysses_degree` instead."
            )

        mesh = cp_kwargs.pop("mesh", None)
        cp_plan = cp_kwargs.pop("cp_plan", None)
        if mesh is None:  # one mesh shared by both experts (diffusers would build one per model)
            mesh = torch.distributed.device_mesh.init_device_mesh(
                mesh_device_type(), (ring_degree, ulysses_degree), mesh_dim_names=("ring", "ulysses")
            )
        with accelerator_count_at_least_one():
            for _, model in models:
                config = ContextParallelConfig(
                    ulysses_degree=ulysses_degree, ring_degree=ring_degree, mesh=mesh, **cp_kwargs
                )
                model.enable_parallelism(config=config, cp_plan=cp_plan)
        self._cp_degree = degree
        self._cp_uneven_ok = uneven

    def _check_parallel_inputs(self, height: int, width: int, num_frames: int) -> None:
        """Call-time check (no-op when parallelism is off): the token count must split evenly across the ranks."""
        if self._cp_degree <= 1 or self._cp_uneven_ok:
            return
        t_stride, s_stride = self.vae_scale_factor_temporal, self.vae_scale_factor_spatial
        patch = tuple(self.transformer_config.patch_size)
        tokens, (f, h, w) = cp_token_count(num_frames, height, width, t_stride, s_stride, patch)
        if tokens % self._cp_degree == 0:
            return
        step = s_stride * patch[1]
        frames = next((n for n in range(num_frames, num_frames + 4 * t_stride * self._cp_degree + 1, t_stride)
                       if cp_token_count(n, height, width, t_stride, s_stride, patch)[0] % self._cp_degree == 0), None)
        hint = f", or use num_frames={frames}" if frames is not None else ""
        raise ValueError(
            f"Context parallelism over {self._cp_degree} ranks needs a token count divisible by "
            f"{self._cp_degree}; height={height}, width={width}, num_frames={num_frames} give {f} latent frames x "
            f"{h} x {w} (H/{step} x W/{step}) = {tokens} tokens. Change the size{hint}."
        )


def _check_parallel_model(name: str, model: torch.nn.Module, ulysses_degree: int, cp_kwargs: dict) -> None:
    """What `enable_parallelism` needs of one transformer, checked before anything is set up."""
    if getattr(model, "_cp_plan", None) is None and "cp_plan" not in cp_kwargs:
        raise ValueError(f"The {name} ({type(model).__name__}) has no diffusers `_cp_plan`; context "
                         "parallelism is not available for it.")
    if parallel_config(model) is not None:
        raise RuntimeError(f"Parallelism is already applied to the {name}.")
    # diffusers splits the sequence only through processors of its attention dispatcher; another processor
    # (e.g. SLA's sparse attention) would silently attend over its rank's slice alone
    foreign = sorted({type(m.processor).__name__ for m in model.modules()
                      if getattr(m, "processor", None) is not None
                      and not processor_supports_context_parallel(m.processor)})
    if foreign:
        raise ValueError(f"The {name}'s attention processor(s) {foreign} do not support diffusers' context "
                         "parallelism (each rank would attend over its own slice of the sequence only).")
    heads = model.config.num_attention_heads
    if heads % ulysses_degree and not cp_kwargs.get("ulysses_anything"):
        divisors = [d for d in range(1, heads + 1) if heads % d == 0]
        raise ValueError(
            f"`ulysses_degree`={ulysses_degree} must divide the {name}'s {heads} attention heads "
            f"(each rank attends over heads/ulysses_degree heads); valid degrees: {divisors}."
        )
