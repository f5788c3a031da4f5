"""diffusers-wan22: the Wan 2.2 video models (T2V-A14B, I2V-A14B, TI2V-5B, S2V-14B) inside HuggingFace diffusers.

Importing this package registers its pipelines with diffusers, so ``DiffusionPipeline.from_pretrained(dir)`` works
on folders saved by our pipelines.
"""

# Loader base classes must be module-level names of the package that model_index.json points at.
from diffusers import DiffusionPipeline, ModelMixin, SchedulerMixin  # noqa: F401

from ._registry import register
from .configs import DEFAULT_NEGATIVE_PROMPT, VARIANTS, get_variant
from .models import WanMoETransformer3DModel, WanS2VTransformer3DModel
from .pipelines import (
    Wan22ImageToVideoPipeline,
    Wan22Pipeline,
    Wan22PipelineOutput,
    Wan22SpeechToVideoPipeline,
    Wan22SpeechToVideoPipelineOutput,
)
from .scheduling import plan_experts, set_official_timesteps

__version__ = "0.1.0"

register(WanMoETransformer3DModel, WanS2VTransformer3DModel,
         pipelines=(Wan22Pipeline, Wan22ImageToVideoPipeline, Wan22SpeechToVideoPipeline))

__all__ = [
    "DEFAULT_NEGATIVE_PROMPT",
    "VARIANTS",
    "Wan22ImageToVideoPipeline",
    "Wan22Pipeline",
    "Wan22PipelineOutput",
    "Wan22SpeechToVideoPipeline",
    "Wan22SpeechToVideoPipelineOutput",
    "WanMoETransformer3DModel",
    "WanS2VTransformer3DModel",
    "get_variant",
    "plan_experts",
    "set_official_timesteps",
]
