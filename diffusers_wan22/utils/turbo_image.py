"""TurboDiffusion's I2V input image rules: output sizes and the uint8 resize.

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

import math

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

# TurboDiffusion's resolution table (rcm/datasets/utils.py): resolution -> aspect key (width:height) -> (w, h).
TURBO_RESOLUTIONS: dict[str, dict[str, tuple[int, int]]] = {
    "720p": {"1:1": (960, 960), "4:3": (960, 720), "3:4": (720, 960), "16:9": (1280, 720), "9:16": (720, 1280)},
    "480p": {"1:1": (640, 640), "4:3": (640, 480), "3:4": (480, 640), "16:9": (832, 480), "9:16": (480, 832)},
    "720": {"1:1": (960, 960), "4:3": (960, 704), "3:4": (704, 960), "16:9": (1280, 704), "9:16": (704, 1280)},
    "512": {"1:1": (512, 512), "4:3": (640, 512), "3:4": (512, 640), "16:9": (640, 384), "9:16": (384, 640)},
    "480": {"1:1": (480, 480), "4:3": (640, 480), "3:4": (480, 640), "16:9": (768, 432), "9:16": (432, 768)},
}
TURBO_SIZE_STRIDE = 16  # VAE stride 8 x patch 2: TurboDiffusion's adaptive sizes are multiples of 16


def closest_aspect_ratio(width: int, height: int, resolution: str = "720p") -> str:
    """The aspect key of ``resolution``'s table closest (in log ratio) to a ``width x height`` image."""
    table = _table(resolution)
    return min(table, key=lambda k: abs(math.log((table[k][0] / table[k][1]) / (width / height))))


def _table(resolution: str) -> dict[str, tuple[int, int]]:
    if resolution not in TURBO_RESOLUTIONS:
        raise ValueError(f"`resolution` must be one of {sorted(TURBO_RESOLUTIONS)}, got {resolution!r}.")
    return TURBO_RESOLUTIONS[resolution]


def turbo_fixed_size(resolution: str = "720p", aspect_ratio: str = "16:9") -> tuple[int, int]:
    """``(width, height)`` of TurboDiffusion's table entry (the image is stretched to it)."""
    table = _table(resolution)
    if aspect_ratio not in table:
        raise ValueError(f"`aspect_ratio` must be one of {list(table)} for resolution {resolution!r}, got "
                         f"{aspect_ratio!r}.")
    return table[aspect_ratio]


def turbo_adaptive_size(image_width: int, image_height: int, max_area: int) -> tuple[int, int]:
    """``(width, height)`` keeping ``max_area`` pixels and the image's aspect ratio, each side a multiple of 16
    rounded half to even (TurboDiffusion's ``--adaptive_resolution``)."""
    if max_area <= 0 or image_width <= 0 or image_height <= 0:
        raise ValueError(f"`max_area` and the image size must be positive; got max_area={max_area}, image "
                         f"{image_width}x{image_height}.")
    ratio = image_height / image_width
    width = round(float(np.sqrt(max_area / ratio)) / TURBO_SIZE_STRIDE) * TURBO_SIZE_STRIDE
    height = round(float(np.sqrt(max_area * ratio)) / TURBO_SIZE_STRIDE) * TURBO_SIZE_STRIDE
    if width == 0 or height == 0:
        raise ValueError(f"`max_area`={max_area} is too small for a {image_width}x{image_height} image.")
    return width, height


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
