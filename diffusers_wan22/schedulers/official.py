"""Official Wan 2.2 timestep grids on top of diffusers' flow-matching schedulers, and the official default scheduler.

The official sampler does not use diffusers' default sigma grids:

* ``unipc`` (default): unshifted sigmas ``linspace(float32(0.999), 0, N + 1)[:-1]``, then the shift
  ``s' = shift * s / (1 + (shift - 1) * s)``; timesteps are ``int64(s' * 1000)`` (truncation).
* ``dpm++``: unshifted sigmas ``linspace(1, 0, N + 1)[:N]``, same shift, same truncation (first timestep 1000).

``UniPCMultistepScheduler`` and ``FlowMatchEulerDiscreteScheduler`` accept custom unshifted sigmas and apply their own
shift, which reproduces the official grid bit for bit. ``DPMSolverMultistepScheduler`` has no ``sigmas`` argument, so
its grid is set after ``set_timesteps`` (same attributes its ``step`` reads).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from ..core.variants import get_variant
from .scheduling_rcm import RCMScheduler

logger = logging.getLogger(__name__)


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """The flow-matching time shift used by Wan: larger ``shift`` spends more steps at high noise."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def official_unshifted_sigmas(num_inference_steps: int, solver: str) -> np.ndarray:
    """The official unshifted sigma grid of ``solver`` ("unipc" or "dpm++"), ``num_inference_steps`` values."""
    if solver == "unipc":
        # float32(0.999) matters: the Python literal 0.999 moves a few truncated timesteps by one.
        return np.linspace(np.float32(0.999).item(), 0.0, num_inference_steps + 1)[:-1]
    if solver == "dpm++":
        return np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1]
    raise ValueError(f"Unknown solver {solver!r}; expected 'unipc' or 'dpm++'.")


def unshift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """Inverse of `shift_sigmas`."""
    return sigmas / (shift - (shift - 1) * sigmas)


def flow_shift(scheduler) -> float:
    """The shift of a flow-matching scheduler's config (``flow_shift``, or ``shift``; 1 when unset)."""
    cfg = scheduler.config
    return float(cfg.get("flow_shift", None) or cfg.get("shift", 1.0))


def _require_flow_config(scheduler) -> None:
    cfg = scheduler.config
    if not cfg.get("use_flow_sigmas", False) or cfg.get("prediction_type") != "flow_prediction":
        raise ValueError(
            f"{type(scheduler).__name__} must be a flow-matching scheduler for Wan 2.2 "
            f"(use_flow_sigmas=True, prediction_type='flow_prediction'); got use_flow_sigmas="
            f"{cfg.get('use_flow_sigmas')}, prediction_type={cfg.get('prediction_type')!r}."
        )


def solver_family(scheduler) -> str:
    """The official grid a scheduler gets: ``"dpm++"`` for DPM-Solver, ``"unipc"`` for UniPC and Euler."""
    return "dpm++" if isinstance(scheduler, DPMSolverMultistepScheduler) else "unipc"


def set_official_timesteps(
    scheduler,
    num_inference_steps: int,
    device: torch.device | str | None = None,
    unshifted_sigmas: np.ndarray | None = None,
) -> torch.Tensor:
    """Set ``scheduler`` to the official Wan 2.2 grid for its solver family and return its timesteps.

    UniPC and Euler get the ``unipc`` grid, DPM-Solver(++) gets the ``dpm++`` grid, each shifted by the scheduler's
    own ``flow_shift`` / ``shift``. ``unshifted_sigmas`` replaces the official grid (e.g. an expert split).
    Any other scheduler keeps its own ``set_timesteps`` (with a warning); `RCMScheduler` (distilled Turbo experts)
    has its own fixed grid, which it keeps without a warning.
    """
    if isinstance(scheduler, RCMScheduler):
        scheduler.set_timesteps(num_inference_steps, device=device)
        return scheduler.timesteps
    if unshifted_sigmas is None:
        unshifted_sigmas = official_unshifted_sigmas(num_inference_steps, solver_family(scheduler))
    if isinstance(scheduler, UniPCMultistepScheduler):
        _require_flow_config(scheduler)
        scheduler.set_timesteps(sigmas=unshifted_sigmas, device=device)
    elif isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        scheduler.set_timesteps(sigmas=unshifted_sigmas, device=device)
    elif isinstance(scheduler, DPMSolverMultistepScheduler):
        _require_flow_config(scheduler)
        scheduler.set_timesteps(len(unshifted_sigmas), device=device)  # resets the solver state
        sigmas = shift_sigmas(unshifted_sigmas, flow_shift(scheduler))
        timesteps = (sigmas * scheduler.config.num_train_timesteps).astype(np.int64)
        # The scheduler keeps sigmas on the CPU on purpose (no device syncs inside `step`).
        scheduler.sigmas = torch.from_numpy(np.append(sigmas, 0.0).astype(np.float32))
        scheduler.timesteps = torch.from_numpy(timesteps).to(device)
    else:
        logger.warning(
            "%s is not one of the schedulers with an official Wan 2.2 grid (UniPC, DPM-Solver++, "
            "FlowMatchEuler); using its own set_timesteps.", type(scheduler).__name__,
        )
        scheduler.set_timesteps(num_inference_steps, device=device)
    return scheduler.timesteps


def official_scheduler(variant: str) -> UniPCMultistepScheduler:
    """The official default sampler of ``variant`` (UniPC, flow matching) with its shift."""
    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
        flow_shift=float(get_variant(variant).sample_shift),
    )
