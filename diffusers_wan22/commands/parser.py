"""The `wan22` argument parser, without torch: a bad flag is reported (one line, exit code 2) in a fraction of a
second, before torch, diffusers or any weight is loaded.

Flag names and meanings follow the official `generate.py` (``--size W*H``, ``--frame_num``, ``--sample_*``,
``--base_seed``, ``--offload_model``, ...). Every flag is accepted with ``_`` or ``-`` between words
(``--frame_num`` = ``--frame-num``, ``--expert_steps`` = ``--expert-steps``); the help and the docs show the
underscore spelling. The examples (``examples/*.py``) take their flags from the same definitions
(`example_parser`), so a flag means the same thing everywhere.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .. import __version__
from ..core.memory_planner import POLICY_BYTES
from ..core.names import DTYPE_NAMES, MEMORY_MODES, PRECISION_SCOPES, RCM_SAMPLERS, SOLVERS
from ..core.variants import VARIANTS
from .errors import EXIT_USAGE

TASKS = list(VARIANTS)
PLAN_MODELS = ("t2v-A14B", "i2v-A14B", "ti2v-5B", "s2v-14B", "animate-14B")

EPILOG = """examples:
  wan22 demo                                     # tiny random-weight pipeline, writes wan22_demo.mp4
  wan22 generate --model ./Wan2.2-T2V-A14B --prompt "Two cats boxing on a stage." --size 832*480
  wan22 generate --model ./Wan2.2-I2V-A14B --image cat.jpg --prompt "A white cat surfing."
  wan22 generate --model ./Wan2.2-TI2V-5B --prompt "A red car at sunset." [--image car.jpg]
  wan22 generate --model ./Wan2.2-S2V-14B --image face.png --audio speech.wav --prompt "A woman is singing."
  wan22 generate --model ./Wan2.2-Animate-14B --src_root_path ./process_results [--replace_flag
        --use_relighting_lora] [--refert_num 5]   # the official preprocessing's output folder
  wan22 generate --model ./Wan2.2-T2V-A14B --prompt "..." --lora hi.safetensors@high --lora lo.safetensors@low
        --expert_steps 2 2 --sample_guide_scale 1   # the two-file 4-step LoRAs: 2 + 2 steps, no CFG
  wan22 generate --model tiny --task s2v-14B --image face.png --audio speech.wav --prompt "x"   # no weights needed
  wan22 convert ./Wan2.2-T2V-A14B ./Wan2.2-T2V-A14B-wan22 --verify
  wan22 generate --model ./TurboWan2.2 --components ./Wan2.2-I2V-A14B --image cat.jpg --prompt "A cat surfing."
        # TurboDiffusion's 4-step experts (add --quant_linear for the -quant files, --sample_solver ode for --ode)
  wan22 info ./Wan2.2-T2V-A14B
  wan22 plan --size 1280*720 --frame_num 81          # memory of each offload mode for T2V-A14B
  wan22 plan --precision_table --model i2v-A14B      # which precision policies fit 24 / 40 GB
  wan22 ui --model ./Wan2.2-T2V-A14B                 # a local web page (http://127.0.0.1:7860)

Every flag may be spelled with '_' or '-' (--frame_num = --frame-num). A bad value prints one line naming the flag
and exits with code 2, before any weight is read; Ctrl-C exits with code 130 and leaves no partial file.
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


def _byte_size(text: str) -> str | int:
    """``--max_shard_size``: ``5GB`` / ``500MB`` / ``50KB`` / ``10B`` or a plain byte count."""
    if text.strip().isdigit():
        return int(text)
    if not re.fullmatch(r"\s*\d+(\.\d+)?\s*(GB|MB|KB|B)\s*", text, flags=re.IGNORECASE):
        raise argparse.ArgumentTypeError(f"expected a size like 5GB, 500MB, 50KB or a byte count; got {text!r}")
    return text


def _parse_precision(text: str) -> tuple[str, str]:
    parts = text.split(",")
    if len(parts) not in (1, 2) or any(p not in POLICY_BYTES for p in parts):
        raise argparse.ArgumentTypeError(f"--precision {text!r}: expected POLICY or HIGH,LOW with policies from "
                                         f"{', '.join(POLICY_BYTES)}")
    return (parts[0], parts[-1])


class _Parser(argparse.ArgumentParser):
    """One-line errors (exit 2, no usage dump) and both spellings of every flag (``_`` or ``-``)."""

    def error(self, message: str):
        sys.stderr.write(f"wan22: error: {message}\n")
        sys.exit(EXIT_USAGE)

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(self._canonical_spellings(args), namespace)

    def _canonical_spellings(self, args: list[str]) -> list[str]:
        """``--frame-num 5`` -> ``--frame_num 5`` (and ``--x_y`` -> ``--x-y`` for a flag defined that way)."""
        known = self._option_string_actions
        out = []
        for i, token in enumerate(args):
            if token == "--":  # everything after it is a value
                return out + args[i:]
            name, eq, value = token.partition("=")
            if token.startswith("--") and name not in known:
                for alt in (name[:2] + name[2:].replace("-", "_"), name[:2] + name[2:].replace("_", "-")):
                    if alt in known:
                        token = alt + eq + value
                        break
            out.append(token)
        return out


# ------------------------------------------------------------------------------------------------ turbo flags
# TurboDiffusion's TurboWan2.2-I2V-A14B folders: shared by `generate` and `convert`.
TURBO_FLAGS: dict[str, dict] = {
    "components": dict(metavar="DIR", type=Path, default=None,
                       help="TurboWan2.2 folder without umT5 / tokenizer / Wan2.1 VAE: the official Wan2.2-I2V-A14B "
                            "folder to take them from"),
    "quant_linear": dict(action="store_true",
                         help="TurboWan2.2: use the W8A8 '-quant' expert files (default: the plain ones when present)"),
    "sla_topk": dict(metavar="FRACTION", type=float, default=None,
                     help="TurboWan2.2: fraction of key blocks SLA keeps (default: 0.1)"),
}

# ------------------------------------------------------------------------------------------------ generate flags
# name -> argparse keyword arguments. `wan22 generate` uses all of them; each example uses the ones it needs
# (`example_parser`), so the CLI and the examples share one vocabulary.
GENERATE_FLAGS: dict[str, dict] = {
    "model": dict(metavar="MODEL", required=True,
                  help="official checkpoint folder (as downloaded), a folder written by `wan22 "
                                      "convert` / save_pretrained (either layout), or 'tiny' (random demo weights)"),
    "prompt": dict(metavar="TEXT", default=None, help="the text prompt"),
    "prompts": dict(metavar="FILE", type=Path, default=None,
                    help="text file, one prompt per line: writes <output_dir>/<index>.mp4 with seed base_seed+index; "
                         "under `accelerate launch --num_processes N` the prompts are split across the processes"),
    "negative_prompt": dict(metavar="TEXT", default=None, help="default: the official negative prompt"),
    "size": dict(metavar="W*H", type=_parse_size, default=None,
                 help="W*H, e.g. 832*480 (default: the variant's, e.g. 1280*720). Text-to-video: the exact output "
                      "size. With --image (i2v, ti2v image mode, s2v) it is an AREA budget: the output keeps the "
                      "image's aspect ratio within W*H pixels; the size chosen is printed"),
    "frame_num": dict(metavar="N", type=_positive_int, default=None,
                      help="frames, 4k+1 (default: the variant's, 81 or 121); s2v uses --infer_frames; animate-14B: "
                           "frames per clip (default: 77)"),
    "sample_steps": dict(metavar="N", type=_positive_int, default=None,
                         help="denoising steps (default: the variant's, 40 or 50)"),
    "sample_shift": dict(metavar="SHIFT", type=float, default=None,
                         help="noise schedule shift, a number > 0 (default: the "
                                                        "variant's, 12 / 5 / 3)"),
    "sample_solver": dict(choices=SOLVERS + RCM_SAMPLERS, default=None,
                          help="unipc (default) / dpm++; TurboWan2.2 folders: sde (default) / ode"),
    "sample_guide_scale": dict(metavar="SCALE", type=float, nargs="+", default=None,
                               help="classifier-free guidance: one value for both experts, or two for A14B: HIGH LOW "
                                    "(high-noise then low-noise expert); 1 disables guidance"),
    "base_seed": dict(metavar="SEED", type=int, default=0,
                      help="seed of the initial noise; -1 = a random seed (printed)"),
    "task": dict(choices=TASKS, default=None,
                 help="default: read from --model (official or saved folder); t2v-A14B for --model tiny"),
    "image": dict(metavar="FILE", type=Path, default=None,
                  help="i2v-A14B / ti2v-5B: first frame; s2v-14B: reference image"),
    "audio": dict(metavar="FILE", type=Path, default=None, help="s2v-14B: speech/song (any format ffmpeg reads)"),
    "pose_video": dict(metavar="FILE", type=Path, default=None, help="s2v-14B: optional pose-driving video"),
    "num_clip": dict(metavar="N", type=_positive_int, default=None,
                     help="s2v-14B: clips to generate (default: as many as the audio needs)"),
    "infer_frames": dict(metavar="N", type=_positive_int, default=None,
                         help="s2v-14B: frames per clip, a multiple of 4 (default: 80)"),
    "src_root_path": dict(metavar="DIR", type=Path, default=None,
                          help="animate-14B: the official preprocessing output (src_ref.png, src_pose.mp4, "
                               "src_face.mp4 [, src_bg.mp4, src_mask.mp4])"),
    "refert_num": dict(metavar="N", type=int, default=None,
                       help="animate-14B: frames each clip takes from the previous one, 1 or 5 (default: 1)"),
    "replace_flag": dict(action="store_true", help="animate-14B: replace the person (needs src_bg/src_mask)"),
    "use_relighting_lora": dict(action="store_true",
                                help="animate-14B: apply relighting_lora.ckpt (the official setting for --replace_flag)"),
    "lora": dict(action="append", default=[], metavar="PATH[:SCALE][@EXPERT]",
                 help="LoRA safetensors; EXPERT is high, low or both (default both); repeatable"),
    "expert_steps": dict(type=int, nargs=2, default=None, metavar=("HIGH", "LOW"),
                         help="A14B: steps on the high- and low-noise expert (e.g. 2 2 for 4-step LoRAs)"),
    "dtype": dict(choices=DTYPE_NAMES, default="bf16"),
    "convert_model_dtype": dict(action="store_true",
                                help="official flag; weights are always cast to --dtype here (kept for compatibility)"),
    "device": dict(metavar="DEVICE", default=None,
                   help="cpu, cuda, cuda:N, mps or xpu[:N] (default: cuda if available, else cpu)"),
    "offload_model": dict(action="store_true", help="per-expert CPU offload (= --memory_mode expert_offload)"),
    "t5_cpu": dict(action="store_true", help="keep the UMT5 text encoder on the CPU (saves ~11 GB)"),
    "memory_mode": dict(choices=MEMORY_MODES, default=None, help="memory mode (see `wan22 plan`)"),
    **TURBO_FLAGS,
    "offload_dir": dict(metavar="DIR", type=Path, default=None,
                        help="--memory_mode group_offload: spill groups to this folder"),
    "no_memory_check": dict(action="store_true",
                            help="run even when the memory planner predicts the run does not fit this machine"),
    "output": dict(metavar="FILE.mp4", default=None, help="mp4 path (default: wan22_<time>.mp4)"),
    "output_dir": dict(metavar="DIR", type=Path, default=None, help="with --prompts (default: wan22_outputs)"),
    "overwrite": dict(action="store_true", help="replace an existing --output (otherwise refused)"),
}


def add_generate_arguments(parser: argparse.ArgumentParser, names=None) -> None:
    """Add the `wan22 generate` flags (all, or ``names`` in that order) to ``parser``."""
    names = list(GENERATE_FLAGS) if names is None else list(names)
    group = None
    if "prompt" in names and "prompts" in names:
        # one of them is required, except for animate-14B (official default prompt): checked by validate.py
        group = parser.add_mutually_exclusive_group()
    for name in names:
        target = group if group is not None and name in ("prompt", "prompts") else parser
        target.add_argument(f"--{name}", **GENERATE_FLAGS[name])


def generate_defaults() -> dict:
    """Every `wan22 generate` flag's default value (``model`` and the prompt are ``None``)."""
    return {name: spec.get("default", False if spec.get("action") == "store_true" else None)
            for name, spec in GENERATE_FLAGS.items()}


def example_parser(description: str, names, **defaults) -> argparse.ArgumentParser:
    """An argument parser for an example script: the `wan22 generate` flags ``names``, same meanings and spellings.

    ``defaults`` override flag defaults (e.g. ``prompt="Two cats boxing on a stage."``).
    """
    parser = _Parser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_generate_arguments(parser, [n for n in GENERATE_FLAGS if n in set(names)])
    parser.set_defaults(**defaults)
    return parser


# ------------------------------------------------------------------------------------------------ the parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="wan22", description="Wan 2.2 video generation on HuggingFace diffusers.",
                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"wan22 (diffusers-wan22) {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser("demo", help="run a tiny random-weight Wan 2.2 MoE pipeline and write an mp4")
    demo.add_argument("--output", default="wan22_demo.mp4", metavar="FILE.mp4", help="mp4 path (default: %(default)s)")
    demo.add_argument("--overwrite", action="store_true", help="replace an existing --output (otherwise refused)")
    demo.add_argument("--prompt", default="Two cats boxing on a stage.", metavar="TEXT")
    demo.add_argument("--size", type=_parse_size, default=(128, 128), metavar="W*H", help="W*H (default: 128*128)")
    demo.add_argument("--frame_num", type=_positive_int, default=17, metavar="N",
                      help="frames, 4k+1 (default: %(default)s)")
    demo.add_argument("--sample_steps", type=_positive_int, default=12, metavar="N", help="default: %(default)s")
    demo.add_argument("--base_seed", type=int, default=0, metavar="SEED", help="-1 = a random seed (printed)")

    gen = sub.add_parser("generate", help="generate a video from a model folder (official or diffusers-format)",
                         description="Generate one video (or one per line of --prompts). Every argument is checked "
                                     "before a weight is read.")
    add_generate_arguments(gen)

    conv = sub.add_parser("convert", help="convert an official checkpoint folder to a diffusers folder (streaming)")
    add_convert_arguments(conv)

    info = sub.add_parser("info", help="describe a model folder (and check that it is complete)")
    info.add_argument("model", help="official folder or a folder written by `wan22 convert` / save_pretrained")

    plan = sub.add_parser("plan", help="predict peak accelerator memory and host RAM of each memory mode")
    add_plan_arguments(plan)

    ui = sub.add_parser("ui", help="a local web page for every task (needs: pip install \"diffusers-wan22[ui]\")")
    add_ui_arguments(ui)
    parser.commands = {"demo": demo, "generate": gen, "convert": conv, "info": info, "plan": plan,  # docs/cli.md
                       "ui": ui}
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
    add_turbo_arguments(parser)  # a TurboWan2.2 folder: its Turbo image-to-video tab loads as `generate` would


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """`wan22 convert` options (shared with conversion/convert_wan22_to_diffusers.py)."""
    parser.add_argument("src", help="official Wan 2.2 folder (as downloaded)")
    parser.add_argument("dst", help="output folder (written atomically)")
    parser.add_argument("--variant", default="auto", choices=["auto", *TASKS])
    parser.add_argument("--dtype", default=None, choices=DTYPE_NAMES,
                        help="cast floating tensors (default: keep each source tensor's dtype)")
    parser.add_argument("--layout", default="wan22", choices=["wan22", "diffusers"],
                        help="wan22: our pipeline folder; diffusers: stock WanPipeline layout (default: %(default)s)")
    parser.add_argument("--max_shard_size", type=_byte_size, default="5GB", metavar="SIZE",
                        help="largest output shard (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DST (otherwise refused)")
    parser.add_argument("--verify", action="store_true", help="re-read DST and checksum every tensor vs its source")
    add_turbo_arguments(parser)


def add_turbo_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of TurboDiffusion's TurboWan2.2-I2V-A14B folders (`convert`, `ui`; `generate` has them in
    GENERATE_FLAGS)."""
    for name, spec in TURBO_FLAGS.items():
        parser.add_argument(f"--{name}", **spec)


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="t2v-A14B", metavar="MODEL",
                        help=f"{' / '.join(PLAN_MODELS)} (sizes of the real models), an official folder or a folder "
                             "written by `wan22 convert` / save_pretrained (sizes from its config files, no weights "
                             "read)")
    parser.add_argument("--size", type=_parse_size, default=None, metavar="W*H",
                        help="W*H (default: the variant's, e.g. 1280*720; 1280*704 for ti2v-5B)")
    parser.add_argument("--frame_num", type=_positive_int, default=None, metavar="N",
                        help="frames, 4k+1 (s2v-14B: frames per clip, a multiple of 4; default: the variant's)")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default="bf16")
    parser.add_argument("--batched_cfg", action="store_true", help="CFG branches as one batch of 2")
    parser.add_argument("--budget_gb", type=float, default=40.0, metavar="GB",
                        help="accelerator budget to recommend a mode for")
    parser.add_argument("--precision", type=_parse_precision, default=None, metavar="POLICY[,LOW]",
                        help="expert precision policy, one for both experts or HIGH,LOW (e.g. fp8, "
                             "int8-weight-only, gguf-q4_k, fp8,bf16); default: every weight in --dtype")
    parser.add_argument("--scope", choices=PRECISION_SCOPES, default="all",
                        help="layers a quantizing policy covers (default: %(default)s)")
    parser.add_argument("--precision_table", action="store_true",
                        help="which precision policies fit 24 / 40 GB (and --budget_gb) at 832*480 and 1280*720")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (exits with code 2 and one line on a usage error)."""
    return build_parser().parse_args(argv)
