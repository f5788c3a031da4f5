"""Text-to-video with Wan 2.2 T2V-A14B.

    python examples/t2v.py --model ./Wan2.2-T2V-A14B --prompt "Two cats boxing on a stage."
    python examples/t2v.py --model tiny            # random-weight demo model, runs anywhere in seconds
"""

import argparse

import torch

from diffusers_wan22 import load_pipeline, save_video

parser = argparse.ArgumentParser()
parser.add_argument("--model", required=True, help="official folder, diffusers folder, or 'tiny'")
parser.add_argument("--prompt", default="Two cats boxing on a stage.")
parser.add_argument("--size", default="832*480", help="W*H")
parser.add_argument("--frames", type=int, default=81)
parser.add_argument("--steps", type=int, default=40)
parser.add_argument("--output", default="t2v.mp4")
args = parser.parse_args()

tiny = args.model.startswith("tiny")
pipe = load_pipeline(args.model, torch_dtype=torch.float32 if tiny else torch.bfloat16)
pipe.to("cuda" if torch.cuda.is_available() else "cpu")
width, height = (64, 64) if tiny else map(int, args.size.split("*"))
out = pipe(args.prompt, height=height, width=width, num_frames=9 if tiny else args.frames,
           num_inference_steps=6 if tiny else args.steps, generator=torch.Generator("cpu").manual_seed(0))
print("experts per step:", out.experts)
save_video(out.frames[0], args.output, fps=pipe.variant_defaults.fps)
print("wrote", args.output)
