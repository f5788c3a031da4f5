"""T2V-A14B with a memory mode: one expert on the accelerator (expert_offload), block-level group offload, or lazy
experts (host RAM holds one expert). `wan22 plan` predicts what each mode needs; docs/memory.md has the table.

    python examples/low_memory.py --model ./Wan2.2-T2V-A14B-wan22 --mode group_offload --offload-dir /nvme/wan
    python examples/low_memory.py --model tiny --mode expert_offload
"""

import argparse

import torch

from diffusers_wan22 import MEMORY_MODES, load_pipeline, save_video

parser = argparse.ArgumentParser()
parser.add_argument("--model", required=True, help="official folder, diffusers folder, or 'tiny'")
parser.add_argument("--mode", choices=MEMORY_MODES, default="expert_offload")
parser.add_argument("--offload-dir", default=None, help="group_offload: spill groups to this disk folder")
parser.add_argument("--prompt", default="Two cats boxing on a stage.")
parser.add_argument("--output", default="low_memory.mp4")
args = parser.parse_args()

tiny = args.model.startswith("tiny")
pipe = load_pipeline(args.model, torch.float32 if tiny else torch.bfloat16)
device = "cuda" if torch.cuda.is_available() else "cpu"  # on CPU the same hooks move weights CPU <-> CPU
options = {"offload_to_disk_path": args.offload_dir} if args.mode == "group_offload" else {}
if args.mode == "lazy_experts" and tiny:  # lazy experts read one expert at a time from a saved folder
    import tempfile

    folder = tempfile.mkdtemp()
    pipe.save_pretrained(folder)
    pipe = type(pipe).from_pretrained(folder, lazy_experts=True)
    options = {}
pipe.enable_memory_mode(args.mode, device=device, **options)
call = dict(height=64, width=64, num_frames=9, num_inference_steps=6) if tiny else dict(height=480, width=832)
out = pipe(args.prompt, generator=torch.Generator("cpu").manual_seed(0), **call)
print("experts per step:", out.experts)
save_video(out.frames[0], args.output, fps=pipe.variant_defaults.fps)
print("wrote", args.output)
