"""Wan 2.2 denoisers built from diffusers' Wan blocks: the A14B mixture of experts and the S2V transformer."""

from ..core.names import PACKAGE
from .transformer_wan_moe import WanMoETransformer3DModel
from .transformer_wan_s2v import WanS2VTransformer3DModel
from .transformer_wan_turbo import TurboWanMoETransformer3DModel, TurboWanTransformer3DModel

# `save_pretrained` records a component's library as its class's module. Pinning it to the top-level package makes
# model_index.json say ["diffusers_wan22", "<Class>"], which keeps saved folders loading whatever our file layout
# becomes (diffusers resolves the name in sys.modules; our package resolves the class lazily).
for _cls in (WanMoETransformer3DModel, WanS2VTransformer3DModel, TurboWanMoETransformer3DModel,
             TurboWanTransformer3DModel):
    _cls.__module__ = PACKAGE

__all__ = ["TurboWanMoETransformer3DModel", "TurboWanTransformer3DModel", "WanMoETransformer3DModel",
           "WanS2VTransformer3DModel"]
