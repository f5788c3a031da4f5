"""TI2V-5B: text-to-video, or text+image-to-video with --image (Wan 2.2 VAE, 24 fps, 1280x704 by default).
Flags are those of `wan22 generate` (with --image, --size is an area budget).

    python examples/ti2v.py --model ./Wan2.2-TI2V-5B --prompt "A red car at sunset."
    python examples/ti2v.py --model ./Wan2.2-TI2V-5B --image car.jpg --prompt "A red car at sunset."
    python examples/ti2v.py --model tiny
"""

import PIL.Image
import torch

from diffusers_wan22 import Wan22ImageToVideoPipeline, Wan22Pipeline, load_pipeline, parse_example_args, save_video

args = parse_example_args(__doc__, ["model", "image", "prompt", "size", "frame_num", "sample_steps", "base_seed",
                                    "output", "overwrite"], task="ti2v-5B", prompt="A red car at sunset.",
                          output="ti2v.mp4")
tiny = args.model.startswith("tiny")
pipe = load_pipeline(args.model, torch.float32 if tiny else torch.bfloat16, pipeline_cls=Wan22ImageToVideoPipeline)
pipe.to("cuda" if torch.cuda.is_available() else "cpu")
generator = torch.Generator("cpu").manual_seed(args.base_seed)
call = dict(num_frames=args.frame_num, num_inference_steps=args.sample_steps, generator=generator)
if args.image is not None:  # image mode: --size is the pixel budget, the shape follows the image
    out = pipe(image=PIL.Image.open(args.image).convert("RGB"), prompt=args.prompt,
               max_area=None if args.size is None else args.size[0] * args.size[1], **call)
else:  # text mode: the same components in the text-to-video pipeline
    width, height = args.size or (None, None)
    out = Wan22Pipeline(**pipe.components)(args.prompt, height=height, width=width, **call)
print("frames:", out.frames.shape)
save_video(out.frames[0], args.output, fps=pipe.variant_defaults.fps)
print("wrote", args.output)
