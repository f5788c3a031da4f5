"""`wan22` command line: `demo`, `generate`, `info`.

Usage errors and invalid values print one line naming the bad value and what is accepted, and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .memory_planner import MODES  # light: no torch import

EXIT_USAGE = 2

EPILOG = """examples:
  wan22 demo                                     # tiny random-weight pipeline, writes wan22_demo.mp4
  wan22 generate --model ./Wan2.2-T2V-A14B --prompt "Two cats boxing on a stage." --size 832*480
  wan22 generate --model ./Wan2.2-I2V-A14B --image cat.jpg --prompt "A white cat surfing."
  wan22 generate --model ./Wan2.2-TI2V-5B --prompt "A red car at sunset." [--image car.jpg]
  wan22 generate --model ./Wan2.2-S2V-14B --image face.png --audio speech.wav --prompt "A woman is singing."
  wan22 generate --model ./Wan2.2-T2V-A14B --prompt "..." --lora hi.safetensors@high --lora lo.safetensors@low
        --expert-steps 2 2 --sample_guide_scale 1   # the two-file 4-step LoRAs: 2 + 2 steps, no CFG
  wan22 generate --model tiny --task s2v-14B --image face.png --audio speech.wav --prompt "x"   # no weights needed
  wan22 convert ./Wan2.2-T2V-A14B ./Wan2.2-T2V-A14B-wan22 --verify
  wan22 info ./Wan2.2-T2V-A14B
  wan22 plan --size 1280*720 --frame_num 81          # memory of each offload mode for T2V-A14B
  wan22 plan --precision_table --model i2v-A14B      # which precision policies fit 24 / 40 GB
"""


class CliError(Exception):
    """A user mistake: reported as one line, exit code 2."""


def _parse_size(text: str) -> tuple[int, int]:
    """Official `--size W*H` (width first)."""
    try:
        w, h = (int(v) for v in text.lower().replace("x", "*").split("*"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must look like 1280*720 (width*height); got {text!r}") from None
    if w <= 0 or h <= 0 or w % 16 or h % 16:
        raise argparse.ArgumentTypeError(f"--size {text}: width and height must be positive multiples of 16")
    return w, h


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, no usage dump
        sys.stderr.write(f"wan22: error: {message}\n")
        sys.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="wan22", description="Wan 2.2 video generation on HuggingFace diffusers.",
                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser("demo", help="run a tiny random-weight Wan 2.2 MoE pipeline and write an mp4")
    demo.add_argument("--output", default="wan22_demo.mp4", help="mp4 path (default: %(default)s)")
    demo.add_argument("--prompt", default="Two cats boxing on a stage.")
    demo.add_argument("--size", type=_parse_size, default=(128, 128), help="W*H (default: 128*128)")
    demo.add_argument("--frame_num", type=_positive_int, default=17)
    demo.add_argument("--sample_steps", type=_positive_int, default=12)
    demo.add_argument("--base_seed", type=int, default=0)

    gen = sub.add_parser("generate", help="generate a video from a model folder (official or diffusers-format)")
    gen.add_argument("--model", required=True,
                     help="official checkpoint folder, a saved Wan22Pipeline folder, or 'tiny' (random demo weights)")
    which = gen.add_mutually_exclusive_group(required=True)
    which.add_argument("--prompt")
    which.add_argument("--prompts", type=Path, default=None,
                       help="text file, one prompt per line: writes <output_dir>/<index>.mp4 with seed "
                            "base_seed+index; under `accelerate launch --num_processes N` the prompts are split "
                            "across the processes")
    gen.add_argument("--negative_prompt", default=None, help="default: the official negative prompt")
    gen.add_argument("--size", type=_parse_size, default=None, help="W*H, e.g. 1280*720 (default: the variant's)")
    gen.add_argument("--frame_num", type=_positive_int, default=None, help="4k+1 frames (default: the variant's)")
    gen.add_argument("--sample_steps", type=_positive_int, default=None)
    gen.add_argument("--sample_shift", type=float, default=None)
    gen.add_argument("--sample_solver", choices=["unipc", "dpm++"], default="unipc")
    gen.add_argument("--sample_guide_scale", type=float, nargs="+", default=None,
                     help="one value for both experts, or two: HIGH LOW (high-noise then low-noise expert)")
    gen.add_argument("--base_seed", type=int, default=0)
    gen.add_argument("--task", choices=TASKS, default=None,
                     help="default: read from --model (official or saved folder); t2v-A14B for --model tiny")
    gen.add_argument("--image", type=Path, default=None,
                     help="i2v-A14B / ti2v-5B: first frame; s2v-14B: reference image")
    gen.add_argument("--audio", type=Path, default=None, help="s2v-14B: speech/song (any format ffmpeg reads)")
    gen.add_argument("--pose_video", type=Path, default=None, help="s2v-14B: optional pose-driving video")
    gen.add_argument("--num_clip", type=_positive_int, default=None,
                     help="s2v-14B: clips to generate (default: as many as the audio needs)")
    gen.add_argument("--infer_frames", type=_positive_int, default=None,
                     help="s2v-14B: frames per clip, a multiple of 4 (default: 80)")
    gen.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE][@EXPERT]",
                     help="LoRA safetensors; EXPERT is high, low or both (default both); repeatable")
    gen.add_argument("--expert-steps", dest="expert_steps", type=int, nargs=2, default=None, metavar=("HIGH", "LOW"),
                     help="A14B: steps on the high- and low-noise expert (e.g. 2 2 for 4-step LoRAs)")
    gen.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    gen.add_argument("--convert_model_dtype", action="store_true",
                     help="official flag; weights are always cast to --dtype here (kept for compatibility)")
    gen.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu (default: cuda if available)")
    gen.add_argument("--offload_model", action="store_true", help="model CPU offload (one expert on the GPU)")
    gen.add_argument("--t5_cpu", action="store_true", help="keep the UMT5 text encoder on the CPU (saves ~11 GB)")
    gen.add_argument("--memory_mode", choices=MODES, default=None,
                     help="memory mode (see `wan22 plan`); overrides --offload_model")
    gen.add_argument("--output", default=None, help="mp4 path (default: wan22_<time>.mp4)")
    gen.add_argument("--output_dir", default="wan22_outputs", help="with --prompts (default: %(default)s)")

    conv = sub.add_parser("convert", help="convert an official checkpoint folder to a diffusers folder (streaming)")
    add_convert_arguments(conv)

    info = sub.add_parser("info", help="describe a model folder")
    info.add_argument("model")

    plan = sub.add_parser("plan", help="predict peak accelerator memory and host RAM of each memory mode")
    add_plan_arguments(plan)
    return parser


def _report_steps(experts: list[str], timesteps: list[float]) -> None:
    for i, (e, t) in enumerate(zip(experts, timesteps)):
        print(f"  step {i:2d}  t={t:7.1f}  expert={e}")


def cmd_demo(args) -> int:
    import torch

    from .demo import build_demo_pipeline
    from .video import save_video

    width, height = args.size
    pipe = build_demo_pipeline()
    print("Built a tiny random-weight Wan 2.2 MoE pipeline (random weights: the video is noise).")
    start = time.perf_counter()
    out = pipe(args.prompt, height=height, width=width, num_frames=args.frame_num,
               num_inference_steps=args.sample_steps, generator=torch.Generator().manual_seed(args.base_seed))
    _report_steps(out.experts, out.timesteps)
    path = save_video(out.frames[0], args.output, fps=pipe.variant_defaults.fps)
    print(f"Wrote {path} ({args.frame_num} frames, {width}x{height}, {time.perf_counter() - start:.1f}s).")
    print("For real videos: wan22 generate --model ./Wan2.2-T2V-A14B --prompt \"...\"")
    return 0


TASKS = ["t2v-A14B", "i2v-A14B", "ti2v-5B", "s2v-14B"]
_CLASS_TASK = {"Wan22ImageToVideoPipeline": "i2v-A14B", "Wan22SpeechToVideoPipeline": "s2v-14B",
               "WanImageToVideoPipeline": "i2v-A14B"}


def resolve_task(model: str, task: str | None) -> str:
    """The task of ``--model``: official folders and saved pipelines say it; ``tiny`` takes ``--task``."""
    import json

    from .loading import detect_official_variant

    if model == "tiny" or model.startswith("tiny:"):
        return task or model.partition(":")[2] or "t2v-A14B"
    path = Path(model)
    if not path.is_dir():
        raise CliError(f"--model {model!r} is not a folder (download the checkpoint first) nor 'tiny'")
    if (path / "model_index.json").exists():
        index = json.loads((path / "model_index.json").read_text())
        found = _CLASS_TASK.get(index.get("_class_name"))
        if found is None:  # a text pipeline: MoE (A14B) or dense (TI2V-5B)
            found = "t2v-A14B" if index.get("transformer_2", [None])[0] or "MoE" in str(index.get("transformer")) \
                else "ti2v-5B"
        if found == "i2v-A14B" and task == "ti2v-5B":
            found = task  # Wan22ImageToVideoPipeline serves both
    else:
        found = detect_official_variant(path)
    if task is not None and task != found:
        raise CliError(f"--task {task} does not match --model {model}, which holds a {found} model")
    return found


def check_task_inputs(task: str, args) -> None:
    """Which inputs each task needs, checked before any model is loaded."""
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
    if expert not in ("high", "low", "both"):
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


def pipeline_class(task: str, with_image: bool):
    from .pipelines import Wan22ImageToVideoPipeline, Wan22Pipeline, Wan22SpeechToVideoPipeline

    if task == "s2v-14B":
        return Wan22SpeechToVideoPipeline
    return Wan22ImageToVideoPipeline if task == "i2v-A14B" or (task == "ti2v-5B" and with_image) else Wan22Pipeline


def load_task_pipeline(model: str, task: str, with_image: bool, torch_dtype):
    """The pipeline for ``task`` from ``tiny``, an official folder or a saved folder (re-wrapped if needed)."""
    from .loading import load_pipeline

    cls = pipeline_class(task, with_image)
    source = f"tiny:{task}" if model == "tiny" or model.startswith("tiny:") else model
    pipe = load_pipeline(source, torch_dtype, pipeline_cls=cls)
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


def cmd_generate(args) -> int:
    import torch

    from .video import save_video

    guide = args.sample_guide_scale
    if guide is not None and len(guide) > 2:
        raise CliError(f"--sample_guide_scale takes one or two values; got {len(guide)}")
    task = resolve_task(args.model, args.task)
    check_task_inputs(task, args)
    loras = [parse_lora(spec) for spec in args.lora]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    prompts = read_prompts(args.prompts) if args.prompts is not None else None
    if prompts is not None and args.device is None:
        device = _partial_state().device  # this process's device under `accelerate launch`
    pipe = load_task_pipeline(args.model, task, args.image is not None, dtype)
    if args.sample_solver == "dpm++" or args.sample_shift is not None:
        from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

        cls = DPMSolverMultistepScheduler if args.sample_solver == "dpm++" else UniPCMultistepScheduler
        overrides = {} if args.sample_shift is None else {"flow_shift": args.sample_shift}
        pipe.scheduler = cls.from_config(pipe.scheduler.config, **overrides)
    for i, (path, scale, expert) in enumerate(loras):
        pipe.load_lora_weights(path, adapter_name=f"lora_{i}", **({} if expert == "both" else {"expert": expert}))
    if loras:
        pipe.set_adapters([f"lora_{i}" for i in range(len(loras))], [scale for _, scale, _ in loras])
    place_pipeline(pipe, args, device)
    width, height = args.size if args.size else (None, None)
    generator = torch.Generator(device="cpu").manual_seed(args.base_seed)
    output = args.output or f"wan22_{time.strftime('%Y%m%d_%H%M%S')}.mp4"
    if task == "s2v-14B":  # official --size is the area budget; the shape follows the reference image
        from PIL import Image

        out = pipe(Image.open(args.image), str(args.audio), prompt=args.prompt, negative_prompt=args.negative_prompt,
                   max_area=None if args.size is None else width * height, num_clips=args.num_clip,
                   infer_frames=args.infer_frames, num_inference_steps=args.sample_steps,
                   guidance_scale=guide[0] if guide else None, generator=generator,
                   pose_video=None if args.pose_video is None else str(args.pose_video))
        path = save_video(out.frames[0], output, fps=out.fps, audio=out.audio, sampling_rate=out.sampling_rate)
        print(f"Wrote {path} ({out.num_clips} clips, {out.frames.shape[1]} frames, audio muxed)")
        return 0
    kwargs = dict(num_frames=args.frame_num, num_inference_steps=args.sample_steps, expert_steps=args.expert_steps)
    if guide:
        kwargs["guidance_scale"] = guide[0]
        kwargs["guidance_scale_2"] = guide[-1]
    if prompts is not None:
        if args.image is not None:
            raise CliError("--prompts runs text-to-video; drop --image")
        return generate_prompts(pipe, prompts, args.output_dir, args.base_seed, negative_prompt=args.negative_prompt,
                                height=height, width=width, **kwargs)
    if args.image is not None:
        from PIL import Image

        kwargs["image"] = Image.open(args.image)
        if args.size is not None:  # official: --size is the area budget of image-conditioned tasks
            kwargs["max_area"], width, height = width * height, None, None
    out = pipe(prompt=args.prompt, negative_prompt=args.negative_prompt, height=height, width=width,
               generator=generator, **kwargs)
    _report_steps(out.experts, out.timesteps)
    print(f"Wrote {save_video(out.frames[0], output, fps=pipe.variant_defaults.fps)}")
    return 0


# ------------------------------------------------------------------ data parallel over prompts (--prompts FILE)
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


def _partial_state():
    """accelerate's process state. On a machine without an accelerator (or under `accelerate launch --cpu`) it is
    created with ``cpu=True``, otherwise accelerate treats several launched CPU processes as independent ones."""
    import os

    import torch
    from accelerate import PartialState

    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or (
        torch.accelerator.device_count() == 0)
    return PartialState(cpu=cpu)


def generate_prompts(pipe, prompts: list[str], output_dir, base_seed: int, **call_kwargs) -> int:
    """Generate ``prompts`` split across the `accelerate` processes (one process without `accelerate launch`).

    Prompt ``i`` is generated with seed ``base_seed + i`` and written to ``<output_dir>/<i>.mp4`` by the process that
    owns it, so every video is the same whatever the number of processes.
    """
    import torch

    from .video import save_video

    state = _partial_state()
    with state.split_between_processes(list(enumerate(prompts))) as mine:
        for index, prompt in mine:
            seed = base_seed + index
            out = pipe(prompt, generator=torch.Generator(device="cpu").manual_seed(seed), **call_kwargs)
            path = save_video(out.frames[0], Path(output_dir) / f"{index}.mp4", fps=pipe.variant_defaults.fps)
            print(f"[process {state.process_index}/{state.num_processes}] prompt {index} (seed {seed}): wrote {path}")
    state.wait_for_everyone()
    return 0


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """`wan22 convert` options (shared with conversion/convert_wan22_to_diffusers.py)."""
    parser.add_argument("src", help="official Wan 2.2 folder (as downloaded)")
    parser.add_argument("dst", help="output folder (written atomically)")
    parser.add_argument("--variant", default="auto", choices=["auto", "t2v-A14B", "i2v-A14B", "ti2v-5B", "s2v-14B"])
    parser.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"],
                        help="cast floating tensors (default: keep each source tensor's dtype)")
    parser.add_argument("--layout", default="wan22", choices=["wan22", "diffusers"],
                        help="wan22: our pipeline folder; diffusers: stock WanPipeline layout (default: %(default)s)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest output shard (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    parser.add_argument("--verify", action="store_true", help="re-read DST and checksum every tensor vs its source")


def cmd_convert(args) -> int:
    from .conversion.convert import convert_checkpoint

    report = convert_checkpoint(args.src, args.dst, variant=args.variant, dtype=args.dtype, layout=args.layout,
                                max_shard_size=args.max_shard_size, overwrite=args.overwrite, verify=args.verify)
    print(report.summary())
    return 0


def cmd_info(args) -> int:
    import json

    from .configs import get_variant
    from .loading import describe_folder, detect_official_variant

    path = Path(args.model)
    if (path / "model_index.json").exists():
        index = json.loads((path / "model_index.json").read_text())
        print(f"{path}: diffusers-format pipeline {index.get('_class_name')}")
        for name, value in index.items():
            if not name.startswith("_"):
                print(f"  {name}: {value}")
    else:
        variant = detect_official_variant(path)
        d = get_variant(variant)
        print(f"{path}: official Wan 2.2 {variant} checkpoint")
        print(f"  boundary={d.boundary_ratio} shift={d.sample_shift} steps={d.sample_steps} "
              f"guidance=({d.guidance_scale}, {d.guidance_scale_2}) fps={d.fps} frames={d.num_frames} "
              f"size={d.width}*{d.height} vae={d.vae_version}")
    rows = describe_folder(path)
    print("  parameters (stored dtype):")
    for name, count, dtypes in rows:
        print(f"    {name:34s} {count:>16,d}  {'/'.join(sorted(dtypes))}")
    print(f"    {'total':34s} {sum(r[1] for r in rows):>16,d}")
    return 0


# ------------------------------------------------------------------ wan22 plan (memory planner)
def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="t2v-A14B",
                        help="'t2v-A14B' / 'i2v-A14B' / 's2v-14B' (built-in sizes of the real models) or a folder "
                             "saved by save_pretrained "
                             "(sizes counted on the meta device, no weights read)")
    parser.add_argument("--size", type=_parse_size, default=(1280, 720), help="W*H (default: 1280*720)")
    parser.add_argument("--frame_num", type=_positive_int, default=81)
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    parser.add_argument("--batched_cfg", action="store_true", help="CFG branches as one batch of 2")
    parser.add_argument("--budget_gb", type=float, default=40.0, help="accelerator budget to recommend a mode for")
    parser.add_argument("--precision", type=_parse_precision, default=None,
                        help="expert precision policy, one for both experts or HIGH,LOW (e.g. fp8, "
                             "int8-weight-only, gguf-q4_k, fp8,bf16); default: every weight in --dtype")
    parser.add_argument("--scope", choices=["all", "ffn", "attn", "ffn+attn"], default="all",
                        help="layers a quantizing policy covers (default: %(default)s)")
    parser.add_argument("--precision_table", action="store_true",
                        help="which precision policies fit 24 / 40 GB (and --budget_gb) at 832*480 and 1280*720")


def _parse_precision(text: str) -> tuple[str, str]:
    from .memory_planner import POLICY_BYTES

    parts = text.split(",")
    if len(parts) not in (1, 2) or any(p not in POLICY_BYTES for p in parts):
        raise argparse.ArgumentTypeError(f"--precision {text!r}: expected POLICY or HIGH,LOW with policies from "
                                         f"{', '.join(POLICY_BYTES)}")
    return (parts[0], parts[-1])


def _plan_spec(model: str):
    from .memory_planner import spec_from_config

    from .memory_planner import SPECS

    if model.lower() in SPECS:
        return SPECS[model.lower()]
    config = Path(model) / "transformer" / "config.json"
    if not config.exists():
        raise CliError(f"--model {model!r}: expected 't2v-A14B', 'i2v-A14B', 's2v-14B' or a saved pipeline folder with "
                       "transformer/config.json")
    import json

    cfg = json.loads(config.read_text())
    return spec_from_config(cfg, moe=cfg.get("_class_name") == "WanMoETransformer3DModel")


def cmd_plan(args) -> int:
    from .memory_planner import GB, best_mode, plan_table

    width, height = args.size
    spec = _plan_spec(args.model)
    kwargs = dict(weight_bytes=4 if args.dtype == "fp32" else 2, batched_cfg=args.batched_cfg)
    if args.precision_table:
        from .memory_planner import precision_fit_table

        budgets = sorted({24.0, 40.0, args.budget_gb})
        print(f"{args.model}, {args.frame_num} frames: fastest memory mode that fits each accelerator budget "
              f"(predicted peak GB; '-' = none fits)")
        print(precision_fit_table(spec, num_frames=args.frame_num, budgets_gb=budgets, **kwargs))
        print("Estimates (docs/memory.md, docs/quantization.md); not measured on a GPU.")
        return 0
    if args.precision is not None:
        kwargs.update(precision=args.precision, scope=args.scope)
    label = args.dtype if args.precision is None else f"{'/'.join(dict.fromkeys(args.precision))} ({args.scope})"
    print(f"{args.model}: {width}x{height}, {args.frame_num} frames, {label} (peaks, GB = 1e9 bytes)")
    print(plan_table(spec, height, width, args.frame_num, **kwargs))
    best = best_mode(spec, height, width, args.frame_num, args.budget_gb * GB, **kwargs)
    if best is None:
        print(f"No mode fits {args.budget_gb:g} GB of accelerator memory.")
    else:
        print(f"Fastest mode within {args.budget_gb:g} GB: {best.mode} ({best.accelerator_gb:.1f} GB accelerator, "
              f"{best.host_gb:.1f} GB host RAM).")
    print("Estimates from parameter counts and activation formulas (docs/memory.md); not measured on a GPU.")
    return 0


COMMANDS = {"demo": cmd_demo, "generate": cmd_generate, "convert": cmd_convert, "info": cmd_info, "plan": cmd_plan}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (CliError, ValueError, FileNotFoundError, FileExistsError) as e:
        sys.stderr.write(f"wan22: error: {e}\n")
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
