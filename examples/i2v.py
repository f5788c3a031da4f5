"""Image-to-video with Wan 2.2 I2V-A14B (the output keeps the image's aspect ratio within --max-area pixels).

    python examples/i2v.py --model ./Wan2.2-I2V-A14B --image cat.jpg --prompt "A white cat surfing."
    python examples/i2v.py --model tiny            # random-weight demo model and a synthetic image
"""

import argparse

import numpy as np
import PIL.Image
import torch

from diffusers_wan22 import Wan22ImageToVideoPipeline, load_pipeline, save_video

parser = argparse.ArgumentParser()
parser.add_argument("--model", required=True, help="official folder, diffusers folder, or 'tiny'")
parser.add_argument("--image", help="input image (required unless --model tiny)")
parser.add_argument("--prompt", default="A white cat surfing.")
parser.add_argument("--max-area", type=int, default=832 * 480, help="pixel budget of the output")
parser.add_argument("--output", default="i2v.mp4")
args = parser.parse_args()

tiny = args.model.startswith("tiny")
model = "tiny:i2v-A14B" if tiny else args.model
pipe = load_pipeline(model, torch.float32 if tiny else torch.bfloat16, pipeline_cls=Wan22ImageToVideoPipeline)
pipe.to("cuda" if torch.cuda.is_available() else "cpu")
if tiny:
    gradient = np.linspace(0, 255, 96 * 64 * 3).reshape(64, 96, 3).astype(np.uint8)
    image, size = PIL.Image.fromarray(gradient), dict(max_area=64 * 48, num_frames=9, num_inference_steps=6)
else:
    image, size = PIL.Image.open(args.image).convert("RGB"), dict(max_area=args.max_area)
out = pipe(image=image, prompt=args.prompt, generator=torch.Generator("cpu").manual_seed(0), **size)
print("experts per step:", out.experts)
save_video(out.frames[0], args.output, fps=pipe.variant_defaults.fps)
print("wrote", args.output)
