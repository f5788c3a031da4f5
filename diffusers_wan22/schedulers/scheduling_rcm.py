"""`RCMScheduler`: the few-step sampler of rCM-distilled models (TurboDiffusion's TurboWan2.2), as a diffusers scheduler.

rCM students are sampled on a fixed TrigFlow time grid ``[atan(sigma_max), 1.5, 1.4, 1.0][:steps] + [0]``, mapped
to rectified-flow times ``t = sin(s) / (cos(s) + sin(s))`` (float64). The network predicts a velocity ``v`` at
``t_cur`` and the state (float64, starting at ``x = noise * t_0``) moves to ``t_next`` by

* ODE: ``x <- x - (t_cur - t_next) * v``;
* SDE (default): ``x <- (1 - t_next) * (x - t_cur * v) + t_next * eps`` with fresh ``eps ~ N(0, I)`` drawn as float32
  from the generator after every network call (the last draw is multiplied by ``t_next = 0`` but still drawn, so a
  generator advances exactly as in TurboDiffusion); ``t_next * eps`` is a float32 product, the rest float64.

The network's timestep is ``float32(float64(float32(t)) * 1000)`` (995.02, 933.78, 852.90, 608.98 for 4 steps), so
diffusers-style expert planning with ``boundary_ratio * num_train_timesteps`` (0.9 x 1000 for the I2V experts) picks
the high-noise expert exactly while ``t >= 0.9``, as TurboDiffusion does. Drawing ``eps`` with a CPU generator
reproduces TurboDiffusion's CPU run bit for bit; pass the same generator that drew the initial noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..core.names import RCM_SAMPLERS


@dataclass
class RCMSchedulerOutput(BaseOutput):
    """Output of `RCMScheduler.step`.

    Args:
        prev_sample (`torch.Tensor`): the state at the next time, float64 (keep feeding it back; cast a copy for the
            network).
    """

    prev_sample: torch.Tensor


def rcm_times(num_inference_steps: int, sigma_max: float, mid_times: list[float] | tuple[float, ...]) -> list[float]:
    """Rectified-flow times (float64, ``num_inference_steps + 1`` values ending at 0) of the rCM TrigFlow grid."""
    trig = torch.tensor([math.atan(sigma_max), *list(mid_times)[: num_inference_steps - 1], 0.0], dtype=torch.float64)
    return (torch.sin(trig) / (torch.cos(trig) + torch.sin(trig))).tolist()


class RCMScheduler(SchedulerMixin, ConfigMixin):
    """Sampler of rCM-distilled (TurboDiffusion) Wan models: 1-4 steps, SDE or ODE, float64 state.

    Args:
        sigma_max (`float`, defaults to 200): the starting noise level in EDM sigma units (TrigFlow time
            ``atan(sigma_max)``).
        sampler (`str`, defaults to ``"sde"``): ``"sde"`` (noise re-injected each step, TurboDiffusion's default) or
            ``"ode"`` (deterministic, TurboDiffusion's ``--ode``).
        num_train_timesteps (`int`, defaults to 1000): the network's timestep scale (timestep = 1000 t).
        mid_times (`list[float]`, defaults to ``[1.5, 1.4, 1.0]``): TrigFlow times after the first; their number + 1
            is the largest supported step count.
    """

    order = 1
    _compatibles: list = []

    @register_to_config
    def __init__(self, sigma_max: float = 200.0, sampler: str = "sde", num_train_timesteps: int = 1000,
                 mid_times: list[float] | tuple[float, ...] = (1.5, 1.4, 1.0)) -> None:
        if sampler not in RCM_SAMPLERS:
            raise ValueError(f"`sampler` must be one of {RCM_SAMPLERS}, got {sampler!r}.")
        if not sigma_max > 0:
            raise ValueError(f"`sigma_max` must be > 0, got {sigma_max}.")
        if not all(0.0 < float(s) < math.pi / 2 for s in mid_times):
            raise ValueError(f"`mid_times` must be TrigFlow times in (0, pi/2), got {list(mid_times)}.")
        self.num_inference_steps: int | None = None
        self.timesteps = torch.empty(0)
        self.sigmas = torch.empty(0, dtype=torch.float64)  # rectified-flow times t_0 .. t_N, on the CPU
        self._times: list[float] = []  # the same as python floats: `step` reads them without device syncs
        self._step_index: int | None = None
        self._begin_index: int | None = None

    # ------------------------------------------------------------------------------------------ schedule
    @property
    def max_steps(self) -> int:
        """The largest step count this configuration supports (``len(mid_times) + 1``)."""
        return len(self.config.mid_times) + 1

    def set_timesteps(self, num_inference_steps: int = 4, device: torch.device | str | None = None) -> None:
        """Build the ``num_inference_steps``-step grid (1 .. `max_steps`; TurboDiffusion's default is 4)."""
        if not isinstance(num_inference_steps, int) or not 1 <= num_inference_steps <= self.max_steps:
            raise ValueError(f"`num_inference_steps` must be an integer in [1, {self.max_steps}] for the rCM "
                             f"sampler, got {num_inference_steps!r}.")
        self.num_inference_steps = num_inference_steps
        self._times = rcm_times(num_inference_steps, self.config.sigma_max, self.config.mid_times)
        self.sigmas = torch.tensor(self._times, dtype=torch.float64)
        rf = self.sigmas[:-1]
        # The network gets float32(float64(float32(t)) * 1000): TurboDiffusion's `t.float() * ones * 1000`.
        scaled = rf.float().double() * self.config.num_train_timesteps
        self.timesteps = scaled.float().to(device)
        self._step_index = None
        self._begin_index = None

    @property
    def init_noise_sigma(self) -> float:
        """``t_0``: the initial state is ``noise * t_0`` (see `scale_initial_noise`)."""
        if not self._times:
            raise RuntimeError("Call `set_timesteps` first.")
        return self._times[0]

    def scale_initial_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """The initial float64 state ``noise * t_0`` (TurboDiffusion's ``init_noise.to(float64) * t_steps[0]``)."""
        return noise.to(torch.float64) * self.init_noise_sigma

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """Identity (rCM feeds the state to the network unscaled); kept for the diffusers scheduler interface."""
        return sample

    @property
    def step_index(self) -> int | None:
        """Index of the next step (``None`` before the first `step`)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start `step` at ``begin_index`` without looking the first timestep up."""
        self._begin_index = begin_index

    def index_for_timestep(self, timestep: float | torch.Tensor) -> int:
        """Position of ``timestep`` in the grid (reads it on the host: only used once, at the first step)."""
        value = float(timestep.flatten()[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
        matches = [i for i, t in enumerate(self.timesteps.tolist()) if t == value]
        if not matches:
            raise ValueError(f"Timestep {value} is not in this scheduler's grid {self.timesteps.tolist()}.")
        return matches[0]

    # ------------------------------------------------------------------------------------------ step
    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | list[torch.Generator] | None = None,
             return_dict: bool = True) -> RCMSchedulerOutput | tuple[torch.Tensor]:
        """Move ``sample`` (the float64 state) from this step's time to the next with velocity ``model_output``.

        The SDE sampler draws its float32 noise from ``generator`` (on the generator's device, then moved, as
        diffusers' `randn_tensor` does), once per call, including the last.
        """
        if self.num_inference_steps is None:
            raise RuntimeError("Call `set_timesteps` before `step`.")
        if self._step_index is None:
            self._step_index = self._begin_index if self._begin_index is not None else self.index_for_timestep(timestep)
        if self._step_index >= self.num_inference_steps:
            raise RuntimeError(f"All {self.num_inference_steps} steps were taken; call `set_timesteps` again.")
        t_cur, t_next = self._times[self._step_index], self._times[self._step_index + 1]
        x = sample.to(torch.float64)
        v = model_output.to(device=x.device, dtype=torch.float64)
        if self.config.sampler == "ode":
            prev = x - (t_cur - t_next) * v
        else:
            eps = randn_tensor(x.shape, generator=generator, device=x.device, dtype=torch.float32)
            # float32 product, as TurboDiffusion's 0-dim float64 tensor times a float32 tensor promotes to float32
            prev = (1.0 - t_next) * (x - t_cur * v) + eps * t_next
        self._step_index += 1
        if not return_dict:
            return (prev,)
        return RCMSchedulerOutput(prev_sample=prev)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
