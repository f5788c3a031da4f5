"""`wan22 generate`: one video (or a prompt file split across `accelerate` processes) from any model folder."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from accelerate import PartialState
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler
from PIL import Image

from ..core.animate import source_folder_files
from ..pipelines import (
    Wan22AnimatePipeline, Wan22ImageToVideoPipeline, Wan22Pipeline, Wan22SpeechToVideoPipeline, load_pipeline,
)
from ..schedulers.scheduling_rcm import RCMScheduler
from ..utils.video import save_video
from .demo import report_steps
from .validate import CliError, check_task_inputs, parse_lora, read_prompts, resolve_task, turbo_quantized

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def pipeline_class(task: str, with_image: bool):
    if task == "s2v-14B":
        return Wan22SpeechToVideoPipeline
    if task == "animate-14B":
        return Wan22AnimatePipeline
    return Wan22ImageToVideoPipeline if task == "i2v-A14B" or (task == "ti2v-5B" and with_image) else Wan22Pipeline


def load_task_pipeline(model: str, task: str, with_image: bool, torch_dtype, **kwargs):
    """The pipeline for ``task`` from ``tiny``, an official folder, a saved folder (re-wrapped if needed) or a
    TurboWan2.2 folder; ``kwargs`` go to the loader (animate-14B: ``use_relighting_lora``; TurboWan2.2: the
    `from_turbo` options)."""
    cls = pipeline_class(task, with_image)
    source = f"tiny:{task}" if model == "tiny" or model.startswith("tiny:") else model
    pipe = load_pipeline(source, torch_dtype, pipeline_cls=cls, **kwargs)
    if not isinstance(pipe, cls):  # e.g. a saved TI2V text pipeline used with --image
        pipe = cls(**pipe.components)
    return pipe


def place_pipeline(pipe, args, device) -> None:
    text_encoder = pipe.text_encoder
    if args.t5_cpu:  # offload hooks must not adopt it: take it out of the pipeline while placing the rest
        pipe.text_encoder = None
    if args.memory_mode is not None:
        pipe.enable_memory_mode(args.memory_mode, device=device)
    elif args.offload_model:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    if args.t5_cpu:
        pipe.text_encoder = text_encoder.to("cpu")  # prompts are then encoded on the CPU, embeddings moved over


def set_scheduler(pipe, solver: str | None, shift: float | None) -> None:
    """``--sample_solver`` / ``--sample_shift``: the official solvers on the official grid (see schedulers/);
    TurboWan2.2 experts take the rCM sampler's ``sde`` (default) or ``ode``."""
    if getattr(pipe, "is_turbo", False):
        if solver in ("unipc", "dpm++") or shift is not None:
            raise CliError("TurboWan2.2 experts sample with the rCM sampler: --sample_solver sde or ode, no "
                           "--sample_shift")
        if solver is not None:
            pipe.scheduler = RCMScheduler.from_config(pipe.scheduler.config, sampler=solver)
        return
    if solver in ("sde", "ode"):
        raise CliError(f"--sample_solver {solver} is the rCM sampler of TurboWan2.2 folders; use unipc or dpm++")
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
    """`wan22 generate`: check every input, load the pipeline, place it, generate, write the mp4."""
    guide = args.sample_guide_scale
    if guide is not None and len(guide) > 2:
        raise CliError(f"--sample_guide_scale takes one or two values; got {len(guide)}")
    task = resolve_task(args.model, args.task)
    check_task_inputs(task, args)
    loras = [parse_lora(spec) for spec in args.lora]
    prompts = read_prompts(args.prompts) if args.prompts is not None else None
    if prompts is not None and args.image is not None:
        raise CliError("--prompts runs text-to-video; drop --image")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if prompts is not None and args.device is None:
        device = _partial_state().device  # this process's device under `accelerate launch`
    extra = {"use_relighting_lora": True} if args.use_relighting_lora else {}
    quantized = turbo_quantized(args.model, args.quant_linear)
    if quantized is None and args.components is not None:
        raise CliError("--components applies to TurboWan2.2 folders only")
    if quantized is not None:
        extra.update(quantized=quantized, components=args.components, sla_topk=args.sla_topk)
    pipe = load_task_pipeline(args.model, task, args.image is not None, DTYPES[args.dtype], **extra)
    set_scheduler(pipe, args.sample_solver, args.sample_shift)
    load_loras(pipe, loras)
    place_pipeline(pipe, args, device)
    generator = torch.Generator(device="cpu").manual_seed(args.base_seed)
    output = args.output or f"wan22_{time.strftime('%Y%m%d_%H%M%S')}.mp4"
    if task == "s2v-14B":
        return generate_s2v(pipe, args, generator, output)
    if task == "animate-14B":
        return generate_animate(pipe, args, generator, output)
    kwargs = call_kwargs(args)
    if prompts is not None:
        return generate_prompts(pipe, prompts, args.output_dir, args.base_seed, negative_prompt=args.negative_prompt,
                                **kwargs)
    out = pipe(prompt=args.prompt, negative_prompt=args.negative_prompt, generator=generator, **kwargs)
    report_steps(out.experts, out.timesteps)
    print(f"Wrote {save_video(out.frames[0], output, fps=pipe.variant_defaults.fps)}")
    return 0


def call_kwargs(args) -> dict:
    """The pipeline call arguments of the text/image tasks (official meaning: for image-conditioned tasks
    ``--size`` is the area budget, the shape follows the image)."""
    guide = args.sample_guide_scale
    kwargs = dict(num_frames=args.frame_num, num_inference_steps=args.sample_steps, expert_steps=args.expert_steps)
    if guide:
        kwargs["guidance_scale"], kwargs["guidance_scale_2"] = guide[0], guide[-1]
    width, height = args.size if args.size else (None, None)
    if args.image is not None:
        kwargs["image"] = Image.open(args.image)
        if args.size is not None:
            kwargs["max_area"], width, height = width * height, None, None
    return dict(kwargs, height=height, width=width)


def generate_s2v(pipe, args, generator, output) -> int:
    """Speech-to-video: the official ``--size`` is the area budget; the shape follows the reference image."""
    guide = args.sample_guide_scale
    out = pipe(Image.open(args.image), str(args.audio), prompt=args.prompt, negative_prompt=args.negative_prompt,
               max_area=None if args.size is None else args.size[0] * args.size[1], num_clips=args.num_clip,
               infer_frames=args.infer_frames, num_inference_steps=args.sample_steps,
               guidance_scale=guide[0] if guide else None, generator=generator,
               pose_video=None if args.pose_video is None else str(args.pose_video))
    path = save_video(out.frames[0], output, fps=out.fps, audio=out.audio, sampling_rate=out.sampling_rate)
    print(f"Wrote {path} ({out.num_clips} clips, {out.frames.shape[1]} frames, audio muxed)")
    return 0


def generate_animate(pipe, args, generator, output) -> int:
    """Animate-14B from the official preprocessing folder (official flags: ``--replace_flag``, ``--refert_num``,
    ``--frame_num`` = frames per clip); the video takes the pose video's size and length."""
    guide = args.sample_guide_scale
    out = pipe(**source_folder_files(args.src_root_path, args.replace_flag),
               mode="replace" if args.replace_flag else "animate", prompt=args.prompt,
               negative_prompt=args.negative_prompt, segment_frame_length=args.frame_num,
               prev_segment_conditioning_frames=args.refert_num or 1, num_inference_steps=args.sample_steps,
               guidance_scale=guide[0] if guide else None, generator=generator)
    path = save_video(out.frames[0], output, fps=out.fps)
    print(f"Wrote {path} ({out.num_clips} clips, {len(out.frames[0])} frames)")
    return 0


# ------------------------------------------------------------------ data parallel over prompts (--prompts FILE)
def _partial_state():
    """accelerate's process state. On a machine without an accelerator (or under `accelerate launch --cpu`) it is
    created with ``cpu=True``, otherwise accelerate treats several launched CPU processes as independent ones."""
    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or (
        torch.accelerator.device_count() == 0)
    return PartialState(cpu=cpu)


def generate_prompts(pipe, prompts: list[str], output_dir, base_seed: int, **call_kwargs) -> int:
    """Generate ``prompts`` split across the `accelerate` processes (one process without `accelerate launch`).

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
