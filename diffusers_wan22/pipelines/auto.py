"""One entry point for "a Wan 2.2 pipeline from whatever the user has": the built-in tiny model, a saved folder or
an official checkpoint folder (used by the command line and the examples)."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

from ..core.folders import turbo_folder_kinds
from ..core.names import MODEL_INDEX
from ..hooks.lazy_experts import CallableExpertSource
from ..loaders.tiny import build_tiny_components
from .pipeline_utils import Wan22BasePipeline
from .pipeline_wan22 import Wan22Pipeline
from .pipeline_wan22_i2v import Wan22ImageToVideoPipeline

__all__ = ["build_demo_pipeline", "load_pipeline"]


def build_demo_pipeline(variant: str = "t2v-A14B", seed: int = 0) -> Wan22Pipeline:
    """The README's random-weight demo pipeline (a real `Wan22Pipeline`, tiny and random)."""
    return Wan22Pipeline(**build_tiny_components(variant, seed=seed))


def load_pipeline(model: str | os.PathLike, torch_dtype: torch.dtype | None = None,
                  pipeline_cls: type[Wan22BasePipeline] = Wan22Pipeline, **kwargs) -> Wan22BasePipeline:
    """A Wan 2.2 pipeline from any source a user hands us.

    * ``"tiny"`` or ``"tiny:<variant>"``: the built-in random-weight demo components (docs, CI, smoke tests); its
      ``lazy_source`` keeps a copy of each expert in memory (it has no files), so every memory mode runs on it;
    * a folder with ``model_index.json``: ``pipeline_cls.from_pretrained`` (our saved folders, and the stock
      ``Wan-AI/Wan2.2-*-Diffusers`` layout written by ``wan22 convert --layout diffusers``);
    * an official checkpoint folder: ``pipeline_cls.from_official``;
    * a TurboDiffusion TurboWan2.2-I2V-A14B folder: `Wan22ImageToVideoPipeline.from_turbo` (``kwargs``:
      ``quantized``, ``components``, ``sla_topk``).

    ``kwargs`` go to the loader (e.g. ``lazy_experts=True``).
    """
    text = str(model)
    if text == "tiny" or text.startswith("tiny:"):
        pipe = pipeline_cls(**build_tiny_components(text.partition(":")[2] or "t2v-A14B"))
        pipe.lazy_source = tiny_expert_sources(pipe)
        return pipe
    path = Path(text)
    if not path.is_dir():
        raise FileNotFoundError(f"Model {text!r} is not a folder (download the checkpoint first) nor 'tiny'.")
    if turbo_folder_kinds(path):
        if not issubclass(pipeline_cls, Wan22ImageToVideoPipeline):
            raise ValueError(f"{text} holds TurboWan2.2-I2V-A14B (image-to-video) experts; load it with "
                             "Wan22ImageToVideoPipeline.")
        return pipeline_cls.from_turbo(path, torch_dtype=torch_dtype, **kwargs)
    if (path / MODEL_INDEX).exists():
        return pipeline_cls.from_pretrained(path, dtype=torch_dtype, **kwargs)  # `torch_dtype=` is deprecated
    return pipeline_cls.from_official(path, torch_dtype=torch_dtype, **kwargs)


def tiny_expert_sources(pipe: Wan22BasePipeline) -> dict | None:
    """Lazy-expert sources of a tiny in-memory pipeline: a copy of each expert as built (there is no file to re-read
    it from), so ``enable_memory_mode("lazy_experts")`` works on the demo model as on a real checkpoint."""
    if not pipe.is_moe:
        return None
    return {name: CallableExpertSource(lambda kept=copy.deepcopy(pipe.transformer.get_expert(name)): kept)
            for name in pipe.transformer.loaded_experts}
