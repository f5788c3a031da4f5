"""The `wan22` argument parser, without torch: a bad flag is reported (one line, exit code 2) in a fraction of a
second, before torch, diffusers or any weight is loaded.

Flag names and meanings follow the official `generate.py` (``--size W*H``, ``--frame_num``, ``--sample_*``,
``--base_seed``, ``--offload_model``, ...).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core.memory_planner import POLICY_BYTES
from ..core.names import DTYPE_NAMES, MEMORY_MODES, PRECISION_SCOPES, RCM_SAMPLERS, SOLVERS
from ..core.variants import VARIANTS

TASKS = list(VARIANTS)
EXIT_USAGE = 2

EPILOG = """examples:
  wan22 demo                                     # tiny random-weight pipeline, writes wan22_demo.mp4
  wan22 generate --model ./Wan2.2-T2V-A14B --prompt "Two cats boxing on a stage." --size 832*480
  wan22 generate --model ./Wan2.2-I2V-A14B --image cat.jpg --prompt "A white cat surfing."
  wan22 generate --model ./Wan2.2-TI2V-5B --prompt "A red car at sunset." [--image car.jpg]
  wan22 generate --model ./Wan2.2-S2V-14B --image face.png --audio speech.wav --prompt "A woman is singing."
  wan22 generate --model ./Wan2.2-Animate-14B --src_root_path ./process_results [--replace_flag
        --use_relighting_lora] [--refert_num 5]   # the official preprocessing's output folder
  wan22 generate --model ./Wan2.2-T2V-A14B --prompt "..." --lora hi.safetensors@high --lora lo.safetensors@low
        --expert-steps 2 2 --sample_guide_scale 1   # the two-file 4-step LoRAs: 2 + 2 steps, no CFG
  wan22 generate --model tiny --task s2v-14B --image face.png --audio speech.wav --prompt "x"   # no weights needed
  wan22 convert ./Wan2.2-T2V-A14B ./Wan2.2-T2V-A14B-wan22 --verify
  wan22 generate --model ./TurboWan2.2 --components ./Wan2.2-I2V-A14B --image cat.jpg --prompt "A cat surfing."
        # TurboDiffusion's 4-step experts (add --quant_linear for the -quant files, --sample_solver ode for --ode)
  wan22 info ./Wan2.2-T2V-A14B
  wan22 plan --size 1280*720 --frame_num 81          # memory of each offload mode for T2V-A14B
  wan22 plan --precision_table --model i2v-A14B      # which precision policies fit 24 / 40 GB
  wan22 ui --model ./Wan2.2-T2V-A14B                 # a local web page (http://127.0.0.1:7860)
"""


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


def _parse_precision(text: str) -> tuple[str, str]:
    parts = text.split(",")
    if len(parts) not in (1, 2) or any(p not in POLICY_BYTES for p in parts):
        raise argparse.ArgumentTypeError(f"--precision {text!r}: expected POLICY or HIGH,LOW with policies from "
                                         f"{', '.join(POLICY_BYTES)}")
    return (parts[0], parts[-1])


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
    which = gen.add_mutually_exclusive_group()  # one is required, except for animate-14B (official default prompt)
    which.add_argument("--prompt")
    which.add_argument("--prompts", type=Path, default=None,
                       help="text file, one prompt per line: writes <output_dir>/<index>.mp4 with seed "
                            "base_seed+index; under `accelerate launch --num_processes N` the prompts are split "
                            "across the processes")
    gen.add_argument("--negative_prompt", default=None, help="default: the official negative prompt")
    gen.add_argument("--size", type=_parse_size, default=None, help="W*H, e.g. 1280*720 (default: the variant's)")
    gen.add_argument("--frame_num", type=_positive_int, default=None,
                     help="4k+1 frames (default: the variant's); animate-14B: frames per clip (default: 77)")
    gen.add_argument("--sample_steps", type=_positive_int, default=None)
    gen.add_argument("--sample_shift", type=float, default=None)
    gen.add_argument("--sample_solver", choices=SOLVERS + RCM_SAMPLERS, default=None,
                     help="unipc (default) / dpm++; TurboWan2.2 folders: sde (default) / ode")
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
    gen.add_argument("--src_root_path", type=Path, default=None,
                     help="animate-14B: the official preprocessing output (src_ref.png, src_pose.mp4, src_face.mp4 "
                          "[, src_bg.mp4, src_mask.mp4])")
    gen.add_argument("--refert_num", type=int, default=None,
                     help="animate-14B: frames each clip takes from the previous one, 1 or 5 (default: 1)")
    gen.add_argument("--replace_flag", action="store_true", help="animate-14B: replace the person (needs src_bg/mask)")
    gen.add_argument("--use_relighting_lora", action="store_true",
                     help="animate-14B: apply relighting_lora.ckpt (the official setting for --replace_flag)")
    gen.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE][@EXPERT]",
                     help="LoRA safetensors; EXPERT is high, low or both (default both); repeatable")
    gen.add_argument("--expert-steps", dest="expert_steps", type=int, nargs=2, default=None, metavar=("HIGH", "LOW"),
                     help="A14B: steps on the high- and low-noise expert (e.g. 2 2 for 4-step LoRAs)")
    gen.add_argument("--dtype", choices=DTYPE_NAMES, default="bf16")
    gen.add_argument("--convert_model_dtype", action="store_true",
                     help="official flag; weights are always cast to --dtype here (kept for compatibility)")
    gen.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu (default: cuda if available)")
    gen.add_argument("--offload_model", action="store_true", help="model CPU offload (one expert on the GPU)")
    gen.add_argument("--t5_cpu", action="store_true", help="keep the UMT5 text encoder on the CPU (saves ~11 GB)")
    gen.add_argument("--memory_mode", choices=MEMORY_MODES, default=None,
                     help="memory mode (see `wan22 plan`); overrides --offload_model")
    add_turbo_arguments(gen)
    gen.add_argument("--output", default=None, help="mp4 path (default: wan22_<time>.mp4)")
    gen.add_argument("--output_dir", default="wan22_outputs", help="with --prompts (default: %(default)s)")

    conv = sub.add_parser("convert", help="convert an official checkpoint folder to a diffusers folder (streaming)")
    add_convert_arguments(conv)

    info = sub.add_parser("info", help="describe a model folder")
    info.add_argument("model")

    plan = sub.add_parser("plan", help="predict peak accelerator memory and host RAM of each memory mode")
    add_plan_arguments(plan)

    ui = sub.add_parser("ui", help="a local web page for every task (needs: pip install \"diffusers-wan22[ui]\")")
    add_ui_arguments(ui)
    return parser


def add_ui_arguments(parser: argparse.ArgumentParser) -> None:
    """`wan22 ui` options."""
    parser.add_argument("--model", default="tiny",
                        help="official checkpoint folder or saved pipeline folder (one tab for its task), or 'tiny' "
                             "(random demo weights, every task; default)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: %(default)s, this machine "
                                                            "only)")
    parser.add_argument("--port", type=_positive_int, default=7860, help="default: %(default)s")
    parser.add_argument("--allow-remote", "--allow_remote", dest="allow_remote", action="store_true",
                        help="required for a --host other than localhost/127.0.0.1/::1 (the page has no login)")
    parser.add_argument("--output_dir", default="wan22_outputs", help="where videos are written (default: "
                                                                      "%(default)s)")
    parser.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu (default: cuda if available)")


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """`wan22 convert` options (shared with conversion/convert_wan22_to_diffusers.py)."""
    parser.add_argument("src", help="official Wan 2.2 folder (as downloaded)")
    parser.add_argument("dst", help="output folder (written atomically)")
    parser.add_argument("--variant", default="auto", choices=["auto", *TASKS])
    parser.add_argument("--dtype", default=None, choices=DTYPE_NAMES,
                        help="cast floating tensors (default: keep each source tensor's dtype)")
    parser.add_argument("--layout", default="wan22", choices=["wan22", "diffusers"],
                        help="wan22: our pipeline folder; diffusers: stock WanPipeline layout (default: %(default)s)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest output shard (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    parser.add_argument("--verify", action="store_true", help="re-read DST and checksum every tensor vs its source")
    add_turbo_arguments(parser)


def add_turbo_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of TurboDiffusion's TurboWan2.2-I2V-A14B folders (`generate` and `convert`)."""
    parser.add_argument("--components", type=Path, default=None,
                        help="TurboWan2.2 folder without umT5 / tokenizer / Wan2.1 VAE: the official Wan2.2-I2V-A14B "
                             "folder to take them from")
    parser.add_argument("--quant_linear", action="store_true",
                        help="TurboWan2.2: use the W8A8 '-quant' expert files (default: the plain ones when present)")
    parser.add_argument("--sla_topk", type=float, default=0.1,
                        help="TurboWan2.2: fraction of key blocks SLA keeps (default: %(default)s)")


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="t2v-A14B",
                        help="'t2v-A14B' / 'i2v-A14B' / 's2v-14B' / 'animate-14B' (built-in sizes of the real models; "
                             "animate: --frame_num is frames per clip, e.g. 77) or a folder "
                             "saved by save_pretrained "
                             "(sizes counted on the meta device, no weights read)")
    parser.add_argument("--size", type=_parse_size, default=(1280, 720), help="W*H (default: 1280*720)")
    parser.add_argument("--frame_num", type=_positive_int, default=81)
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default="bf16")
    parser.add_argument("--batched_cfg", action="store_true", help="CFG branches as one batch of 2")
    parser.add_argument("--budget_gb", type=float, default=40.0, help="accelerator budget to recommend a mode for")
    parser.add_argument("--precision", type=_parse_precision, default=None,
                        help="expert precision policy, one for both experts or HIGH,LOW (e.g. fp8, "
                             "int8-weight-only, gguf-q4_k, fp8,bf16); default: every weight in --dtype")
    parser.add_argument("--scope", choices=PRECISION_SCOPES, default="all",
                        help="layers a quantizing policy covers (default: %(default)s)")
    parser.add_argument("--precision_table", action="store_true",
                        help="which precision policies fit 24 / 40 GB (and --budget_gb) at 832*480 and 1280*720")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (exits with code 2 and one line on a usage error)."""
    return build_parser().parse_args(argv)
