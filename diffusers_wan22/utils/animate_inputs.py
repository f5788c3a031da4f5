"""Wan2.2-Animate inputs, read and prepared with the official numerics (`wan/animate.py`).

The official preprocessing (pose rendering, face crops, SAM2 masks) writes a source folder with `src_ref.png`,
`src_pose.mp4`, `src_face.mp4` (512x512 face crops) and, for character replacement, `src_bg.mp4` and `src_mask.mp4`.
`generate()` then:

* letterboxes the reference to the pose video's size (OpenCV `INTER_LINEAR`, aspect kept, black bars), reading the
  PNG with OpenCV (BGR -> RGB);
* takes channel 0 of the mask video (255 = character) divided by 255;
* pads every frame list to a length the clips tile exactly, by ping-pong (0, 1, ..., n-1, n-2, ..., 1, 0, 1, ...);
* starts a clip every ``clip_len - refert_num`` frames.

Every input is checked (files, frame counts, sizes) here, before any model runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import imageio.v2 as imageio
import numpy as np
import PIL.Image
import torch

from ..core.animate import MODES, REFERENCE_FRAME_CHOICES
from .image import to_pil

SIZE_MULTIPLE = 16  # VAE stride 8 x patch 2


# ------------------------------------------------------------------------------------------------ reading
def _is_path(value) -> bool:
    return isinstance(value, (str, bytes)) or hasattr(value, "__fspath__")


def _frame_array(frame) -> np.ndarray:
    """One frame as ``[H, W, 3]`` uint8 RGB (PIL image, array or tensor, as `to_pil` accepts)."""
    if isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3:
        return frame
    return np.asarray(to_pil(frame), dtype=np.uint8)


def read_video(video, name: str) -> np.ndarray:
    """All frames ``[F, H, W, 3]`` uint8 RGB of a video file (decoded by ffmpeg, as the official decord reader
    does) or of a sequence of frames (PIL images / ``HxWx3`` arrays / ``3xHxW`` tensors in [0, 1])."""
    if _is_path(video):
        if not os.path.isfile(video):
            raise FileNotFoundError(f"`{name}` {str(video)!r} does not exist.")
        try:
            reader = imageio.get_reader(str(video), "ffmpeg")
        except Exception as e:  # noqa: BLE001 - imageio raises several types for unreadable files
            raise ValueError(f"`{name}` {str(video)!r} is not a readable video ({e}).") from None
        try:
            frames = [np.asarray(f, dtype=np.uint8)[..., :3] for f in reader]
        finally:
            reader.close()
    elif isinstance(video, (list, tuple, np.ndarray, torch.Tensor)):
        frames = [_frame_array(f) for f in video]
    else:
        raise ValueError(f"`{name}` must be a video file path or a list of frames (PIL images or HxWx3 arrays); "
                         f"got {type(video).__name__}.")
    if not frames:
        raise ValueError(f"`{name}` has no frames.")
    if len({f.shape for f in frames}) != 1:
        raise ValueError(f"`{name}`: frames differ in size ({sorted({f.shape[:2] for f in frames})}).")
    return np.stack(frames)


def read_reference_image(image) -> np.ndarray:
    """The reference image as ``[H, W, 3]`` uint8 RGB; a path is decoded by OpenCV as the official code does."""
    if _is_path(image):
        if not os.path.isfile(image):
            raise FileNotFoundError(f"`image` {str(image)!r} does not exist.")
        import cv2  # OpenCV (a declared dependency) is imported only by the Animate preprocessing that needs it

        decoded = cv2.imread(str(image), cv2.IMREAD_COLOR)
        if decoded is None:
            raise ValueError(f"`image` {str(image)!r} is not an image OpenCV can read.")
        return np.ascontiguousarray(decoded[..., ::-1])  # BGR -> RGB
    if isinstance(image, PIL.Image.Image | np.ndarray | torch.Tensor):
        return _frame_array(image)
    raise ValueError(f"`image` must be a file path, a PIL image, an HxWx3 array or a 3xHxW tensor; got "
                     f"{type(image).__name__}.")


# ------------------------------------------------------------------------------------------------ official numerics
def letterbox_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Fit ``image`` (``[h, w, 3]`` uint8) into ``height x width`` keeping its aspect ratio, OpenCV bilinear, with
    black bars on the two short sides (official `WanAnimate.padding_resize`, bit for bit)."""
    import cv2  # see `read_reference_image`

    h, w = image.shape[:2]
    out = np.zeros((height, width, image.shape[2]), dtype=np.uint8)
    if h / w > height / width:  # relatively taller: full height, bars left and right
        new_w = int(height / h * w)
        left = int((width - new_w) / 2)
        out[:, left:left + new_w] = cv2.resize(np.ascontiguousarray(image), (new_w, height),
                                               interpolation=cv2.INTER_LINEAR).reshape(height, new_w, -1)
    else:  # full width, bars above and below
        new_h = int(width / w * h)
        top = int((height - new_h) / 2)
        out[top:top + new_h] = cv2.resize(np.ascontiguousarray(image), (width, new_h),
                                          interpolation=cv2.INTER_LINEAR).reshape(new_h, width, -1)
    return out


def padded_length(num_frames: int, clip_len: int, refert_num: int) -> int:
    """The frame count clips of ``clip_len`` frames overlapping by ``refert_num`` tile exactly (>= ``num_frames``)."""
    stride = clip_len - refert_num
    remainder = (num_frames - refert_num) % stride
    return num_frames + (stride - remainder if remainder else 0)


def ping_pong_indices(num_frames: int, length: int) -> list[int]:
    """Frame indices that extend ``num_frames`` frames to ``length`` by bouncing between the ends (official
    `inputs_padding`): 0, 1, ..., n-1, n-2, ..., 1, 0, 1, ..."""
    if num_frames == 1:
        return [0] * length
    period = 2 * (num_frames - 1)
    return [r if r < num_frames else period - r for r in (i % period for i in range(length))]


def clip_starts(length: int, clip_len: int, refert_num: int) -> list[int]:
    """First frame of every clip: one every ``clip_len - refert_num`` frames while a clip adds new frames."""
    return list(range(0, max(length - refert_num, 0), clip_len - refert_num))


def unit_range(frames: np.ndarray, device=None) -> torch.Tensor:
    """uint8 ``[..., H, W, 3]`` -> float32 ``[3, ..., H, W]`` in [-1, 1] on ``device``.

    The official code computes ``x / 127.5 - 1`` in float64 on numpy arrays and rounds once to the model dtype; a
    256-entry table of those values, indexed on the device, gives the same numbers after moving only the uint8
    frames (a quarter of the bytes).
    """
    table = (torch.arange(256, dtype=torch.float64, device=device) / 127.5 - 1).float()
    index = torch.from_numpy(np.ascontiguousarray(frames)).to(device).int()  # int32: uint8 would index as a mask
    return table[index].movedim(-1, 0)


# ------------------------------------------------------------------------------------------------ all inputs
@dataclass
class AnimateInputs:
    """Decoded Animate inputs, before clip padding (uint8 RGB frames unless stated).

    Attributes:
        reference: ``[H, W, 3]`` the reference image letterboxed to the pose video's size.
        pose: ``[F, H, W, 3]`` pose frames. face: ``[F, S, S, 3]`` face crops.
        background: ``[F, H, W, 3]`` background frames (replacement) or ``None``.
        mask: ``[F, H, W]`` float32 character mask in [0, 1] (channel 0 / 255; replacement) or ``None``.
    """

    reference: np.ndarray
    pose: np.ndarray
    face: np.ndarray
    background: np.ndarray | None = None
    mask: np.ndarray | None = None

    @property
    def num_frames(self) -> int:
        return self.pose.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the video, the pose video's."""
        return self.pose.shape[1], self.pose.shape[2]


def check_clip_settings(clip_len: int, refert_num: int) -> None:
    """``segment_frame_length`` / ``prev_segment_conditioning_frames`` the official clip loop supports."""
    if not isinstance(clip_len, int) or clip_len < 5 or (clip_len - 1) % 4:
        raise ValueError(f"`segment_frame_length` (official clip_len) must be 4k+1 and >= 5 (e.g. 77); got "
                         f"{clip_len!r}.")
    if refert_num not in REFERENCE_FRAME_CHOICES:
        raise ValueError(f"`prev_segment_conditioning_frames` (official refert_num) must be 1 or 5; got "
                         f"{refert_num!r}.")
    if clip_len - refert_num < refert_num:
        raise ValueError(f"`segment_frame_length`={clip_len} leaves {clip_len - refert_num} new frames per clip, "
                         f"fewer than the {refert_num} conditioning frames each clip takes from the previous one "
                         "(the official code fails from the third clip on); use a longer segment.")


def _check_frames(inputs: AnimateInputs, face_size: int, refert_num: int) -> None:
    n, (height, width) = inputs.num_frames, inputs.size
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
        raise ValueError(f"`pose_video` is {width}x{height}; Animate needs both sides multiples of {SIZE_MULTIPLE} "
                         "(VAE stride 8 x patch 2), as the official preprocessing writes them.")
    if inputs.face.shape[1:3] != (face_size, face_size):
        raise ValueError(f"`face_video` frames are {inputs.face.shape[2]}x{inputs.face.shape[1]}; the face encoder "
                         f"takes {face_size}x{face_size} crops (the official preprocessing's src_face.mp4).")
    if n <= refert_num:
        raise ValueError(f"`pose_video` has {n} frame(s); Animate needs more than prev_segment_conditioning_frames="
                         f"{refert_num}.")
    others = {"face_video": inputs.face, "background_video": inputs.background, "mask_video": inputs.mask}
    for name, frames in others.items():
        if frames is not None and frames.shape[0] != n:
            raise ValueError(f"`{name}` has {frames.shape[0]} frames but `pose_video` has {n}; the preprocessing "
                             "outputs must have the same frame count.")
        if frames is not None and name != "face_video" and frames.shape[1:3] != (height, width):
            raise ValueError(f"`{name}` is {frames.shape[2]}x{frames.shape[1]} but `pose_video` is "
                             f"{width}x{height}; they must match.")


def load_animate_inputs(image, pose_video, face_video, background_video=None, mask_video=None,
                        mode: str = "animate", face_size: int = 512, refert_num: int = 1) -> AnimateInputs:
    """Read and check every Animate input (paths or frames), official numerics; raises before any model runs."""
    if mode not in MODES:
        raise ValueError(f"`mode` must be 'animate' or 'replace'; got {mode!r}.")
    given = {"background_video": background_video, "mask_video": mask_video}
    if mode == "replace" and any(v is None for v in given.values()):
        raise ValueError(f"mode='replace' needs `background_video` and `mask_video`; missing "
                         f"{[k for k, v in given.items() if v is None]}.")
    if mode == "animate" and any(v is not None for v in given.values()):
        raise ValueError("`background_video` / `mask_video` are for mode='replace'; mode='animate' does not use them.")
    pose = read_video(pose_video, "pose_video")
    inputs = AnimateInputs(reference=read_reference_image(image), pose=pose, face=read_video(face_video, "face_video"))
    if mode == "replace":
        inputs.background = read_video(background_video, "background_video")
        mask = read_video(mask_video, "mask_video")[..., 0]
        inputs.mask = (mask.astype(np.float64) / 255).astype(np.float32)  # official: float64 x / 255
    _check_frames(inputs, face_size, refert_num)
    inputs.reference = letterbox_resize(inputs.reference, *inputs.size)
    return inputs
