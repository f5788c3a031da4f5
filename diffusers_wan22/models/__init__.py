from .transformer_wan_moe import WanMoETransformer3DModel

__all__ = ["WanMoETransformer3DModel"]
