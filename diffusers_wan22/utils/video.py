"""Writing videos without ever leaving a half-written file at the destination."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from diffusers.utils import export_to_video

from .audio import run_ffmpeg


def _temp_sibling(path: Path) -> str:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".mp4", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the video gets the permissions a plain open() would give
    return tmp


def mux_audio(video_path: str, samples: np.ndarray, sampling_rate: int, duration: float, out_path: str) -> None:
    """Copy the video stream of ``video_path`` and add ``samples`` (mono float32) as AAC, cut to ``duration`` s."""
    run_ffmpeg(["-y", "-i", video_path, "-f", "f32le", "-ar", str(int(sampling_rate)), "-ac", "1", "-i", "pipe:0",
                "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", "-b:a", "192k",
                "-t", f"{duration:.6f}", out_path],
               np.ascontiguousarray(samples, dtype="<f4").tobytes(), "ffmpeg could not mux the audio", RuntimeError)


def save_video(frames, path: str | os.PathLike, fps: int, audio: np.ndarray | None = None,
               sampling_rate: int = 16000) -> Path:
    """Encode ``frames`` (one video: ``[F, H, W, 3]`` floats in [0, 1], or a list of PIL images) as an mp4.

    Uses diffusers' `export_to_video` (imageio + ffmpeg) on a temporary file next to ``path`` and renames it into
    place, so an interrupted run leaves either the old file or nothing. ``audio`` (mono samples at
    ``sampling_rate``, e.g. a speech-to-video output's ``.audio``) is muxed in as AAC, trimmed to the video.
    """
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"Output path must end in .mp4; got {str(path)!r}.")
    if isinstance(frames, np.ndarray) and frames.ndim != 4:
        raise ValueError(f"Expected one video [frames, height, width, 3]; got an array of shape {frames.shape}.")
    if fps <= 0:
        raise ValueError(f"`fps` must be positive; got {fps}.")
    if audio is not None and (np.asarray(audio).ndim != 1 or sampling_rate <= 0):
        raise ValueError("`audio` must be mono samples [N] with a positive `sampling_rate`.")
    path.parent.mkdir(parents=True, exist_ok=True)
    temps = [_temp_sibling(path)]
    try:
        export_to_video(list(frames), temps[0], fps=fps)
        if audio is not None:
            temps.append(_temp_sibling(path))
            mux_audio(temps[0], np.asarray(audio), sampling_rate, len(frames) / fps, temps[1])
        os.replace(temps[-1], path)
    finally:
        for tmp in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return path
