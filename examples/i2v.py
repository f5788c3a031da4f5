"""Image-to-video with Wan 2.2 I2V-A14B: the output keeps the image's aspect ratio within the --size area.
Flags are those of `wan22 generate`.

    python examples/i2v.py --model ./Wan2.2-I2V-A14B --image cat.jpg --prompt "A white cat surfing." --size 832*480
    python examples/i2v.py --model tiny            # random-weight demo model and a synthetic image
"""

import numpy as np
import PIL.Image
import torch

from diffusers_wan22 import Wan22ImageToVideoPipeline, load_pipeline, parse_example_args, save_video

args = parse_example_args(__doc__, ["model", "image", "prompt", "size", "frame_num", "sample_steps", "base_seed",
                                    "output", "overwrite"], task="i2v-A14B", prompt="A white cat surfing.",
                          output="i2v.mp4")
tiny = args.model.startswith("tiny")
pipe = load_pipeline(args.model, torch.float32 if tiny else torch.bfloat16, pipeline_cls=Wan22ImageToVideoPipeline)
pipe.to("cuda" if torch.cuda.is_available() else "cpu")
if args.image is None:  # --model tiny without --image: a synthetic 96x64 gradient
    image = PIL.Image.fromarray(np.linspace(0, 255, 96 * 64 * 3).reshape(64, 96, 3).astype(np.uint8))
else:
    image = PIL.Image.open(args.image).convert("RGB")
out = pipe(image=image, prompt=args.prompt, max_area=None if args.size is None else args.size[0] * args.size[1],
           num_frames=args.frame_num, num_inference_steps=args.sample_steps,
           generator=torch.Generator("cpu").manual_seed(args.base_seed))
print("experts per step:", out.experts, "size:", out.frames.shape[2:4])
save_video(out.frames[0], args.output, fps=pipe.variant_defaults.fps)
print("wrote", args.output)
