"""What the page shows before a run: the timestep schedule with each step's expert (computed by the real scheduler
code, as the pipeline will), and the memory planner's prediction per memory mode."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

from ..core.memory_planner import GB, MemoryEstimate, ModelSpec, best_mode, estimate_all
from ..core.model_specs import folder_spec, variant_spec
from ..core.names import RCM_SAMPLERS
from ..core.variants import boundary_timestep
from ..schedulers.experts import schedule_steps
from ..schedulers.official import official_scheduler
from ..schedulers.scheduling_rcm import RCMScheduler
from .tasks import TaskTab, is_tiny

SOLVER_CLASSES = {"unipc": UniPCMultistepScheduler, "dpm++": DPMSolverMultistepScheduler}
NUM_TRAIN_TIMESTEPS = 1000


def scheduler_for(config, solver: str | None, shift: float | None):
    """``--sample_solver`` / ``--sample_shift`` on a scheduler config (``None``: keep the config's shift; no solver:
    UniPC, the official one). ``sde`` / ``ode``: the rCM sampler of TurboWan2.2 experts (no shift)."""
    if solver in RCM_SAMPLERS:
        return RCMScheduler.from_config(config, sampler=solver)
    return SOLVER_CLASSES[solver or "unipc"].from_config(config, **({} if shift is None else
                                                                    {"flow_shift": float(shift)}))


@dataclass(frozen=True)
class Schedule:
    """The timesteps of a run, the expert of each step and the boundary between the experts (``None``: dense)."""

    timesteps: list[float]
    experts: list[str]
    boundary: float | None


def step_schedule(tab: TaskTab, steps: int, shift: float, solver: str = "unipc",
                  expert_steps: tuple[int, int] | None = None) -> Schedule:
    """The schedule the pipeline will run (`schedule_steps`, as `plan_steps` runs it): the official grid of
    ``solver`` shifted by ``shift`` (or the grid split at the boundary into ``expert_steps``) and each step's
    expert. A Turbo tab draws the rCM grid (``shift`` and ``expert_steps`` do not apply)."""
    boundary = boundary_timestep(tab.defaults.boundary_ratio, NUM_TRAIN_TIMESTEPS)
    if tab.is_turbo:
        solver, shift, expert_steps = (solver if solver in RCM_SAMPLERS else "sde"), None, None
    scheduler = scheduler_for(official_scheduler(tab.variant).config, solver, shift)
    timesteps, experts = schedule_steps(scheduler, steps, boundary, expert_steps if boundary is not None else None,
                                        NUM_TRAIN_TIMESTEPS)
    return Schedule([float(t) for t in timesteps.tolist()], experts, boundary)


# ---------------------------------------------------------------------------------------------- memory plan
@dataclass(frozen=True)
class MemoryPlan:
    """The planner's peaks per memory mode for one request, and the fastest mode within the budget."""

    label: str
    estimates: list[MemoryEstimate]
    best: MemoryEstimate | None
    budget_gb: float


def planner_spec(tab: TaskTab, model: str) -> tuple[ModelSpec, str] | None:
    """Sizes the planner uses for ``tab`` and where they come from: the model folder's config and weight files (as
    `wan22 generate` checks a run), else the real model of the task (``tiny`` and TurboWan2.2 `.pth` folders plan
    for the real model: what a GPU run needs). ``None`` when neither is known."""
    if not is_tiny(model):
        spec = folder_spec(model, tab.variant)
        if spec is not None:
            return spec, f"{Path(model).name} (its config and weight files)"
    spec = variant_spec(tab.variant)
    return None if spec is None else (spec, f"the real {tab.variant}")


def memory_plan(spec: ModelSpec, label: str, width: int, height: int, frames: int, dtype: str,
                precision: str | None, budget_gb: float) -> MemoryPlan:
    """`estimate_all` and `best_mode` for a request (``precision``: the experts' policy, ``None`` = ``dtype``)."""
    kwargs = dict(weight_bytes=4 if dtype == "fp32" else 2)
    if precision:
        kwargs["precision"] = precision
    return MemoryPlan(label, estimate_all(spec, height, width, frames, **kwargs),
                      best_mode(spec, height, width, frames, budget_gb * GB, **kwargs), budget_gb)
