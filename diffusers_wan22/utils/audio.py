"""Audio for speech-to-video: decoding, wav2vec2 features and per-clip buckets, the way the official S2V reads it.

* Any file ffmpeg can read (wav, mp3, m4a, …) or an in-memory array is turned into 16 kHz mono float32 with the
  ffmpeg binary that ships with `imageio-ffmpeg` (no extra audio stack).
* `wav2vec2` gives 25 hidden states at 50 Hz; they are resampled to 30 Hz and then picked one per video frame at
  the video frame rate, grouped into clips of ``frames_per_clip`` and zero-padded past the end of the audio.
"""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path
from typing import Union

import imageio_ffmpeg
import numpy as np
import torch
import torch.nn.functional as F

SAMPLING_RATE = 16000  # what wav2vec2 was trained on
WAV2VEC_FPS = 50  # wav2vec2 emits one feature every 20 ms
FEATURE_FPS = 30  # the official code resamples the features to 30 Hz before bucketing

AudioInput = Union[str, os.PathLike, tuple, np.ndarray, torch.Tensor]


def run_ffmpeg(args: list[str], stdin: bytes | None, failure: str, error: type[Exception] = ValueError) -> bytes:
    """Run the ffmpeg binary of `imageio-ffmpeg` (``stdin`` piped in, stdout returned); on failure raise ``error``
    with ``failure`` and the end of ffmpeg's own message."""
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", *([] if stdin is not None else ["-nostdin"]), *args]
    proc = subprocess.run(cmd, input=stdin, capture_output=True)
    if proc.returncode != 0:
        raise error(f"{failure}: {proc.stderr.decode(errors='replace').strip()[-300:]}")
    return proc.stdout


def load_audio(audio: AudioInput, sampling_rate: int | None = None) -> np.ndarray:
    """16 kHz mono float32 samples from a file path, ``(array, sampling_rate)`` or an array + ``sampling_rate``.

    Multi-channel arrays are ``[samples, channels]`` and are averaged to mono; other rates are resampled by ffmpeg.
    """
    if isinstance(audio, (str, os.PathLike)):
        path = Path(audio)
        if not path.is_file():
            raise FileNotFoundError(f"Audio file {str(path)!r} does not exist.")
        raw = run_ffmpeg(["-i", str(path), "-f", "f32le", "-ac", "1", "-ar", str(SAMPLING_RATE), "-"], None,
                         f"Could not decode audio file {str(path)!r}")
        samples = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    else:
        if isinstance(audio, tuple):
            if len(audio) != 2:
                raise ValueError("audio as a tuple must be (samples, sampling_rate).")
            audio, sampling_rate = audio
        if sampling_rate is None:
            raise ValueError("An audio array needs its sampling rate: pass (samples, sampling_rate).")
        if int(sampling_rate) <= 0:
            raise ValueError(f"sampling_rate must be a positive number of Hz; got {sampling_rate}.")
        samples = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
        if not np.issubdtype(samples.dtype, np.number):
            raise TypeError(f"audio must be numeric samples; got an array of {samples.dtype}.")
        if samples.ndim == 2:
            samples = samples.mean(axis=1)
        if samples.ndim != 1:
            raise ValueError(f"audio must be [samples] or [samples, channels]; got shape {samples.shape}.")
        samples = samples.astype(np.float32)
        if int(sampling_rate) != SAMPLING_RATE and samples.size:
            raw = run_ffmpeg(["-f", "f32le", "-ar", str(int(sampling_rate)), "-ac", "1", "-i", "pipe:0",
                              "-f", "f32le", "-ar", str(SAMPLING_RATE), "-"], samples.tobytes(),
                             "Could not resample the audio array")
            samples = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if samples.size == 0:
        raise ValueError("The audio is empty (0 samples).")
    if not np.isfinite(samples).all():
        raise ValueError("The audio contains NaN or infinite samples.")
    return samples


@torch.no_grad()
def wav2vec2_features(model, feature_extractor, samples: np.ndarray) -> torch.Tensor:
    """All hidden states of a wav2vec2 model, stacked: [layers + 1, T at 50 Hz, hidden].

    The official features (transformers 4.x) end with the encoder output *after* its final layer norm; transformers
    5 records the last layer before that norm. Taking the base model's ``last_hidden_state`` for the final entry
    gives the official features under either version.
    """
    base = getattr(model, "wav2vec2", model)  # Wav2Vec2ForCTC wraps the Wav2Vec2Model we need
    param = next(base.parameters())
    inputs = feature_extractor(samples, sampling_rate=SAMPLING_RATE, return_tensors="pt").input_values
    out = base(inputs.to(param.device, param.dtype), output_hidden_states=True)
    states = list(out.hidden_states[:-1]) + [out.last_hidden_state]
    return torch.cat(states).float()


def resample_features(features: torch.Tensor, input_fps: float = WAV2VEC_FPS,
                      output_fps: float = FEATURE_FPS) -> torch.Tensor:
    """Linear resampling in time of [layers, T, C] features (endpoints aligned, as in the official code)."""
    length = int(features.shape[1] / float(input_fps) * output_fps)
    if length < 1:
        raise ValueError(f"The audio is too short: {features.shape[1]} wav2vec2 frames give no feature frame.")
    out = F.interpolate(features.transpose(1, 2), size=length, mode="linear", align_corners=True)
    return out.transpose(1, 2)


def clips_needed(num_features: int, fps: int, frames_per_clip: int) -> int:
    """How many clips the audio fills (the last one partly), as the official code counts them."""
    return int(num_features / (frames_per_clip * FEATURE_FPS / fps)) + 1


def bucket_features(features: torch.Tensor, fps: int, frames_per_clip: int) -> tuple[torch.Tensor, int]:
    """One feature per video frame at ``fps`` for every clip the audio needs.

    Args:
        features: [layers, T, C] features at 30 Hz.
    Returns:
        ``([1, layers, C, clips * frames_per_clip], clips)``; frames past the end of the audio are zeros.
    """
    layers, length, channels = features.shape
    clips = clips_needed(length, fps, frames_per_clip)
    count = clips * frames_per_clip
    padded_len = length + math.ceil(count / fps * FEATURE_FPS) - length
    times = np.linspace(0.0, count / fps, count, endpoint=False)  # video frame times in seconds
    index = np.clip(np.round(times * FEATURE_FPS).astype(int), 0, padded_len - 1)
    out = features.new_zeros(count, layers, channels)
    valid = index < length
    out[torch.from_numpy(valid)] = features[:, torch.from_numpy(index[valid])].permute(1, 0, 2)
    return out.permute(1, 2, 0).unsqueeze(0), clips
