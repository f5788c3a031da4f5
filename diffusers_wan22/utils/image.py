"""The official Wan 2.2 image-conditioning size rules and preprocessing (I2V-A14B and TI2V-5B image mode)."""

from __future__ import annotations

import imageio.v2 as imageio
import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

# The size rules are plain arithmetic (the command line checks them before torch is imported); re-exported here.
from ..core.image_sizes import i2v_a14b_size, s2v_size, ti2v_best_output_size  # noqa: F401


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


def i2v_a14b_image(image: PIL.Image.Image, width: int, height: int) -> torch.Tensor:
    """The official I2V-A14B first frame: [-1, 1] tensor bicubic-stretched (no crop) to (height, width)."""
    x = pil_to_unit_range(image)[None]
    return F.interpolate(x, size=(height, width), mode="bicubic")[0]


def ti2v_image(image: PIL.Image.Image, width: int, height: int) -> torch.Tensor:
    """The official TI2V first frame: LANCZOS cover-resize, center crop to (width, height), [-1, 1] tensor."""
    scale = max(width / image.width, height / image.height)
    resized = image.resize((round(image.width * scale), round(image.height * scale)), PIL.Image.LANCZOS)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return pil_to_unit_range(resized.crop((left, top, left + width, top + height)))


def _short_side_resize(height: int, width: int, short: int) -> tuple[int, int]:
    """(height, width) with the shorter side scaled to ``short`` and the longer truncated (torchvision's rule)."""
    return (int(short * height / width), short) if width <= height else (short, int(short * width / height))


def _center_crop(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Center crop of the last two dims to ``height x width``, zero-padded where the input is smaller
    (torchvision's `CenterCrop` rounding)."""
    pad_h, pad_w = max(height - frames.shape[-2], 0), max(width - frames.shape[-1], 0)
    if pad_h or pad_w:
        frames = F.pad(frames, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    top = int(round((frames.shape[-2] - height) / 2.0))
    left = int(round((frames.shape[-1] - width) / 2.0))
    return frames[..., top:top + height, left:left + width]


def s2v_image(image: PIL.Image.Image, width: int, height: int) -> torch.Tensor:
    """``[3, H, W]`` in [-1, 1]: shorter side resized (bilinear) to ``min(height, width)``, then center-cropped
    (black where the crop is larger than the image), as the official S2V preprocessing does."""
    h, w = _short_side_resize(image.height, image.width, min(height, width))
    pixels = np.asarray(image.convert("RGB").resize((w, h), PIL.Image.BILINEAR), dtype=np.uint8).copy()
    return _center_crop(torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0, height, width) * 2 - 1


def _read_video_frames(video, count: int, fps: int) -> np.ndarray:
    """Up to ``count`` frames ``[N, H, W, 3]`` uint8 from the start of a video file sampled at ``fps`` (or from a
    list/array of frames, taken as already at ``fps``)."""
    if isinstance(video, (str, bytes)) or hasattr(video, "__fspath__"):
        reader = imageio.get_reader(str(video), "ffmpeg")
        try:
            step = max(1, round(float(reader.get_meta_data().get("fps", fps)) / fps))
            frames = [f for i, f in enumerate(reader) if i % step == 0 and i // step < count]
        finally:
            reader.close()
    else:
        frames = [np.asarray(to_pil(f)) for f in list(video)[:count]]
    if not frames:
        raise ValueError("`pose_video` has no frames.")
    return np.stack(frames[:count])


def s2v_pose_frames(video, count: int, width: int, height: int, fps: int) -> torch.Tensor:
    """``[3, count, H, W]`` pose frames in [-1, 1]: shorter side resized (antialiased bilinear) to
    ``min(height, width)``, center-cropped, and padded at the end with -1 frames (no pose) up to ``count``."""
    frames = torch.from_numpy(_read_video_frames(video, count, fps)).permute(0, 3, 1, 2).float() / 255.0 * 2 - 1
    size = _short_side_resize(frames.shape[-2], frames.shape[-1], min(height, width))
    frames = F.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=True)
    frames = _center_crop(frames, height, width)  # official: pads with 0 (mid-grey) after normalising to [-1, 1]
    missing = count - frames.shape[0]
    if missing > 0:
        frames = torch.cat([frames, -torch.ones(missing, 3, height, width)])
    return frames.permute(1, 0, 2, 3)
