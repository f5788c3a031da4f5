"""The official Wan 2.2 output-size rules of the image-conditioned tasks: plain arithmetic, no torch, so the command
line can check a ``--size`` area and print the resolution before anything heavy is imported (`utils/image.py`
re-exports them next to the image preprocessing)."""

from __future__ import annotations

import math


def i2v_a14b_size(width: int, height: int, max_area: int, stride: int = 8, patch: int = 2) -> tuple[int, int]:
    """I2V-A14B output (width, height): the image's aspect ratio within ``max_area`` pixels, multiples of 16.

    Official rule: ``lat_h = round(sqrt(max_area * h/w) // stride // patch * patch)``, likewise ``lat_w`` with
    ``w/h``; the output is the latent size times the stride.
    """
    aspect = height / width
    lat_h = round(math.sqrt(max_area * aspect) // stride // patch * patch)
    lat_w = round(math.sqrt(max_area / aspect) // stride // patch * patch)
    if lat_h < patch or lat_w < patch:
        raise ValueError(f"`max_area`={max_area} is too small for a {width}x{height} image.")
    return lat_w * stride, lat_h * stride


def ti2v_best_output_size(width: int, height: int, max_area: int, multiple: int = 32) -> tuple[int, int]:
    """TI2V-5B output (width, height): multiples of ``multiple`` within ``max_area``, aspect closest to the image's.

    Two candidates — fit the width first, or the height first — and the one whose aspect ratio is closer wins.
    """
    ratio = width / height
    ow = math.sqrt(max_area * ratio)
    oh = max_area / ow
    w1 = int(ow // multiple * multiple)
    h2 = int(oh // multiple * multiple)
    h1 = int(max_area / w1 // multiple * multiple) if w1 > 0 else 0
    w2 = int(max_area / h2 // multiple * multiple) if h2 > 0 else 0
    if min(w1, h1, w2, h2) <= 0:
        raise ValueError(f"`max_area`={max_area} is too small for a {width}x{height} image (multiples of {multiple}).")

    def distance(w, h):
        return max(ratio / (w / h), (w / h) / ratio)

    return (w1, h1) if distance(w1, h1) < distance(w2, h2) else (w2, h2)


def s2v_size(width: int, height: int, max_area: int, divisor: int = 64) -> tuple[int, int]:
    """(width, height) for S2V: the reference image scaled down until its size, padded up to multiples of
    ``divisor``, fits in ``max_area`` pixels (the official search over 100 scales from the area-filling one down)."""
    if max_area < divisor * divisor:
        raise ValueError(f"`max_area` must be at least {divisor}x{divisor}={divisor * divisor} pixels; got {max_area}.")
    if height * width <= max_area:
        lo, hi = 0.1, 1.0
    else:
        # Smallest scale worth trying: the one at which even maximal padding (divisor - 1 per side) fits.
        d = divisor - 1
        a, b, c = height * width, d * (height + width), d * d - max_area
        lo, hi = (-b + math.sqrt(b * b - 2 * a * c)) / (2 * a), math.sqrt(max_area / (height * width))
    for i in range(100):
        scale = hi - (hi - lo) * i / 100
        h = math.ceil(int(height * scale) / divisor) * divisor
        w = math.ceil(int(width * scale) / divisor) * divisor
        if h * w <= max_area:
            return w, h
    aspect = width / height
    w = int((max_area * aspect) ** 0.5 // divisor * divisor)
    h = int((max_area / aspect) ** 0.5 // divisor * divisor)
    if w >= width or h >= height:
        w, h = int(width // divisor * divisor), int(height // divisor * divisor)
    return w, h


# ------------------------------------------------------------------------------------------------ TurboDiffusion
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
    rounded half to even (TurboDiffusion's ``--adaptive_resolution``; its float64 ``np.sqrt`` is IEEE's
    correctly rounded square root, as ``math.sqrt`` is)."""
    if max_area <= 0 or image_width <= 0 or image_height <= 0:
        raise ValueError(f"`max_area` and the image size must be positive; got max_area={max_area}, image "
                         f"{image_width}x{image_height}.")
    ratio = image_height / image_width
    width = round(math.sqrt(max_area / ratio) / TURBO_SIZE_STRIDE) * TURBO_SIZE_STRIDE
    height = round(math.sqrt(max_area * ratio) / TURBO_SIZE_STRIDE) * TURBO_SIZE_STRIDE
    if width == 0 or height == 0:
        raise ValueError(f"`max_area`={max_area} is too small for a {image_width}x{image_height} image.")
    return width, height
