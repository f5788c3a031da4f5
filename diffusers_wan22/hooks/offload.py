"""accelerate's model-offload hook, made safe for lazy experts: offloading a released (``meta``) expert is a no-op.

The pipelines chain these hooks ``text_encoder -> high_noise_expert -> low_noise_expert -> vae`` (see
`pipelines/memory.py`), so running one model offloads the previous one and at most one expert is on the accelerator.
"""

from __future__ import annotations

import torch
from accelerate.hooks import CpuOffload, UserCpuOffloadHook, add_hook_to_module

from .lazy_experts import is_materialised

__all__ = ["ExpertCpuOffload", "offload_with_hook"]


class ExpertCpuOffload(CpuOffload):
    """accelerate's `CpuOffload`, except that offloading a released (``meta``) expert is a no-op."""

    def init_hook(self, module):
        return module.to("cpu") if is_materialised(module) else module


def offload_with_hook(model: torch.nn.Module, device, prev_module_hook: UserCpuOffloadHook | None = None):
    """`accelerate.cpu_offload_with_hook`, with `ExpertCpuOffload` so lazy (``meta``) experts are left alone."""
    hook = ExpertCpuOffload(execution_device=device, prev_module_hook=prev_module_hook)
    add_hook_to_module(model, hook, append=True)
    return UserCpuOffloadHook(model, hook)
