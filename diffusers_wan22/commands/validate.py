"""Every check of a `wan22` command that needs no torch, run before torch is imported or any weight is read.

Each check takes plain values and raises `CliError(flag, message)`: one line naming the flag, the value given and
what is accepted. `validate_command` runs the checks of a parsed command line in order and fills in what they
resolve (``args.task``, ``args.base_seed`` for ``-1``, ``args.output``, ``args.loras``); front ends other than the
command line (e.g. a UI) call the single checks or `validate_generate` on a namespace built from
`parser.generate_defaults()`.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import json
import math
import os
import random
import re
import time
from pathlib import Path

from ..core.animate import REFERENCE_FRAME_CHOICES, source_folder_files
from ..core.folders import detect_official_variant, detect_saved_task, turbo_folder_kinds
from ..core.image_sizes import (
    closest_aspect_ratio,
    i2v_a14b_size,
    s2v_size,
    ti2v_best_output_size,
    turbo_adaptive_size,
    turbo_fixed_size,
)
from ..core.model_specs import folder_spec, variant_spec
from ..core.names import (
    EXPERT_CHOICES,
    MAX_INFERENCE_STEPS,
    MODEL_INDEX,
    RCM_SAMPLERS,
    SOLVERS,
    T5_FILE,
    TOKENIZER_DIR,
    TURBO_MAX_STEPS,
    TURBO_SLA_TOPK,
    VAE_FILES,
)
from ..core.variants import VARIANTS, get_variant
from .errors import CliError
from .media import check_audio_file, check_safetensors_file, check_video_file, image_size
from .memory_check import check_memory

__all__ = ["CliError", "check_animate_inputs", "check_device", "check_frame_num", "check_guide_scale", "check_output", "check_seed",
           "check_shift", "check_size", "check_task_inputs", "parse_lora", "read_prompts", "resolve_task",
           "validate_command", "validate_generate"]

MOE_TASKS = ("t2v-A14B", "i2v-A14B")
IMAGE_TASKS = ("i2v-A14B", "s2v-14B")  # need --image (ti2v-5B takes it optionally)
MAX_SEED = 2**64 - 1
DEVICE_PATTERN = re.compile(r"(cpu|mps|(cuda|xpu|npu|hpu)(:\d+)?)")
DEFAULT_OUTPUT_DIR = "wan22_outputs"
ANIMATE_FLAGS = ("src_root_path", "refert_num", "replace_flag", "use_relighting_lora")
NOT_FOR_ANIMATE = ("image", "audio", "pose_video", "num_clip", "infer_frames", "prompts", "size", "expert_steps")


# ------------------------------------------------------------------------------------------------ model and task
def is_tiny(model: str) -> bool:
    return model == "tiny" or model.startswith("tiny:")


def resolve_task(model: str, task: str | None) -> str:
    """The task of ``--model``: official folders and saved pipelines say it; ``tiny`` takes ``--task``."""
    if is_tiny(model):
        found = model.partition(":")[2] or task or "t2v-A14B"
        if found not in VARIANTS:
            raise CliError("--model", f"--model {model!r}: expected 'tiny' or 'tiny:<task>' with a task of "
                                      f"{', '.join(VARIANTS)}")
        if task is not None and task != found:
            raise CliError("--task", f"--task {task} does not match --model {model}")
        if found == "animate-14B":
            raise CliError("--task", "animate-14B has no tiny demo model; pass --model with an official Animate folder")
        return found
    path = Path(model)
    if not path.is_dir():
        raise CliError("--model", f"--model {model!r} is not a folder (download the checkpoint first) nor 'tiny'")
    try:
        if turbo_folder_kinds(path):  # TurboDiffusion's TurboWan2.2-I2V-A14B experts
            found = "i2v-A14B"
        elif (path / MODEL_INDEX).exists():
            found = detect_saved_task(path)
            if found == "i2v-A14B" and task == "ti2v-5B":
                found = task  # Wan22ImageToVideoPipeline serves both
        else:
            found = detect_official_variant(path)
    except (ValueError, OSError) as e:
        raise CliError("--model", f"--model {model!r}: {e}") from None
    if task is not None and task != found:
        raise CliError("--task", f"--task {task} does not match --model {model}, which holds a {found} model")
    return found


# ------------------------------------------------------------------------------------------------ numbers
def check_size(size: tuple[int, int] | None, task: str, with_image: bool) -> None:
    """``--size W*H``: text-to-video sizes are multiples of the VAE stride x patch (16; TI2V-5B 32); with an image
    it is an area budget, at least one latent patch (S2V: 64*64)."""
    if size is None:
        return
    w, h = size
    if task == "s2v-14B":
        if w * h < 64 * 64:
            raise CliError("--size", f"--size {w}*{h}: s2v-14B needs an area of at least 64*64 pixels (it is the "
                                     "area budget; the shape follows --image)")
    elif task == "ti2v-5B" and not with_image and (w % 32 or h % 32):
        raise CliError("--size", f"--size {w}*{h}: ti2v-5B needs width and height that are multiples of 32 (Wan 2.2 "
                                 "VAE stride 16 x patch 2), e.g. 1280*704 or 704*1280")
    elif with_image and w * h < (32 * 32 if task == "ti2v-5B" else 16 * 16):
        raise CliError("--size", f"--size {w}*{h} is too small an area for an image-conditioned video")


def check_frame_num(frame_num: int | None, task: str) -> None:
    """``--frame_num``: 4k+1 frames (the VAE compresses 4 frames into one latent frame after the first)."""
    if frame_num is None:
        return
    if task == "s2v-14B":
        raise CliError("--frame_num", "--frame_num does not apply to s2v-14B: it makes --num_clip clips of "
                                      "--infer_frames frames (the audio decides how many by default)")
    if frame_num < 1 or (frame_num - 1) % 4:
        raise CliError("--frame_num", f"--frame_num must be 4k+1 (1, 5, 9, ..., 81, 121); got {frame_num}")


def check_shift(shift: float | None) -> None:
    if shift is not None and not (math.isfinite(shift) and shift > 0):
        raise CliError("--sample_shift", f"--sample_shift must be a finite number > 0 (official: 12 t2v, 5 i2v / "
                                         f"ti2v, 3 s2v); got {shift}")


def check_guide_scale(values: list[float] | None, task: str) -> None:
    """One value, or two (high-noise, low-noise expert) for the A14B mixture of experts; finite, >= 0."""
    if values is None:
        return
    limit = 2 if task in MOE_TASKS else 1
    if not 1 <= len(values) <= limit:
        takes = "one or two values (high-noise, low-noise expert)" if limit == 2 else "one value (one transformer)"
        raise CliError("--sample_guide_scale", f"--sample_guide_scale takes {takes} for {task}; got {len(values)}")
    for value in values:
        if not (math.isfinite(value) and value >= 0):
            raise CliError("--sample_guide_scale", f"--sample_guide_scale must be finite numbers >= 0 (1 = no "
                                                   f"guidance); got {value}")


def check_seed(seed: int) -> int:
    """``--base_seed``: -1 draws a random seed (returned), else 0 .. 2**64-1."""
    if seed == -1:
        return random.randint(0, 2**63 - 1)
    if not 0 <= seed <= MAX_SEED:
        raise CliError("--base_seed", f"--base_seed must be -1 (random) or 0..{MAX_SEED}; got {seed}")
    return seed


def check_steps(sample_steps: int | None, expert_steps, task: str) -> None:
    if sample_steps is not None and sample_steps > MAX_INFERENCE_STEPS:
        raise CliError("--sample_steps", f"--sample_steps must be 1..{MAX_INFERENCE_STEPS}; got {sample_steps}")
    if expert_steps is None:
        return
    if task not in MOE_TASKS or min(expert_steps) < 0 or sum(expert_steps) == 0:
        raise CliError("--expert_steps", f"--expert_steps takes two non-negative step counts (not both 0) and "
                                         f"applies to the A14B tasks; got {list(expert_steps)} for {task}")
    if sample_steps is not None and sum(expert_steps) != sample_steps:
        raise CliError("--expert_steps", f"--expert_steps {expert_steps[0]} {expert_steps[1]} makes "
                                         f"{sum(expert_steps)} steps but --sample_steps is {sample_steps}; drop one")


def image_resolution(task: str, image, size: tuple[int, int] | None, turbo: bool = False) -> tuple[int, int]:
    """(width, height) an image-conditioned task makes from ``image`` within the ``--size`` area (the official
    rules of `core/image_sizes.py`; the strides of the real models, which the tiny ones share). TurboWan2.2
    experts follow TurboDiffusion: the 720p table entry of the closest aspect ratio, or with ``--size`` its
    area-keeping rule."""
    d = get_variant(task)
    area = d.width * d.height if size is None else size[0] * size[1]
    w, h = image_size(image, "--image")
    if turbo and size is None:
        return turbo_fixed_size("720p", closest_aspect_ratio(w, h, "720p"))
    rule = {"i2v-A14B": lambda: turbo_adaptive_size(w, h, area) if turbo else i2v_a14b_size(w, h, area, 8, 2),
            "ti2v-5B": lambda: ti2v_best_output_size(w, h, area, 32), "s2v-14B": lambda: s2v_size(w, h, area)}[task]
    try:
        return rule()
    except ValueError:
        given = "the default area" if size is None else f"--size {size[0]}*{size[1]}"
        multiple = {"ti2v-5B": 32, "s2v-14B": 64}.get(task, 16)
        raise CliError("--size", f"{given} is too small an area for the {w}x{h} --image ({task} makes sides that "
                                 f"are multiples of {multiple})") from None


# ------------------------------------------------------------------------------------------------ inputs
def check_task_inputs(task: str, image=None, audio=None, pose_video=None, num_clip=None, infer_frames=None,
                      prompts=None, require_inputs: bool = True) -> None:
    """Which inputs each task takes (and that each given file is usable), before any model is loaded.
    ``require_inputs=False`` lets the image / audio a task needs be missing (the examples make them for ``tiny``)."""
    if task in IMAGE_TASKS and image is None and require_inputs:
        raise CliError("--image", f"--task {task} needs --image")
    if task == "t2v-A14B" and image is not None:
        raise CliError("--image", "--image is for i2v-A14B, ti2v-5B and s2v-14B; t2v-A14B is text-only")
    if task == "s2v-14B":
        if audio is None and require_inputs:
            raise CliError("--audio", "--task s2v-14B needs --audio")
        if prompts is not None:
            raise CliError("--prompts", "--prompts is for text prompts of the t2v/ti2v tasks, not s2v-14B")
        if infer_frames is not None and infer_frames % 4:
            raise CliError("--infer_frames", f"--infer_frames must be a multiple of 4; got {infer_frames}")
    else:
        given = dict(audio=audio, pose_video=pose_video, num_clip=num_clip, infer_frames=infer_frames)
        for flag, value in given.items():
            if value is not None:
                raise CliError(f"--{flag}", f"--{flag} is for s2v-14B only (this is {task})")
    if image is not None:
        image_size(image, "--image")
    if audio is not None:
        check_audio_file(audio, "--audio")
    if pose_video is not None:
        check_video_file(pose_video, "--pose_video")


def check_animate_inputs(args: argparse.Namespace) -> None:
    """animate-14B: the preprocessing folder with every file the mode needs, official flag values."""
    if args.src_root_path is None:
        raise CliError("--src_root_path", "--task animate-14B needs --src_root_path (the official preprocessing "
                                          "output folder)")
    for flag in NOT_FOR_ANIMATE:
        if getattr(args, flag) is not None:
            raise CliError(f"--{flag}", f"--{flag} is not used by animate-14B (its inputs are in --src_root_path; "
                                        "the video takes the pose video's size)")
    if args.refert_num is not None and args.refert_num not in REFERENCE_FRAME_CHOICES:
        raise CliError("--refert_num", f"--refert_num must be 1 or 5; got {args.refert_num}")
    try:
        source_folder_files(args.src_root_path, args.replace_flag)
    except FileNotFoundError as e:
        raise CliError("--src_root_path", str(e)) from None


def check_not_animate_flags(args: argparse.Namespace, task: str) -> None:
    used = [flag for flag in ANIMATE_FLAGS if getattr(args, flag, None) not in (None, False)]
    if used:
        raise CliError(f"--{used[0]}", f"--{used[0]} is for animate-14B only (this is {task})")


def parse_lora(spec: str) -> tuple[str, float, str]:
    """``PATH[:SCALE][@EXPERT]`` -> (path, scale, expert); the file must be a safetensors file."""
    rest, _, expert = spec.partition("@")
    expert = expert or "both"
    if expert not in EXPERT_CHOICES:
        raise CliError("--lora", f"--lora {spec!r}: expert must be high, low or both, got {expert!r}")
    path, scale = rest, 1.0
    head, sep, tail = rest.rpartition(":")
    if sep and head:
        try:
            path, scale = head, float(tail)
        except ValueError:
            path, scale = rest, 1.0
    if not math.isfinite(scale):
        raise CliError("--lora", f"--lora {spec!r}: the scale must be a finite number")
    if not Path(path).is_file():
        raise CliError("--lora", f"--lora {spec!r}: no such file {path!r}")
    check_safetensors_file(path, "--lora")
    return path, scale, expert


def check_lora_support(loras: list, task: str) -> None:
    if loras and importlib.util.find_spec("peft") is None:
        raise CliError("--lora", "--lora needs the peft package: pip install peft (or pip install -e '.[lora]')")
    if task in MOE_TASKS:
        return
    for path, _, expert in loras:
        if expert != "both":
            raise CliError("--lora", f"--lora {path}@{expert}: {task} has one transformer; drop '@{expert}'")


def read_prompts(path: Path) -> list[str]:
    """The non-empty lines of a prompt file; a prompt's index is its position among them (0-based)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise CliError("--prompts", f"--prompts {str(path)!r}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CliError("--prompts", f"--prompts {str(path)!r} is not a readable UTF-8 text file ({e})") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise CliError("--prompts", f"--prompts {str(path)!r} has no prompts (one prompt per line)")
    return prompts


# ------------------------------------------------------------------------------------------------ TurboDiffusion
TURBO_ONLY = ("components", "quant_linear", "sla_topk")  # flags of TurboDiffusion's published folders


def saved_turbo_folder(model: str) -> bool:
    """A folder written by `wan22 convert` from TurboWan2.2 files (its scheduler is the rCM sampler)."""
    index = Path(model) / MODEL_INDEX
    try:
        return index.is_file() and json.loads(index.read_text()).get("scheduler", [None, None])[1] == "RCMScheduler"
    except (OSError, ValueError, AttributeError, IndexError):
        return False


def turbo_quantized(model: str, quant_linear: bool) -> bool | None:
    """For a TurboWan2.2 folder (as published), whether to load its ``-quant`` (W8A8) experts: ``--quant_linear``, or
    the only pair present; ``None`` for any other model."""
    kinds = [] if is_tiny(model) else turbo_folder_kinds(model)
    if not kinds:
        if quant_linear:
            raise CliError("--quant_linear", f"--quant_linear applies to TurboWan2.2 folders (TurboWan2.2-I2V-A14B-"
                                             f"*-720P-quant.pth); {model!r} is not one")
        return None
    if quant_linear and True not in kinds:
        raise CliError("--quant_linear", f"--quant_linear: {model} has no TurboWan2.2-I2V-A14B-{{high,low}}-720P-"
                                         "quant.pth pair")
    return quant_linear or kinds == [True]


def check_turbo_sources(model: str, components) -> None:
    """``--components``: the folder umT5, its tokenizer and the Wan 2.1 VAE come from (else ``--model``)."""
    root = Path(components if components is not None else model)
    flag = "--components" if components is not None else "--model"
    if components is not None and not root.is_dir():
        raise CliError("--components", f"--components {str(components)!r} is not a folder (the official "
                                       "Wan2.2-I2V-A14B download)")
    missing = [name for name in (T5_FILE, VAE_FILES["2.1"], TOKENIZER_DIR) if not (root / name).exists()]
    if missing:
        hint = "" if components is not None else "; pass --components with the official Wan2.2-I2V-A14B folder"
        raise CliError(flag, f"{flag} {str(root)!r} has no {', '.join(missing)}{hint}")


def turbo_only_flags_given(args: argparse.Namespace) -> list[str]:
    """The Turbo-only flags set on the command line (``--components``, ``--quant_linear``, ``--sla_topk``)."""
    return [f"--{name}" for name in TURBO_ONLY if getattr(args, name) not in (None, False)]


def check_turbo_flags(args: argparse.Namespace) -> None:
    """TurboWan2.2 folders sample with the rCM sampler (1-4 steps, no shift, no step split); the Turbo-only flags
    are refused elsewhere. Resolves ``args.turbo_quantized`` (``None``: not a published Turbo folder) and
    ``args.turbo`` (Turbo experts, published or converted)."""
    args.turbo_quantized = turbo_quantized(args.model, args.quant_linear)
    args.turbo = args.turbo_quantized is not None or saved_turbo_folder(args.model)
    if not args.turbo:
        given = turbo_only_flags_given(args)
        if given:
            raise CliError(given[0], f"{given[0]} applies to TurboWan2.2 folders only")
        if args.sample_solver in RCM_SAMPLERS:
            raise CliError("--sample_solver", f"--sample_solver {args.sample_solver} is the rCM sampler of "
                                              f"TurboWan2.2 folders; this model takes {' or '.join(SOLVERS)}")
        return
    if args.sample_solver in SOLVERS:
        raise CliError("--sample_solver", f"--sample_solver {args.sample_solver}: TurboWan2.2 experts are distilled "
                                          f"for the rCM sampler: {' or '.join(RCM_SAMPLERS)} (default sde)")
    for name, flag, why in [("sample_shift", "--sample_shift", "the rCM sampler has a fixed grid"),
                            ("expert_steps", "--expert_steps", "the rCM sampler has a fixed grid (--sample_steps "
                                                               f"1-{TURBO_MAX_STEPS})")]:
        if getattr(args, name) is not None:
            raise CliError(flag, f"{flag} does not apply to TurboWan2.2 experts: {why}")
    if args.sample_steps is not None and args.sample_steps > TURBO_MAX_STEPS:
        raise CliError("--sample_steps", f"--sample_steps must be 1..{TURBO_MAX_STEPS} for TurboWan2.2 experts; got "
                                         f"{args.sample_steps}")
    if args.turbo_quantized is None:  # a converted folder keeps what it was converted with
        given = turbo_only_flags_given(args)
        if given:
            raise CliError(given[0], f"{given[0]}: {args.model} is a converted Turbo folder; it keeps the experts and "
                                     "SLA setting `wan22 convert` gave it")
        return
    check_sla_topk(args.sla_topk)
    args.sla_topk = TURBO_SLA_TOPK if args.sla_topk is None else args.sla_topk
    check_turbo_sources(args.model, args.components)
    if args.turbo_quantized and args.lora:
        raise CliError("--lora", "--lora: the W8A8 (-quant) Turbo experts hold int8 weights; load LoRA on the plain "
                                 "experts (drop --quant_linear)")


def check_sla_topk(topk: float | None) -> None:
    if topk is not None and not (math.isfinite(topk) and 0 < topk <= 1):
        raise CliError("--sla_topk", f"--sla_topk must be a fraction in (0, 1] (TurboDiffusion: 0.1); got {topk}")


# ------------------------------------------------------------------------------------------------ machine and files
def check_device(device: str | None) -> None:
    """``--device`` names a torch device type (availability is checked once torch is imported)."""
    if device is not None and not DEVICE_PATTERN.fullmatch(device):
        raise CliError("--device", f"--device {device!r}: expected cpu, cuda, cuda:N, mps, xpu or xpu:N")


def check_memory_flags(memory_mode: str | None, offload_model: bool, offload_dir, task: str) -> None:
    if memory_mode is not None and offload_model:
        raise CliError("--offload_model", "--offload_model and --memory_mode both choose a memory mode; keep one "
                                          "(--offload_model = --memory_mode expert_offload)")
    if memory_mode == "lazy_experts" and task not in MOE_TASKS:
        raise CliError("--memory_mode", f"--memory_mode lazy_experts swaps the two A14B experts; {task} has one "
                                        "transformer (use expert_offload or group_offload)")
    if offload_dir is not None and memory_mode != "group_offload":
        raise CliError("--offload_dir", "--offload_dir is for --memory_mode group_offload")


def check_output(output, overwrite: bool, flag: str = "--output") -> None:
    """An mp4 path that is not a folder, and not an existing file unless ``overwrite``."""
    path = Path(output)
    if path.suffix.lower() != ".mp4":
        raise CliError(flag, f"{flag} {str(output)!r} must end in .mp4 (the video is H.264 in an mp4)")
    if path.is_dir():
        raise CliError(flag, f"{flag} {str(output)!r} is a folder; give a file name ending in .mp4")
    if path.exists() and not overwrite:
        raise CliError(flag, f"{flag} {str(output)!r} exists; pass --overwrite to replace it or choose another name")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not os.access(parent, os.W_OK):
        raise CliError(flag, f"{flag} {str(output)!r}: the folder {str(parent)!r} is not writable")


# ------------------------------------------------------------------------------------------------ commands
def validate_generate(args: argparse.Namespace, require_inputs: bool = True) -> None:
    """All torch-free checks of `wan22 generate`, in the order a user meets them; resolves ``args.task``,
    ``args.base_seed`` (a random one for -1), ``args.output`` / ``args.output_dir`` and ``args.loras``.
    ``require_inputs``: see `check_task_inputs`."""
    args.task = resolve_task(args.model, args.task)
    task = args.task
    if args.prompt is None and args.prompts is None and task != "animate-14B":  # Animate has an official prompt
        raise CliError("--prompt", "--prompt TEXT (or --prompts FILE) is required")
    if args.prompt is not None and not args.prompt.strip():
        raise CliError("--prompt", "--prompt is empty")
    prompts = args.prompt_list = read_prompts(args.prompts) if args.prompts is not None else None
    if prompts is not None and args.image is not None:
        raise CliError("--image", "--prompts runs text-to-video; drop --image")
    check_turbo_flags(args)
    if task == "animate-14B":
        check_animate_inputs(args)
    else:
        check_not_animate_flags(args, task)
        check_task_inputs(task, args.image, args.audio, args.pose_video, args.num_clip, args.infer_frames,
                          args.prompts, require_inputs)
    check_size(args.size, task, args.image is not None)
    args.resolution = image_resolution(task, args.image, args.size, args.turbo) if args.image is not None else None
    check_frame_num(args.frame_num, task)
    check_steps(args.sample_steps, args.expert_steps, task)
    check_shift(args.sample_shift)
    check_guide_scale(args.sample_guide_scale, task)
    args.base_seed = check_seed(args.base_seed)
    args.loras = [parse_lora(spec) for spec in args.lora]
    check_lora_support(args.loras, task)
    check_device(args.device)
    check_memory_flags(args.memory_mode, args.offload_model, args.offload_dir, task)
    _resolve_outputs(args, prompts)
    if args.device == "cpu" and not args.no_memory_check:
        check_cli_memory(args, accelerator_bytes=None, on_cpu=True)


def _resolve_outputs(args: argparse.Namespace, prompts: list[str] | None) -> None:
    if prompts is None:
        if args.output_dir is not None:
            raise CliError("--output_dir", "--output_dir is for --prompts (one video per prompt); use --output")
        args.output = args.output or f"wan22_{time.strftime('%Y%m%d_%H%M%S')}.mp4"
        check_output(args.output, args.overwrite)
        return
    if args.output is not None:
        raise CliError("--output", "--output names one video; with --prompts the videos are <output_dir>/<index>.mp4 "
                                   "(use --output_dir)")
    args.output_dir = args.output_dir or Path(DEFAULT_OUTPUT_DIR)
    if args.output_dir.exists() and not args.output_dir.is_dir():
        raise CliError("--output_dir", f"--output_dir {str(args.output_dir)!r} is a file")
    if os.environ.get("RANK", "0") != "0":  # under `accelerate launch` the first process checks; the others may
        return                              # already be writing their videos when a late one starts
    for i in range(len(prompts)):
        check_output(args.output_dir / f"{i}.mp4", args.overwrite, "--output_dir")


def check_cli_memory(args: argparse.Namespace, accelerator_bytes: float | None, on_cpu: bool, spec=None) -> None:
    """The memory planner's verdict on this run (see `memory_check.check_memory`); ``spec`` defaults to the sizes
    read from the ``--model`` folder's config files (``tiny`` passes the built pipeline's)."""
    spec = spec if spec is not None else (None if is_tiny(args.model) else folder_spec(args.model, args.task))
    if spec is None:
        return
    d = get_variant(args.task)
    width, height = getattr(args, "resolution", None) or args.size or (d.width, d.height)
    frames = (args.infer_frames or d.num_frames) if args.task == "s2v-14B" else (args.frame_num or d.num_frames)
    mode = args.memory_mode or ("expert_offload" if args.offload_model else "none")
    check_memory(spec, width=width, height=height, frames=frames, mode=mode, on_cpu=on_cpu,
                 weight_bytes=4 if args.dtype == "fp32" else 2, t5_cpu=args.t5_cpu,
                 accelerator_bytes=accelerator_bytes,
                 size_flags=("--size", "--infer_frames" if args.task == "s2v-14B" else "--frame_num"))
    args.memory_checked = True


def validate_demo(args: argparse.Namespace) -> None:
    check_frame_num(args.frame_num, "t2v-A14B")
    check_steps(args.sample_steps, None, "t2v-A14B")
    args.base_seed = check_seed(args.base_seed)
    check_output(args.output, args.overwrite)


def validate_convert(args: argparse.Namespace) -> None:
    """Source and destination of `wan22 convert`, before torch: the layout fits the variant, and an ``--overwrite``
    could not delete the source, the folder the user is in, or a parent of either."""
    src, dst = Path(args.src), Path(args.dst)
    variant = check_convert_source(args)
    if args.variant not in ("auto", variant):
        raise CliError("--variant", f"--variant {args.variant}: {src} holds a {variant} checkpoint (use auto)")
    if variant == "s2v-14B" and args.layout == "diffusers":
        raise CliError("--layout", "--layout diffusers: S2V-14B has no stock diffusers pipeline; use --layout wan22")
    src_abs, dst_abs, cwd = src.resolve(), dst.resolve(), Path.cwd().resolve()
    if dst_abs == src_abs or src_abs in dst_abs.parents:
        raise CliError("DST", f"DST {str(dst)!r} must not be the source folder or inside it")
    if dst.exists() and not args.overwrite:
        raise CliError("DST", f"DST {str(dst)!r} exists; pass --overwrite to replace it or choose another folder")
    if dst.exists() and (dst_abs in src_abs.parents or dst_abs == cwd or dst_abs in cwd.parents
                         or dst_abs == Path(dst_abs.anchor)):
        raise CliError("DST", f"DST {str(dst)!r} holds the source or the current folder; --overwrite would delete "
                              "them: choose a new folder")
    if dst.exists() and not dst.is_dir():
        raise CliError("DST", f"DST {str(dst)!r} is a file, not a folder")


def check_convert_source(args: argparse.Namespace) -> str:
    """The variant of SRC: an official folder, or TurboDiffusion's TurboWan2.2 files (converted as i2v-A14B to our
    layout; resolves ``args.turbo_quantized``, ``None`` for official folders)."""
    args.turbo_quantized = turbo_quantized(str(args.src), args.quant_linear)
    if args.turbo_quantized is None:
        given = turbo_only_flags_given(args)
        if given:
            raise CliError(given[0], f"{given[0]} applies to TurboWan2.2 folders only")
        try:
            return detect_official_variant(Path(args.src))
        except (ValueError, OSError) as e:
            raise CliError("SRC", f"SRC: {e}") from None
    if args.layout != "wan22":
        raise CliError("--layout", "--layout diffusers: stock diffusers has no TurboDiffusion pipeline; TurboWan2.2 "
                                   "folders convert to --layout wan22")
    check_sla_topk(args.sla_topk)
    args.sla_topk = TURBO_SLA_TOPK if args.sla_topk is None else args.sla_topk
    check_turbo_sources(str(args.src), args.components)
    return "i2v-A14B"


def validate_info(args: argparse.Namespace) -> None:
    if not Path(args.model).is_dir():
        raise CliError("MODEL", f"{args.model!r} is not a folder")


def validate_plan(args: argparse.Namespace) -> None:
    name = args.model.lower()
    if variant_spec(name) is not None:  # a variant name (or "a14b"), not a folder
        task = {"a14b": "t2v-A14B"}.get(name) or next(t for t in VARIANTS if t.lower() == name)
    else:
        task = resolve_task(args.model, None)
    args.task = task
    d = get_variant(task)
    args.size = args.size or (d.width, d.height)
    args.frame_num = args.frame_num or d.num_frames
    if task == "s2v-14B":
        if args.frame_num % 4:
            raise CliError("--frame_num", f"--frame_num for s2v-14B is frames per clip, a multiple of 4; got "
                                          f"{args.frame_num}")
    else:
        check_frame_num(args.frame_num, task)
    check_size(args.size, task, task in IMAGE_TASKS)


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1): the page is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def check_host(host: str, port: int, allow_remote: bool) -> str | None:
    """`wan22 ui --host`: a non-local address needs ``--allow-remote``; returns the warning to print then."""
    if is_loopback(host):
        return None
    if not allow_remote:
        raise CliError("--host", f"--host {host} would serve the page to other machines (no login, it runs models "
                                 "and writes files); add --allow-remote to do that on purpose")
    return (f"wan22 ui: WARNING: serving on {host}:{port}, reachable from other machines; anyone who reaches it can "
            "run models and write videos here")


def validate_ui(args: argparse.Namespace) -> None:
    """`wan22 ui`: the host, the model folder (or ``tiny``), the TurboWan2.2 flags (as `generate` checks them;
    resolves ``args.turbo_quantized``) and the device name."""
    check_host(args.host, args.port, args.allow_remote)
    if not is_tiny(args.model):
        resolve_task(args.model, None)
    turbo = argparse.Namespace(model=args.model, components=args.components, quant_linear=args.quant_linear,
                               sla_topk=args.sla_topk, sample_solver=None, sample_shift=None, expert_steps=None,
                               sample_steps=None, lora=[])
    check_turbo_flags(turbo)
    args.turbo_quantized, args.turbo = turbo.turbo_quantized, turbo.turbo
    check_device(args.device)


VALIDATORS = {"generate": validate_generate, "demo": validate_demo, "convert": validate_convert,
              "info": validate_info, "plan": validate_plan, "ui": validate_ui}


def validate_command(args: argparse.Namespace) -> argparse.Namespace:
    """Run the torch-free checks of ``args.command`` (raises `CliError`); returns ``args`` with what they resolved."""
    VALIDATORS[args.command](args)
    return args

