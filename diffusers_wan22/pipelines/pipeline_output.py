"""The outputs of the Wan 2.2 text- and image-to-video pipelines."""

from __future__ import annotations

from dataclasses import dataclass, field

from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput


@dataclass
class Wan22PipelineOutput(WanPipelineOutput):
    r"""Output of the Wan 2.2 pipelines: diffusers' `.frames`, plus the expert that ran at each step.

    Args:
        frames: the generated videos, as in `diffusers.WanPipelineOutput`.
        experts (`list[str]`): ``"high"`` or ``"low"`` per denoising step (dense models: ``"high"`` throughout,
            meaning "the one transformer").
        timesteps (`list[float]`): the scheduler timestep of each step.
    """

    experts: list[str] = field(default_factory=list)
    timesteps: list[float] = field(default_factory=list)
