from .pipeline_output import Wan22PipelineOutput
from .pipeline_wan22 import Wan22Pipeline
from .pipeline_wan22_i2v import Wan22ImageToVideoPipeline
from .pipeline_wan22_s2v import Wan22SpeechToVideoPipeline, Wan22SpeechToVideoPipelineOutput

__all__ = ["Wan22ImageToVideoPipeline", "Wan22Pipeline", "Wan22PipelineOutput", "Wan22SpeechToVideoPipeline",
           "Wan22SpeechToVideoPipelineOutput"]
