"""Checks of `wan22 generate` arguments that need no torch: the task a model folder holds, the inputs that task
needs, LoRA specs and prompt files. They run before any model is loaded."""

from __future__ import annotations

from pathlib import Path

from ..core.animate import REFERENCE_FRAME_CHOICES, source_folder_files
from ..core.folders import detect_official_variant, detect_saved_task, turbo_folder_kinds
from ..core.names import EXPERT_CHOICES, MODEL_INDEX

ANIMATE_FLAGS = ("src_root_path", "refert_num", "replace_flag", "use_relighting_lora")
NOT_FOR_ANIMATE = ("image", "audio", "pose_video", "num_clip", "infer_frames", "prompts", "size", "expert_steps")


class CliError(Exception):
    """A user mistake: reported as one line, exit code 2."""


def resolve_task(model: str, task: str | None) -> str:
    """The task of ``--model``: official folders and saved pipelines say it; ``tiny`` takes ``--task``."""
    if model == "tiny" or model.startswith("tiny:"):
        task = task or model.partition(":")[2] or "t2v-A14B"
        if task == "animate-14B":
            raise CliError("animate-14B has no tiny demo model; pass --model with an official Animate folder")
        return task
    path = Path(model)
    if not path.is_dir():
        raise CliError(f"--model {model!r} is not a folder (download the checkpoint first) nor 'tiny'")
    if turbo_folder_kinds(path):  # TurboDiffusion's TurboWan2.2-I2V-A14B experts
        found = "i2v-A14B"
    elif (path / MODEL_INDEX).exists():
        found = detect_saved_task(path)
        if found == "i2v-A14B" and task == "ti2v-5B":
            found = task  # Wan22ImageToVideoPipeline serves both
    else:
        found = detect_official_variant(path)
    if task is not None and task != found:
        raise CliError(f"--task {task} does not match --model {model}, which holds a {found} model")
    return found


def check_animate_inputs(args) -> None:
    """animate-14B: the preprocessing folder with every file the mode needs, official flag values."""
    if args.src_root_path is None:
        raise CliError("--task animate-14B needs --src_root_path (the official preprocessing output folder)")
    for flag in NOT_FOR_ANIMATE:
        if getattr(args, flag) is not None:
            raise CliError(f"--{flag} is not used by animate-14B (its inputs are in --src_root_path; the video takes "
                           "the pose video's size)")
    if args.refert_num is not None and args.refert_num not in REFERENCE_FRAME_CHOICES:
        raise CliError(f"--refert_num must be 1 or 5; got {args.refert_num}")
    try:
        source_folder_files(args.src_root_path, args.replace_flag)
    except FileNotFoundError as e:
        raise CliError(str(e)) from None


def check_task_inputs(task: str, args) -> None:
    """Which inputs each task needs, checked before any model is loaded."""
    if task == "animate-14B":
        return check_animate_inputs(args)
    used = [flag for flag in ANIMATE_FLAGS if getattr(args, flag) not in (None, False)]
    if used:
        raise CliError(f"--{used[0]} is for animate-14B only (this is {task})")
    if args.prompt is None and args.prompts is None:
        raise CliError("one of the arguments --prompt --prompts is required")
    needs_image = task in ("i2v-A14B", "s2v-14B")
    if needs_image and args.image is None:
        raise CliError(f"--task {task} needs --image")
    if task == "t2v-A14B" and args.image is not None:
        raise CliError("--image is for i2v-A14B, ti2v-5B and s2v-14B; t2v-A14B is text-only")
    if task == "s2v-14B":
        if args.audio is None:
            raise CliError("--task s2v-14B needs --audio")
        if args.prompts is not None:
            raise CliError("--prompts is for text prompts of the t2v/ti2v tasks, not s2v-14B")
    else:
        for flag in ("audio", "pose_video", "num_clip", "infer_frames"):
            if getattr(args, flag) is not None:
                raise CliError(f"--{flag} is for s2v-14B only (this is {task})")
    for flag in ("image", "audio", "pose_video"):
        path = getattr(args, flag)
        if path is not None and not path.is_file():
            raise CliError(f"--{flag} {str(path)!r}: no such file")
    if args.expert_steps is not None and (task not in ("t2v-A14B", "i2v-A14B") or min(args.expert_steps) < 0):
        raise CliError(f"--expert-steps takes two non-negative step counts and applies to the A14B tasks; got "
                       f"{args.expert_steps} for {task}")


def parse_lora(spec: str) -> tuple[str, float, str]:
    """``PATH[:SCALE][@EXPERT]`` → (path, scale, expert)."""
    rest, _, expert = spec.partition("@")
    expert = expert or "both"
    if expert not in EXPERT_CHOICES:
        raise CliError(f"--lora {spec!r}: expert must be high, low or both, got {expert!r}")
    path, scale = rest, 1.0
    head, sep, tail = rest.rpartition(":")
    if sep and head:
        try:
            path, scale = head, float(tail)
        except ValueError:
            path, scale = rest, 1.0
    if not Path(path).is_file():
        raise CliError(f"--lora {spec!r}: no such file {path!r}")
    return path, scale, expert


def read_prompts(path: Path) -> list[str]:
    """The non-empty lines of a prompt file; a prompt's index is its position among them (0-based)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise CliError(f"--prompts {str(path)!r}: no such file") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise CliError(f"--prompts {str(path)!r} has no prompts (one prompt per line)")
    return prompts


def turbo_quantized(model: str, quant_linear: bool) -> bool | None:
    """For a TurboWan2.2 folder, whether to load its ``-quant`` experts (``--quant_linear``, or the only pair
    present); ``None`` for any other model."""
    kinds = [] if model == "tiny" or model.startswith("tiny:") else turbo_folder_kinds(model)
    if not kinds:
        if quant_linear:
            raise CliError(f"--quant_linear applies to TurboWan2.2 folders; {model!r} is not one")
        return None
    if quant_linear and True not in kinds:
        raise CliError(f"--quant_linear: {model} has no TurboWan2.2-I2V-A14B-*-720P-quant.pth pair")
    return quant_linear or kinds == [True]
