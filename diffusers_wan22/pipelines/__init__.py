from .pipeline_output import Wan22PipelineOutput
from .pipeline_wan22 import Wan22Pipeline

__all__ = ["Wan22Pipeline", "Wan22PipelineOutput"]
