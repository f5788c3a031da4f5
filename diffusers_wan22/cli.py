"""`wan22` command line: `demo`, `generate`, `info`.

Usage errors and invalid values print one line naming the bad value and what is accepted, and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

EXIT_USAGE = 2

EPILOG = """examples:
  wan22 demo                                     # tiny random-weight pipeline, writes wan22_demo.mp4
  wan22 generate --model ./Wan2.2-T2V-A14B --prompt "Two cats boxing on a stage." --size 832*480
  wan22 info ./Wan2.2-T2V-A14B
  wan22 plan --size 1280*720 --frame_num 81          # memory of each offload mode for T2V-A14B
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
    gen.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    gen.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu (default: cuda if available)")
    gen.add_argument("--offload_model", action="store_true", help="model CPU offload (one expert on the GPU)")
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


def load_any_pipeline(model: str, torch_dtype):
    """A Wan 2.2 pipeline from ``tiny``, an official folder or a folder written by `save_pretrained`."""
    from .loading import load_pipeline

    return load_pipeline(model, torch_dtype)


def cmd_generate(args) -> int:
    import torch

    from .video import save_video

    guide = args.sample_guide_scale
    if guide is not None and len(guide) > 2:
        raise CliError(f"--sample_guide_scale takes one or two values; got {len(guide)}")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    prompts = read_prompts(args.prompts) if args.prompts is not None else None
    if prompts is not None and args.device is None:
        device = _partial_state().device  # this process's device under `accelerate launch`
    pipe = load_any_pipeline(args.model, dtype)
    if args.sample_solver == "dpm++" or args.sample_shift is not None:
        from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

        cls = DPMSolverMultistepScheduler if args.sample_solver == "dpm++" else UniPCMultistepScheduler
        overrides = {} if args.sample_shift is None else {"flow_shift": args.sample_shift}
        pipe.scheduler = cls.from_config(pipe.scheduler.config, **overrides)
    if args.offload_model:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    width, height = args.size if args.size else (None, None)
    kwargs = {}
    if guide:
        kwargs["guidance_scale"] = guide[0]
        kwargs["guidance_scale_2"] = guide[-1]
    if prompts is not None:
        return generate_prompts(pipe, prompts, args.output_dir, args.base_seed, negative_prompt=args.negative_prompt,
                                height=height, width=width, num_frames=args.frame_num,
                                num_inference_steps=args.sample_steps, **kwargs)
    out = pipe(args.prompt, negative_prompt=args.negative_prompt, height=height, width=width,
               num_frames=args.frame_num, num_inference_steps=args.sample_steps,
               generator=torch.Generator(device="cpu").manual_seed(args.base_seed), **kwargs)
    _report_steps(out.experts, out.timesteps)
    output = args.output or f"wan22_{time.strftime('%Y%m%d_%H%M%S')}.mp4"
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
    from .loading import detect_official_variant

    path = Path(args.model)
    if (path / "model_index.json").exists():
        import json

        index = json.loads((path / "model_index.json").read_text())
        print(f"{path}: diffusers-format pipeline {index.get('_class_name')}")
        for name, value in index.items():
            if not name.startswith("_"):
                print(f"  {name}: {value}")
        return 0
    variant = detect_official_variant(path)
    from .configs import get_variant

    d = get_variant(variant)
    print(f"{path}: official Wan 2.2 {variant} checkpoint")
    print(f"  boundary={d.boundary_ratio} shift={d.sample_shift} steps={d.sample_steps} "
          f"guidance=({d.guidance_scale}, {d.guidance_scale_2}) fps={d.fps} frames={d.num_frames} "
          f"size={d.width}*{d.height} vae={d.vae_version}")
    return 0


# ------------------------------------------------------------------ wan22 plan (memory planner)
def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="t2v-A14B",
                        help="'t2v-A14B' (built-in sizes of the real model) or a folder saved by save_pretrained "
                             "(sizes counted on the meta device, no weights read)")
    parser.add_argument("--size", type=_parse_size, default=(1280, 720), help="W*H (default: 1280*720)")
    parser.add_argument("--frame_num", type=_positive_int, default=81)
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    parser.add_argument("--batched_cfg", action="store_true", help="CFG branches as one batch of 2")
    parser.add_argument("--budget_gb", type=float, default=40.0, help="accelerator budget to recommend a mode for")


def _plan_spec(model: str):
    from .memory_planner import A14B, spec_from_config

    if model.lower() in ("t2v-a14b", "a14b"):
        return A14B
    config = Path(model) / "transformer" / "config.json"
    if not config.exists():
        raise CliError(f"--model {model!r}: expected 't2v-A14B' or a saved pipeline folder with transformer/config.json")
    import json

    cfg = json.loads(config.read_text())
    return spec_from_config(cfg, moe=cfg.get("_class_name") == "WanMoETransformer3DModel")


def cmd_plan(args) -> int:
    from .memory_planner import GB, best_mode, plan_table

    width, height = args.size
    spec = _plan_spec(args.model)
    kwargs = dict(weight_bytes=4 if args.dtype == "fp32" else 2, batched_cfg=args.batched_cfg)
    print(f"{args.model}: {width}x{height}, {args.frame_num} frames, {args.dtype} (peaks, GB = 1e9 bytes)")
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
