"""Text-to-video with Wan 2.2 T2V-A14B. Flags are those of `wan22 generate` (--size, --frame_num, ...).

    python examples/t2v.py --model ./Wan2.2-T2V-A14B --prompt "Two cats boxing on a stage." --size 832*480
    python examples/t2v.py --model tiny            # random-weight demo model, runs anywhere in seconds
"""

import torch

from diffusers_wan22 import load_pipeline, parse_example_args, save_video

args = parse_example_args(__doc__, ["model", "prompt", "size", "frame_num", "sample_steps", "base_seed", "output",
                                    "overwrite"], prompt="Two cats boxing on a stage.", output="t2v.mp4")
pipe = load_pipeline(args.model, torch.float32 if args.model.startswith("tiny") else torch.bfloat16)
pipe.to("cuda" if torch.cuda.is_available() else "cpu")
width, height = args.size or (None, None)  # None: the official default (1280x720)
out = pipe(args.prompt, height=height, width=width, num_frames=args.frame_num, num_inference_steps=args.sample_steps,
           generator=torch.Generator("cpu").manual_seed(args.base_seed))
print("experts per step:", out.experts)
save_video(out.frames[0], args.output, fps=pipe.variant_defaults.fps)
print("wrote", args.output)
