"""Which expert runs each step: the official boundary rule, decided once before the denoising loop, and
`expert_steps` (exactly ``n_high`` + ``n_low`` steps) as a split of the official sigma grid at the boundary."""

from __future__ import annotations

import numpy as np
import torch

from ..core.names import HIGH, LOW
from ..core.variants import boundary_timestep  # noqa: F401  (re-exported: the planning API)
from .official import flow_shift, official_unshifted_sigmas, set_official_timesteps, solver_family, unshift_sigmas


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


def schedule_steps(scheduler, num_inference_steps: int, boundary_t: float | None,
                   expert_steps: tuple[int, int] | None = None, num_train_timesteps: int = 1000,
                   device: torch.device | str | None = None) -> tuple[torch.Tensor, list[str]]:
    """Set ``scheduler`` to the official grid (or, with ``expert_steps=(n_high, n_low)``, the grid split at the
    boundary so exactly that many steps run on each expert) and return its timesteps and each step's expert.

    What a pipeline runs (`Wan22BasePipeline.plan_steps`) and what the web page draws before the run.
    """
    sigmas = None
    if expert_steps is not None:
        sigmas = expert_split_unshifted_sigmas(*expert_steps, boundary_t, flow_shift(scheduler),
                                               solver_family(scheduler), num_train_timesteps)
    timesteps = set_official_timesteps(scheduler, num_inference_steps, device=device, unshifted_sigmas=sigmas)
    return timesteps, plan_experts(timesteps, boundary_t)
