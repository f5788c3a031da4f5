"""Official Wan 2.2 timestep grids on top of diffusers' flow-matching schedulers, and the expert plan.

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

logger = logging.getLogger(__name__)

HIGH = "high"
LOW = "low"


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


def expert_split_unshifted_sigmas(
    n_high: int, n_low: int, boundary_t: float, shift: float, solver: str = "unipc", num_train_timesteps: int = 1000
) -> np.ndarray:
    """Unshifted sigmas that give exactly ``n_high`` high-noise and ``n_low`` low-noise steps.

    The official grid is uniform in unshifted sigma ``u``; here each stage gets its own uniform grid, and the stages
    meet at the boundary: with ``s_b = boundary_t / num_train_timesteps`` and ``u_b = unshift(s_b)``,

    * high stage: ``n_high`` points of ``linspace(u_max, u_b, n_high + 1)`` without the last, all ``>= u_b``
      (so every timestep is ``>= boundary_t`` and picks the high-noise expert), ``u_max`` being the solver's
      official start (0.999 for unipc, 1 for dpm++);
    * low stage: ``n_low`` points of ``linspace(u_b, 0, n_low + 1)`` without the last; its first point is the
      boundary itself, nudged down by a relative 1e-6 so that its truncated timestep is ``boundary_t - 1`` and the
      official rule ``t >= boundary`` picks the low-noise expert.

    The last high-noise step therefore lands the latents exactly on the boundary noise level, where the
    low-noise expert takes over; the scheduler appends the final sigma 0.
    """
    if n_high < 0 or n_low < 0 or n_high + n_low == 0:
        raise ValueError(f"`expert_steps` must be two non-negative step counts, not both 0; got ({n_high}, {n_low}).")
    u_max = official_unshifted_sigmas(1, solver)[0]
    u_b = float(unshift_sigmas(np.array(boundary_t / num_train_timesteps), shift))
    if not 0.0 < u_b < u_max:
        raise ValueError(
            f"The boundary timestep {boundary_t:g} lies outside the sampled range; `expert_steps` needs "
            f"0 < boundary < {u_max * num_train_timesteps:g}."
        )
    high = np.linspace(u_max, u_b, n_high + 1)[:-1]
    low = np.linspace(u_b, 0.0, n_low + 1)[:-1]
    if n_low:
        low[0] = u_b * (1 - 1e-6)
    return np.concatenate([high, low])


def _flow_shift(scheduler) -> float:
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
    Any other scheduler keeps its own ``set_timesteps`` (with a warning).
    """
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
        sigmas = shift_sigmas(unshifted_sigmas, _flow_shift(scheduler))
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


def boundary_timestep(boundary_ratio: float | None, num_train_timesteps: int) -> float | None:
    """Timestep at which the MoE switches experts (``None`` for dense models)."""
    return None if boundary_ratio is None else boundary_ratio * num_train_timesteps


def plan_experts(timesteps: torch.Tensor | list[float], boundary_t: float | None) -> list[str]:
    """Which expert runs at each step: ``"high"`` while ``t >= boundary_t``, else ``"low"`` (the official rule).

    Decided once before the denoising loop, from one host copy of the timesteps, so the loop never syncs
    with the accelerator to choose an expert. Dense models (``boundary_t is None``) always get ``"high"``,
    meaning "the one transformer".
    """
    values = timesteps.tolist() if isinstance(timesteps, torch.Tensor) else list(timesteps)
    if boundary_t is None:
        return [HIGH] * len(values)
    return [HIGH if float(t) >= boundary_t else LOW for t in values]
