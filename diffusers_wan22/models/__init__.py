from .transformer_wan_moe import WanMoETransformer3DModel
from .transformer_wan_s2v import WanS2VTransformer3DModel

__all__ = ["WanMoETransformer3DModel", "WanS2VTransformer3DModel"]
