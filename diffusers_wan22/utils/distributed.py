"""Process helpers for multi-process inference: `torchrun` initialisation, rank 0, context-parallel token counts."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["cp_token_count", "init_distributed", "is_main_process", "mesh_device_type"]


def is_main_process() -> bool:
    """True on rank 0 of an initialised process group, and in a plain single process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def init_distributed(backend: str | None = None) -> torch.device:
    """Initialise `torch.distributed` from the `torchrun` environment and return this rank's device.

    ``backend`` defaults to NCCL when CUDA is available (and binds the rank to ``cuda:LOCAL_RANK``), gloo otherwise
    (CPU). Calling it again once the group exists only returns the device.
    """
    use_cuda = torch.cuda.is_available() and backend in (None, "nccl")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend or ("nccl" if use_cuda else "gloo"))
    if use_cuda and dist.get_backend() == "nccl":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def mesh_device_type() -> str:
    """Device type of the context-parallel mesh: ``"cpu"`` under gloo or without an accelerator."""
    if dist.get_backend() == "gloo" or torch.accelerator.device_count() == 0:
        return "cpu"
    return torch.accelerator.current_accelerator().type


def cp_token_count(num_frames: int, height: int, width: int, temporal_stride: int, spatial_stride: int,
                   patch_size: tuple[int, int, int]) -> tuple[int, tuple[int, int, int]]:
    """Transformer sequence length for a call, and its (frames, rows, cols) factors.

    ``F_lat = (num_frames - 1) // temporal_stride + 1``; rows = H / (spatial_stride * patch_h), likewise cols:
    H/16 x W/16 with the Wan 2.1 VAE (A14B), H/32 x W/32 with the Wan 2.2 VAE (TI2V-5B).
    """
    pt, ph, pw = patch_size
    f = ((num_frames - 1) // temporal_stride + 1) // pt
    h, w = height // (spatial_stride * ph), width // (spatial_stride * pw)
    return f * h * w, (f, h, w)
