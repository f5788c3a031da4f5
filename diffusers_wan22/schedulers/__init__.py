"""Official Wan 2.2 sigma grids on diffusers' flow-matching schedulers, the expert of every step, and the rCM sampler
of TurboDiffusion's distilled experts."""

from ..core.names import PACKAGE
from .scheduling_rcm import RCMScheduler

# Saved pipelines record the scheduler as ["diffusers_wan22", "RCMScheduler"] (see models/__init__.py).
RCMScheduler.__module__ = PACKAGE

__all__ = ["RCMScheduler"]
