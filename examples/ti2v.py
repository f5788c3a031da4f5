"""TI2V-5B: text-to-video, or text+image-to-video with --image (Wan 2.2 VAE, 24 fps, 1280x704 by default).

    python examples/ti2v.py --model ./Wan2.2-TI2V-5B --prompt "A red car at sunset."
    python examples/ti2v.py --model ./Wan2.2-TI2V-5B --image car.jpg --prompt "A red car at sunset."
    python examples/ti2v.py --model tiny
"""

import argparse

import numpy as np
import PIL.Image
import torch

from diffusers_wan22 import Wan22ImageToVideoPipeline, load_pipeline, save_video

parser = argparse.ArgumentParser()
parser.add_argument("--model", required=True, help="official folder, diffusers folder, or 'tiny'")
parser.add_argument("--image", help="optional first frame (image mode)")
parser.add_argument("--prompt", default="A red car at sunset.")
parser.add_argument("--output", default="ti2v.mp4")
args = parser.parse_args()

tiny = args.model.startswith("tiny")
model = "tiny:ti2v-5B" if tiny else args.model
pipe = load_pipeline(model, torch.float32 if tiny else torch.bfloat16, pipeline_cls=Wan22ImageToVideoPipeline)
pipe.to("cuda" if torch.cuda.is_available() else "cpu")
size = dict(num_frames=9, num_inference_steps=6) if tiny else {}
generator = torch.Generator("cpu").manual_seed(0)
if args.image or tiny:
    image = (PIL.Image.open(args.image).convert("RGB") if args.image else
             PIL.Image.fromarray(np.linspace(0, 255, 64 * 96 * 3).reshape(96, 64, 3).astype(np.uint8)))
    out = pipe(image=image, prompt=args.prompt, max_area=64 * 96 if tiny else None, generator=generator, **size)
else:  # text mode: the same components in the text-to-video pipeline
    from diffusers_wan22 import Wan22Pipeline

    out = Wan22Pipeline(**pipe.components)(args.prompt, generator=generator, **size)
print("frames:", out.frames.shape)
save_video(out.frames[0], args.output, fps=pipe.variant_defaults.fps)
print("wrote", args.output)
