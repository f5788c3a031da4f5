"""The official Wan 2.2 image-conditioning size rules and preprocessing (I2V-A14B and TI2V-5B image mode)."""

from __future__ import annotations

import math

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F


def to_pil(image) -> PIL.Image.Image:
    """Accept what diffusers pipelines accept: a PIL image, an ``HxWx3`` array (uint8, or float in [0, 1]) or a
    ``3xHxW`` / ``1x3xHxW`` tensor in [0, 1]; anything else is a clear error."""
    if isinstance(image, PIL.Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim != 3 or t.shape[0] != 3:
            raise ValueError(f"`image` tensor must be [3, H, W] or [1, 3, H, W] in [0, 1]; got {tuple(image.shape)}.")
        image = t.permute(1, 2, 0).float().numpy()
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"`image` array must be [H, W, 3]; got shape {image.shape}.")
        if image.dtype != np.uint8:
            image = (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
        return PIL.Image.fromarray(image)
    raise ValueError(f"`image` must be a PIL image, a numpy array or a torch tensor; got {type(image).__name__}.")


def pil_to_unit_range(image: PIL.Image.Image) -> torch.Tensor:
    """``[3, H, W]`` float in [-1, 1], as the official code feeds the VAE."""
    array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
    return array * 2 - 1


def i2v_a14b_size(width: int, height: int, max_area: int, stride: int = 8, patch: int = 2) -> tuple[int, int]:
    """I2V-A14B output (width, height): the image's aspect ratio within ``max_area`` pixels, multiples of 16.

    Official rule: ``lat_h = round(sqrt(max_area * h/w) // stride // patch * patch)``, likewise ``lat_w`` with
    ``w/h``; the output is the latent size times the stride.
    """
    aspect = height / width
    lat_h = round(np.sqrt(max_area * aspect) // stride // patch * patch)
    lat_w = round(np.sqrt(max_area / aspect) // stride // patch * patch)
    if lat_h < patch or lat_w < patch:
        raise ValueError(f"`max_area`={max_area} is too small for a {width}x{height} image.")
    return lat_w * stride, lat_h * stride


def i2v_a14b_image(image: PIL.Image.Image, width: int, height: int) -> torch.Tensor:
    """The official I2V-A14B first frame: [-1, 1] tensor bicubic-stretched (no crop) to (height, width)."""
    x = pil_to_unit_range(image)[None]
    return F.interpolate(x, size=(height, width), mode="bicubic")[0]


def ti2v_best_output_size(width: int, height: int, max_area: int, multiple: int = 32) -> tuple[int, int]:
    """TI2V-5B output (width, height): multiples of ``multiple`` within ``max_area``, aspect closest to the image's.

    Two candidates — fit the width first, or the height first — and the one whose aspect ratio is closer wins.
    """
    ratio = width / height
    ow = math.sqrt(max_area * ratio)
    oh = max_area / ow
    w1 = int(ow // multiple * multiple)
    h1 = int(max_area / w1 // multiple * multiple)
    h2 = int(oh // multiple * multiple)
    w2 = int(max_area / h2 // multiple * multiple)
    if min(w1, h1, w2, h2) <= 0:
        raise ValueError(f"`max_area`={max_area} is too small for a {width}x{height} image (multiples of {multiple}).")

    def distance(w, h):
        return max(ratio / (w / h), (w / h) / ratio)

    return (w1, h1) if distance(w1, h1) < distance(w2, h2) else (w2, h2)


def ti2v_image(image: PIL.Image.Image, width: int, height: int) -> torch.Tensor:
    """The official TI2V first frame: LANCZOS cover-resize, center crop to (width, height), [-1, 1] tensor."""
    scale = max(width / image.width, height / image.height)
    resized = image.resize((round(image.width * scale), round(image.height * scale)), PIL.Image.LANCZOS)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return pil_to_unit_range(resized.crop((left, top, left + width, top + height)))
