"""The Wan 2.2 pipelines, all on one denoising loop (`pipeline_utils.Wan22BasePipeline.denoise`)."""

import diffusers

from ..core.names import PACKAGE
from .auto import build_demo_pipeline, load_pipeline
from .pipeline_output import Wan22PipelineOutput
from .pipeline_utils import Wan22BasePipeline
from .pipeline_wan22 import Wan22Pipeline, Wan22VideoPipeline
from .pipeline_wan22_animate import Wan22AnimatePipeline, Wan22AnimatePipelineOutput
from .pipeline_wan22_i2v import Wan22ImageToVideoPipeline
from .pipeline_wan22_s2v import Wan22SpeechToVideoPipeline, Wan22SpeechToVideoPipelineOutput

PIPELINES = (Wan22Pipeline, Wan22ImageToVideoPipeline, Wan22SpeechToVideoPipeline, Wan22AnimatePipeline)

# `DiffusionPipeline.from_pretrained(dir)` looks the class of model_index.json up as `getattr(diffusers, name)`, and
# `save_pretrained` records components by their class's module: make both find our pipelines (see models/__init__).
for _cls in PIPELINES:
    _cls.__module__ = PACKAGE
    setattr(diffusers, _cls.__name__, _cls)
    setattr(diffusers.pipelines, _cls.__name__, _cls)  # where diffusers' tools look pipeline classes up by name

__all__ = ["PIPELINES", "Wan22AnimatePipeline", "Wan22AnimatePipelineOutput", "Wan22BasePipeline", "Wan22ImageToVideoPipeline", "Wan22Pipeline", "Wan22PipelineOutput",
           "Wan22SpeechToVideoPipeline", "Wan22SpeechToVideoPipelineOutput", "Wan22VideoPipeline", "build_demo_pipeline",
           "load_pipeline"]
