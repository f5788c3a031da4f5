"""Torch-free checks of the files a user hands `wan22`: images (Pillow), audio and video (an ``ffmpeg`` probe of the
streams, no decoding) and safetensors files (their JSON header). Each failure is a `CliError` naming the flag, so a
file that cannot be used is refused before torch is imported or any weight is read."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
from pathlib import Path

import imageio_ffmpeg
import PIL.Image

from .errors import CliError

# A safetensors file starts with the byte length of its JSON header (little-endian u64); larger headers are junk.
MAX_SAFETENSORS_HEADER = 100 * 2**20


def check_readable_file(path: str | os.PathLike, flag: str) -> Path:
    """``path`` exists, is a regular file and can be read."""
    path = Path(path)
    if not path.exists():
        raise CliError(flag, f"{flag} {str(path)!r}: no such file")
    if not path.is_file():
        raise CliError(flag, f"{flag} {str(path)!r} is not a file")
    if not os.access(path, os.R_OK):
        raise CliError(flag, f"{flag} {str(path)!r} is not readable (permissions)")
    return path


def image_size(path: str | os.PathLike, flag: str = "--image") -> tuple[int, int]:
    """(width, height) of an image Pillow can decode; anything else (text, a truncated PNG, a video) is refused."""
    path = check_readable_file(path, flag)
    try:
        with PIL.Image.open(path) as image:
            size = image.size
            image.verify()  # decodes enough to catch a truncated or corrupt file
    except Exception as e:  # noqa: BLE001 - Pillow raises many types (UnidentifiedImageError, OSError, SyntaxError)
        raise CliError(flag, f"{flag} {str(path)!r} is not an image Pillow can read ({_first_line(e)})") from None
    return size


def _is_still_image(path: Path) -> bool:
    try:
        with PIL.Image.open(path) as image:
            return getattr(image, "n_frames", 1) == 1
    except Exception:  # noqa: BLE001 - not an image at all: ffmpeg decides below
        return False


def probe_streams(path: Path) -> tuple[set[str], float | None]:
    """The stream kinds (``{"audio", "video"}``) ffmpeg finds in ``path`` and its duration in seconds, from the
    container header only (``ffmpeg -i``: nothing is decoded)."""
    proc = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True,
                          text=True, errors="replace", timeout=60)
    kinds = {kind.lower() for kind in re.findall(r"Stream #\S+.*?: (Audio|Video):", proc.stderr)}
    match = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", proc.stderr)
    duration = None if match is None else int(match[1]) * 3600 + int(match[2]) * 60 + float(match[3])
    return kinds, duration


def check_audio_file(path: str | os.PathLike, flag: str = "--audio") -> float | None:
    """An audio file ffmpeg can read; returns its duration in seconds (``None`` when the header does not say)."""
    path = check_readable_file(path, flag)
    kinds, duration = probe_streams(path)
    if "audio" not in kinds:
        raise CliError(flag, f"{flag} {str(path)!r} has no audio stream ffmpeg can read (expected speech or a song: "
                             "wav, mp3, flac, m4a, ...)")
    return duration


def check_video_file(path: str | os.PathLike, flag: str = "--pose_video") -> None:
    """A video file ffmpeg can read (a still image is refused: it would be one frame)."""
    path = check_readable_file(path, flag)
    if _is_still_image(path):
        raise CliError(flag, f"{flag} {str(path)!r} is a still image; {flag} needs a video (mp4, avi, mov, ...)")
    if "video" not in probe_streams(path)[0]:
        raise CliError(flag, f"{flag} {str(path)!r} has no video stream ffmpeg can read (expected mp4, avi, mov, ...)")


def check_safetensors_file(path: str | os.PathLike, flag: str) -> dict:
    """A complete safetensors file (header parsed, every tensor's bytes present); returns the header."""
    path = check_readable_file(path, flag)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        problem = None
        if not 0 < length <= min(MAX_SAFETENSORS_HEADER, size - 8):
            problem = "no safetensors header"
        else:
            try:
                header = json.loads(f.read(length))
            except (UnicodeDecodeError, json.JSONDecodeError):
                header, problem = None, "its header is not JSON"
    if problem is None:
        problem = _header_problem(header, size - 8 - length)
    if problem is not None:
        raise CliError(flag, f"{flag} {str(path)!r} is not a safetensors file ({problem})")
    return header


def _header_problem(header, data_bytes: int) -> str | None:
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    if not tensors:
        return "it holds no tensors"
    for name, entry in tensors.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and "dtype" in entry and "shape" in entry):
            return f"entry {name!r} is malformed"
        if offsets[1] > data_bytes:
            return f"tensor {name!r} lies past the end of the file: truncated"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
