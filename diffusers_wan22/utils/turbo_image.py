"""TurboDiffusion's I2V input image preprocessing (its output-size rules are torch-free, in `core/image_sizes.py`, so
the command line checks and prints sizes before torch loads).

* **Fixed size** (TurboDiffusion's default): the ``(width, height)`` of its resolution table for a resolution and
  an aspect-ratio key; the image is *stretched* to it (no crop).
* **Adaptive size** (its ``--adaptive_resolution``): keep the table area ``A``, follow the image's aspect ratio
  ``r = H_img / W_img``: ``w = round(sqrt(A / r) / 16) * 16``, ``h = round(sqrt(A * r) / 16) * 16`` in float64 with
  round-half-to-even (not the official I2V rule, which floors).
* **Resize**: torchvision's antialiased bilinear resize of the **uint8** image, which on x86-64 / arm64 CPUs is
  torch's native uint8 kernel: ``F.interpolate(u8, mode="bilinear", antialias=True)`` on the uint8 tensor (a float
  resize + round differs by 1 in ~16% of the values). The first frame is then ``(u8 * float32(1/255) - 0.5) / 0.5``.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F


def pil_to_uint8(image: PIL.Image.Image) -> torch.Tensor:
    """An RGB PIL image as a ``[3, H, W]`` uint8 tensor."""
    return torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1).contiguous()


def turbo_resize_uint8(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Antialiased bilinear resize of a ``[3, H, W]`` uint8 image to ``(height, width)``, computed on uint8."""
    if image.dtype != torch.uint8 or image.ndim != 3:
        raise ValueError(f"expected a [3, H, W] uint8 image, got {image.dtype} {tuple(image.shape)}.")
    return F.interpolate(image[None], size=(height, width), mode="bilinear", align_corners=False, antialias=True)[0]


def turbo_first_frame(image_uint8: torch.Tensor) -> torch.Tensor:
    """``[3, H, W]`` float32 in [-1, 1] exactly as TurboDiffusion computes it from the resized uint8 image."""
    return (image_uint8.to(torch.float32) * torch.tensor(1 / 255, dtype=torch.float32) - 0.5) / 0.5
