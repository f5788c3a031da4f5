"""Official Wan 2.2 sampling defaults per variant (from the official `wan/configs`).

These are the numbers the official `generate.py` uses; our pipelines take their defaults from here so that a
call without arguments reproduces an official run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Official default negative prompt shared by T2V/I2V/TI2V (a Chinese list of artefacts to avoid).
DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，"
    "残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走"
)

# S2V-14B has its own negative prompt (face/hand artefacts, static frames, jitter).
S2V_NEGATIVE_PROMPT = (
    "画面模糊，最差质量，画面模糊，细节模糊不清，情绪激动剧烈，手快速抖动，字幕，丑陋的，残缺的，多余的手指，画得不好的手部，"
    "画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)

NUM_TRAIN_TIMESTEPS = 1000
TEXT_LEN = 512


@dataclass(frozen=True)
class VariantDefaults:
    """Sampling defaults of one official Wan 2.2 variant."""

    name: str
    sample_shift: float
    sample_steps: int
    # Guidance per expert: (high-noise expert, low-noise expert); dense models use the same value twice.
    guidance_scale: float
    guidance_scale_2: float | None
    boundary_ratio: float | None
    fps: int
    num_frames: int
    height: int
    width: int
    vae_version: str
    supported_sizes: tuple[tuple[int, int], ...] = field(default=())  # (width, height)
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT


_A14B_SIZES = ((1280, 720), (720, 1280), (832, 480), (480, 832))

VARIANTS: dict[str, VariantDefaults] = {
    "t2v-A14B": VariantDefaults(
        name="t2v-A14B", sample_shift=12.0, sample_steps=40, guidance_scale=4.0, guidance_scale_2=3.0,
        boundary_ratio=0.875, fps=16, num_frames=81, height=720, width=1280, vae_version="2.1",
        supported_sizes=_A14B_SIZES,
    ),
    "i2v-A14B": VariantDefaults(
        name="i2v-A14B", sample_shift=5.0, sample_steps=40, guidance_scale=3.5, guidance_scale_2=3.5,
        boundary_ratio=0.900, fps=16, num_frames=81, height=720, width=1280, vae_version="2.1",
        supported_sizes=_A14B_SIZES,
    ),
    "ti2v-5B": VariantDefaults(
        name="ti2v-5B", sample_shift=5.0, sample_steps=50, guidance_scale=5.0, guidance_scale_2=None,
        boundary_ratio=None, fps=24, num_frames=121, height=704, width=1280, vae_version="2.2",
        supported_sizes=((1280, 704), (704, 1280)),
    ),
    # S2V: num_frames is frames per clip (`--infer_frames`); width x height is the area budget (`--size 1024*704`),
    # the actual size follows the reference image's aspect ratio.
    "s2v-14B": VariantDefaults(
        name="s2v-14B", sample_shift=3.0, sample_steps=40, guidance_scale=4.5, guidance_scale_2=None,
        boundary_ratio=None, fps=16, num_frames=80, height=704, width=1024, vae_version="2.1",
        supported_sizes=((1024, 704), (704, 1024)), negative_prompt=S2V_NEGATIVE_PROMPT,
    ),
    # Animate: num_frames is frames per clip (`clip_len`); the video takes the pose video's size (height x width:
    # the official preprocessing's default resolution). Official negative prompt: the shared default.
    "animate-14B": VariantDefaults(
        name="animate-14B", sample_shift=5.0, sample_steps=20, guidance_scale=1.0, guidance_scale_2=None,
        boundary_ratio=None, fps=30, num_frames=77, height=720, width=1280, vae_version="2.1",
    ),
}


def get_variant(name: str) -> VariantDefaults:
    """Look up a variant by its official task name (e.g. ``"t2v-A14B"``)."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"Unknown Wan 2.2 variant {name!r}; expected one of {sorted(VARIANTS)}.") from None


def boundary_timestep(boundary_ratio: float | None, num_train_timesteps: int) -> float | None:
    """Timestep at and above which the high-noise expert runs (``None`` for dense models)."""
    return None if boundary_ratio is None else boundary_ratio * num_train_timesteps
