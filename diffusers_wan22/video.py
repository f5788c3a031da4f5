"""Writing videos without ever leaving a half-written file at the destination."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


def save_video(frames, path: str | os.PathLike, fps: int) -> Path:
    """Encode ``frames`` (one video: ``[F, H, W, 3]`` floats in [0, 1], or a list of PIL images) as an mp4.

    Uses diffusers' `export_to_video` (imageio + ffmpeg) on a temporary file next to ``path`` and renames it into
    place, so an interrupted run leaves either the old file or nothing.
    """
    from diffusers.utils import export_to_video

    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"Output path must end in .mp4; got {str(path)!r}.")
    if isinstance(frames, np.ndarray) and frames.ndim != 4:
        raise ValueError(f"Expected one video [frames, height, width, 3]; got an array of shape {frames.shape}.")
    if fps <= 0:
        raise ValueError(f"`fps` must be positive; got {fps}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".mp4", dir=path.parent)
    os.close(fd)
    try:
        export_to_video(list(frames), tmp, fps=fps)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
