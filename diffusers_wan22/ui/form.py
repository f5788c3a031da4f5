"""From the page's fields to a checked `wan22 generate` command line, before any weight is read.

A run request is turned into the `wan22 generate` arguments a user would type (the page shows them after the run,
so the same video can be made again from the CLI). Those arguments then go through

1. the command line's own parser and pre-load checks (handed in by `commands/ui.py` as ``parse_generate``, since
   the command layer sits above this one): flag types, the ``--size`` rule, the inputs each task needs;
2. the pipelines' own argument checks (`pipelines/checks.py`, `Wan22SpeechToVideoPipeline.check_s2v_inputs`), given
   the variant's geometry (VAE strides, patch size, experts) instead of a loaded pipeline, which is all they read.

Each error names a flag (``--size``) or a pipeline parameter (`` `num_frames` ``); `field_of` maps it to the field
of the page it belongs to, where it is shown.
"""

from __future__ import annotations

import random
import re
import shlex
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

from ..core.animate import ANIMATE_PROMPT
from ..pipelines import Wan22AnimatePipeline, Wan22SpeechToVideoPipeline
from ..pipelines.checks import check_common_inputs, check_finite_number, check_moe_inputs, check_video_size
from .tasks import NO_IMAGE, TaskTab, is_tiny

# The field of the page each `wan22 generate` flag and each pipeline parameter belongs to.
FLAG_FIELDS = {
    "--prompt": "prompt", "--negative_prompt": "negative_prompt", "--size": "size", "--frame_num": "frames",
    "--sample_steps": "steps", "--sample_shift": "shift", "--sample_solver": "solver",
    "--sample_guide_scale": "guidance", "--base_seed": "seed", "--image": "image", "--audio": "audio",
    "--pose_video": "pose_video", "--num_clip": "num_clip", "--infer_frames": "infer_frames",
    "--expert-steps": "expert_steps", "--dtype": "dtype", "--memory_mode": "memory_mode",
    "--src_root_path": "src_root_path", "--refert_num": "refert_num", "--replace_flag": "mode",
    "--use_relighting_lora": "relighting",
}
PARAM_FIELDS = {
    "prompt": "prompt", "negative_prompt": "negative_prompt", "height": "size", "width": "size", "max_area": "size",
    "num_frames": "frames", "num_inference_steps": "steps", "guidance_scale": "guidance",
    "guidance_scale_2": "guidance", "expert_steps": "expert_steps", "infer_frames": "infer_frames",
    "num_clips": "num_clip", "image": "image", "pose_video": "pose_video", "flow_shift": "shift",
    "segment_frame_length": "frames", "prev_segment_conditioning_frames": "refert_num", "src_root_path": "src_root_path",
}
GENERAL = "general"  # an error naming no field: shown next to the Run button

# Spatial stride of each Wan VAE (`VariantDefaults.vae_version`); both compress time by 4.
VAE_SPATIAL_STRIDE = {"2.1": 8, "2.2": 16}
VAE_TEMPORAL_STRIDE = 4
PATCH_SIZE = (1, 2, 2)


class UsageError(ValueError):
    """A mistake in the request, reported next to the field it names (as the CLI reports it on one line)."""


def field_of(message: str) -> str:
    """The field an error message is about: the first flag or backticked parameter it names that the page has."""
    for flag in re.findall(r"--[\w-]+", message):
        if flag in FLAG_FIELDS:
            return FLAG_FIELDS[flag]
    for name in re.findall(r"`(\w+)`", message):
        if name in PARAM_FIELDS:
            return PARAM_FIELDS[name]
    return GENERAL


@dataclass(frozen=True)
class VariantGeometry:
    """What the pipelines' argument checks read from a loaded pipeline (VAE strides, patch size, mixture of experts,
    the tensors a step callback may ask for), known from the variant before any weight is read."""

    vae_scale_factor_spatial: int
    vae_scale_factor_temporal: int
    transformer_config: SimpleNamespace
    is_moe: bool
    _callback_tensor_inputs: tuple[str, ...] = ("latents",)

    @classmethod
    def of(cls, tab: TaskTab) -> VariantGeometry:
        d = tab.defaults
        return cls(VAE_SPATIAL_STRIDE[d.vae_version], VAE_TEMPORAL_STRIDE, SimpleNamespace(patch_size=PATCH_SIZE),
                   tab.is_moe)


def _number(value) -> str | None:
    """A number field as the command line spells it (``81`` rather than ``81.0``); ``None`` when empty."""
    if value is None or value == "":
        return None
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _flag(argv: list[str], flag: str, *values) -> None:
    """Append ``flag`` and its values, unless a value is empty (the command line's default then applies)."""
    texts = [_number(v) if isinstance(v, (int, float)) else v for v in values]
    if not texts or any(t in (None, "") for t in texts):
        return
    if len(texts) == 1 and texts[0].startswith("-"):  # e.g. a prompt starting with "-": not a flag
        argv.append(f"{flag}={texts[0]}")
    else:
        argv += [flag, *texts]


def resolve_seed(seed) -> int:
    """The seed of a run: the field's value, or a fresh random one for ``-1`` (shown after the run)."""
    if seed is None or int(seed) == -1:
        return random.randrange(2**31)
    return int(seed)


def command_line(tab: TaskTab, model: str, form: dict, seed: int, output: str,
                 model_flags: tuple[str, ...] = ()) -> list[str]:
    """The `wan22 generate` arguments (without ``wan22 generate``) equivalent to the page's fields.
    ``model_flags``: the `wan22 ui` flags that go with ``--model`` (TurboWan2.2: ``--components``, ...)."""
    argv = ["--model", model, *model_flags]
    if is_tiny(model):
        argv += ["--task", tab.variant]
    _flag(argv, "--prompt", form.get("prompt") or None)
    _flag(argv, "--negative_prompt", form.get("negative_prompt") or None)
    if tab.image != NO_IMAGE:
        _flag(argv, "--image", form.get("image"))
    if tab.is_animate:
        _animate_flags(argv, form)
    elif tab.audio:
        _flag(argv, "--audio", form.get("audio"))
        _flag(argv, "--pose_video", form.get("pose_video"))
        _flag(argv, "--num_clip", form.get("num_clip") or None)  # 0: as many clips as the audio needs
        _flag(argv, "--infer_frames", form.get("infer_frames"))
    if not tab.audio:
        _flag(argv, "--frame_num", form.get("frames"))
    _flag(argv, "--size", (form.get("size") or "").strip())
    _flag(argv, "--sample_steps", form.get("steps"))
    _flag(argv, "--sample_shift", form.get("shift"))
    _flag(argv, "--sample_solver", form.get("solver"))
    _guidance_flags(argv, tab, form)
    _flag(argv, "--base_seed", seed)
    _flag(argv, "--dtype", form.get("dtype"))
    if form.get("memory_mode") not in (None, "", "none"):
        argv += ["--memory_mode", form["memory_mode"]]
    return argv + ["--output", output]


def _animate_flags(argv: list[str], form: dict) -> None:
    """Animate-14B's official flags: the preprocessing folder, the mode, the frames taken from the previous clip and
    the relighting LoRA."""
    _flag(argv, "--src_root_path", (form.get("src_root_path") or "").strip())
    if form.get("mode") == "replace":
        argv.append("--replace_flag")
    _flag(argv, "--refert_num", form.get("refert_num"))
    if form.get("relighting"):
        argv.append("--use_relighting_lora")


def _guidance_flags(argv: list[str], tab: TaskTab, form: dict) -> None:
    """``--sample_guide_scale`` (one value, or one per A14B expert) and ``--expert-steps``."""
    if not tab.is_moe:
        _flag(argv, "--sample_guide_scale", form.get("guidance"))
        return
    scales = [g for g in (form.get("guidance"), form.get("guidance_2")) if g is not None]
    _flag(argv, "--sample_guide_scale", *scales)
    if form.get("split"):
        _flag(argv, "--expert-steps", form.get("high_steps"), form.get("low_steps"))


def shell_command(argv: list[str]) -> str:
    """``wan22 generate ...`` as one shell line."""
    return shlex.join(["wan22", "generate", *argv])


@dataclass
class CheckedRequest:
    """A run request after every check: the parsed command line, or the errors per field."""

    argv: list[str]
    args: object | None = None
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


def check_request(tab: TaskTab, argv: list[str], parse_generate: Callable[[list[str]], object]) -> CheckedRequest:
    """The command line's checks, then (when they pass) the pipeline's own checks; no model is loaded."""
    request = CheckedRequest(argv)
    try:
        request.args = parse_generate(argv)
    except ValueError as e:
        request.errors[field_of(str(e))] = str(e)
        return request
    for check in _pipeline_checks(tab, request.args):
        try:
            check()
        except (ValueError, FileNotFoundError) as e:
            request.errors.setdefault(field_of(str(e)), str(e))
    return request


def _pipeline_checks(tab: TaskTab, args) -> list[Callable[[], None]]:
    """The pipeline's argument checks for ``args``, one callable per group of fields (so that each field can show
    its own error). Values the command line leaves unset are the variant's defaults, as in the pipeline."""
    d, geometry = tab.defaults, VariantGeometry.of(tab)
    guide = tuple(args.sample_guide_scale or ())
    width, height = args.size if args.size is not None else (d.width, d.height)
    steps = args.sample_steps or (sum(args.expert_steps) if args.expert_steps else tab.default_steps)
    checks = []
    if args.sample_shift is not None:
        checks.append(lambda: check_finite_number("flow_shift", args.sample_shift, 0.0, exclusive=True))
    if tab.audio:
        checks.append(lambda: Wan22SpeechToVideoPipeline.check_s2v_inputs(
            geometry, args.image, args.prompt, args.negative_prompt, None, None, width * height, args.num_clip,
            args.infer_frames or d.num_frames, steps, guide[0] if guide else d.guidance_scale, None, args.pose_video,
            "np", ["latents"]))
        return checks
    if tab.is_animate:
        return [lambda: Wan22AnimatePipeline.check_animate_inputs(
            geometry, args.prompt or ANIMATE_PROMPT, args.negative_prompt, None, None, args.frame_num or d.num_frames,
            args.refert_num or 1, steps, guide[0] if guide else d.guidance_scale, None, "np", ["latents"], 512)]
    frames = args.frame_num or d.num_frames
    # With an image, --size is an area budget (the shape follows the image): only the frame rule is checked here.
    exact = (height, width) if args.image is None else (_smallest_side(geometry),) * 2
    expert_steps = tuple(args.expert_steps) if args.expert_steps else None
    return checks + [
        lambda: check_common_inputs(geometry, prompt=args.prompt, negative_prompt=args.negative_prompt,
                                    num_inference_steps=steps, guidance=guide),
        lambda: check_moe_inputs(geometry, steps, None, expert_steps),
        lambda: check_video_size(geometry, *exact, frames),
    ]


def _smallest_side(geometry: VariantGeometry) -> int:
    """The smallest height / width the geometry allows (VAE stride x patch)."""
    return geometry.vae_scale_factor_spatial * geometry.transformer_config.patch_size[1]
