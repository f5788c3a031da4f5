"""`wan22 generate`: one video (or a prompt file split across `accelerate` processes) from any model folder.

The torch-free checks (`validate.validate_generate`, which also chose the resolution of an image-conditioned task)
have run when `run` starts; what needs torch comes next, still before a weight is read: the device exists, the
memory planner's verdict against the device's memory. Only then is the pipeline loaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from accelerate import PartialState
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

from ..core.variants import get_variant
from ..loaders.file_io import DTYPES
from ..pipelines import (
    Wan22AnimatePipeline,
    Wan22ImageToVideoPipeline,
    Wan22Pipeline,
    Wan22SpeechToVideoPipeline,
    load_pipeline,
)
from ..pipelines.checks import device_memory_bytes
from ..pipelines.generate_args import loader_options, pipeline_call
from ..schedulers.scheduling_rcm import RCMScheduler
from ..utils.memory_specs import spec_from_pipeline
from ..utils.video import save_video
from .demo import report_steps
from .errors import CliError
from .validate import check_cli_memory, is_tiny


def pipeline_class(task: str, with_image: bool):
    if task == "s2v-14B":
        return Wan22SpeechToVideoPipeline
    if task == "animate-14B":
        return Wan22AnimatePipeline
    return Wan22ImageToVideoPipeline if task == "i2v-A14B" or (task == "ti2v-5B" and with_image) else Wan22Pipeline


def load_task_pipeline(model: str, task: str, with_image: bool, torch_dtype, lazy_experts: bool = False, **kwargs):
    """The pipeline for ``task`` from ``tiny``, an official folder or a saved folder of either layout (re-wrapped
    if needed) or a TurboWan2.2 folder. ``lazy_experts``: the A14B experts are not read now but one at a time at
    their first step; ``kwargs`` go to the loader (animate-14B: ``use_relighting_lora``; TurboWan2.2: the
    `from_turbo` options)."""
    cls = pipeline_class(task, with_image)
    if lazy_experts:
        kwargs["lazy_experts"] = True
    if is_tiny(model):
        pipe = load_pipeline(f"tiny:{task}", torch_dtype, pipeline_cls=cls)
    else:
        pipe = load_pipeline(model, torch_dtype, pipeline_cls=cls, **kwargs)
    if not isinstance(pipe, cls):  # e.g. a saved TI2V text pipeline used with --image
        lazy_source = getattr(pipe, "lazy_source", None)
        pipe = cls(**pipe.components)
        pipe.lazy_source = lazy_source
    return pipe


# ------------------------------------------------------------------------------------------------ before loading
def resolve_device(device: str | None, prompts: bool) -> torch.device:
    """``--device`` (default: cuda if available; this process's device under `accelerate launch --prompts`),
    refused with one line when this torch / machine does not have it."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if prompts:
            device = _partial_state().device  # this process's device under `accelerate launch`
    device = torch.device(device)
    if device.type == "cpu":
        return device
    backend = getattr(torch, device.type, None)
    if backend is None or not backend.is_available():
        built = " (this torch is built without CUDA)" if device.type == "cuda" and torch.version.cuda is None else ""
        raise CliError("--device", f"--device {device}: no {device.type} device is available{built}; use --device cpu")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if device.index is not None and device.index >= count:
        raise CliError("--device", f"--device {device}: there are {count} {device.type} device(s) (0..{count - 1})")
    return device


def accelerator_bytes(device: torch.device) -> float | None:
    """Total memory of an accelerator device (``None`` on the CPU: host RAM is checked separately)."""
    return None if device.type == "cpu" else device_memory_bytes(device)


def describe_resolution(args, resolution: tuple[int, int] | None) -> str:
    d = get_variant(args.task)
    if resolution is None:
        width, height = args.size or (d.width, d.height)
        frames = args.frame_num or d.num_frames
        plural = "s" * (frames != 1)
        return f"Resolution: {width}x{height}, {frames} frame{plural} ({frames / d.fps:.1f} s at {d.fps} fps)"
    if args.size is None and getattr(args, "turbo_quantized", None) is not None:
        return f"Resolution: {resolution[0]}x{resolution[1]}: TurboDiffusion's 720p size closest to the image's shape"
    area = "the default area" if args.size is None else f"the --size {args.size[0]}*{args.size[1]} area"
    return f"Resolution: {resolution[0]}x{resolution[1]}: the image's aspect ratio within {area}"


def check_before_loading(args, device: torch.device) -> None:
    """The check that needs torch but no weight (the memory planner against the device); prints the resolution
    (chosen from the image for the image tasks, see `validate.image_resolution`) and the seed."""
    if not args.no_memory_check and not getattr(args, "memory_checked", False):
        check_cli_memory(args, accelerator_bytes(device), on_cpu=device.type == "cpu")
    print(describe_resolution(args, args.resolution))
    print(f"Seed: {args.base_seed}")


# ------------------------------------------------------------------------------------------------ placing
def place_pipeline(pipe, args, device) -> None:
    text_encoder = pipe.text_encoder
    if args.t5_cpu:  # offload hooks must not adopt it: take it out of the pipeline while placing the rest
        pipe.text_encoder = None
    if args.memory_mode is not None:
        extra = {"offload_to_disk_path": str(args.offload_dir)} if args.offload_dir is not None else {}
        pipe.enable_memory_mode(args.memory_mode, device=device, **extra)
    elif args.offload_model:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    if args.t5_cpu:
        pipe.text_encoder = text_encoder.to("cpu")  # prompts are then encoded on the CPU, embeddings moved over


def set_scheduler(pipe, solver: str | None, shift: float | None) -> None:
    """``--sample_solver`` / ``--sample_shift``: the official solvers on the official grid (see schedulers/);
    TurboWan2.2 experts take the rCM sampler's ``sde`` (default) or ``ode``."""
    if getattr(pipe, "is_turbo", False):  # validate.check_turbo_flags refused the official solvers and --shift
        if solver is not None:
            pipe.scheduler = RCMScheduler.from_config(pipe.scheduler.config, sampler=solver)
        return
    if solver == "dpm++" or shift is not None:
        cls = DPMSolverMultistepScheduler if solver == "dpm++" else UniPCMultistepScheduler
        overrides = {} if shift is None else {"flow_shift": shift}
        pipe.scheduler = cls.from_config(pipe.scheduler.config, **overrides)


def load_loras(pipe, loras: list[tuple[str, float, str]]) -> None:
    """``--lora PATH[:SCALE][@EXPERT]``, each as its own adapter with its strength."""
    for i, (path, _, expert) in enumerate(loras):
        pipe.load_lora_weights(path, adapter_name=f"lora_{i}", **({} if expert == "both" else {"expert": expert}))
    if loras:
        pipe.set_adapters([f"lora_{i}" for i in range(len(loras))], [scale for _, scale, _ in loras])


def run(args) -> int:
    """`wan22 generate`: check what needs torch, load the pipeline, place it, generate, write the mp4."""
    device = resolve_device(args.device, prompts=args.prompts is not None)
    check_before_loading(args, device)
    lazy = args.memory_mode == "lazy_experts"
    pipe = load_task_pipeline(args.model, args.task, args.image is not None, DTYPES[args.dtype], lazy_experts=lazy,
                              **loader_options(args))
    if is_tiny(args.model) and not args.no_memory_check:  # its sizes come from the built (tiny) modules
        check_cli_memory(args, accelerator_bytes(device), device.type == "cpu", spec=spec_from_pipeline(pipe))
    set_scheduler(pipe, args.sample_solver, args.sample_shift)
    load_loras(pipe, args.loras)
    place_pipeline(pipe, args, device)
    generator = torch.Generator(device="cpu").manual_seed(args.base_seed)
    call = pipeline_call(args.task, args, generator)
    if args.prompts is not None:  # text-to-video per prompt line, each with its own seed
        return generate_prompts(pipe, args.prompt_list, args.output_dir, args.base_seed,
                                **{k: v for k, v in call.items() if k not in ("prompt", "generator")})
    out = pipe(**call)
    fps = getattr(out, "fps", None) or pipe.variant_defaults.fps
    path = save_video(out.frames[0], args.output, fps=fps, audio=getattr(out, "audio", None),
                      sampling_rate=getattr(out, "sampling_rate", 16000))
    if args.task in ("s2v-14B", "animate-14B"):
        audio = ", audio muxed" if args.task == "s2v-14B" else ""
        print(f"Wrote {path} ({out.num_clips} clips, {len(out.frames[0])} frames{audio})")
    else:
        report_steps(out.experts, out.timesteps, moe=pipe.is_moe)
        print(f"Wrote {path}")
    return 0


# ------------------------------------------------------------------ data parallel over prompts (--prompts FILE)
def _partial_state():
    """accelerate's process state. On a machine without an accelerator (or under `accelerate launch --cpu`) it is
    created with ``cpu=True``, otherwise accelerate treats several launched CPU processes as independent ones."""
    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or (
        torch.accelerator.device_count() == 0)
    return PartialState(cpu=cpu)


def generate_prompts(pipe, prompts: list[str], output_dir, base_seed: int, **call_kwargs) -> int:
    """Generate ``prompts`` (the lines of ``--prompts``, read by the checks) split across the `accelerate`
    processes (one process without `accelerate launch`).

    Prompt ``i`` is generated with seed ``base_seed + i`` and written to ``<output_dir>/<i>.mp4`` by the process that
    owns it, so every video is the same whatever the number of processes.
    """
    state = _partial_state()
    with state.split_between_processes(list(enumerate(prompts))) as mine:
        for index, prompt in mine:
            seed = base_seed + index
            out = pipe(prompt, generator=torch.Generator(device="cpu").manual_seed(seed), **call_kwargs)
            path = save_video(out.frames[0], Path(output_dir) / f"{index}.mp4", fps=pipe.variant_defaults.fps)
            print(f"[process {state.process_index}/{state.num_processes}] prompt {index} (seed {seed}): wrote {path}")
    state.wait_for_everyone()
    return 0
