"""TurboDiffusion's TurboWan2.2-I2V-A14B: 4 rCM steps, one expert call per step (no CFG), SLA sparse attention, and
W8A8 linears with --quant_linear. Flags are those of `wan22 generate` (--size is TurboDiffusion's area budget; without
it the 720p size closest to the image's aspect ratio). Needs the Turbo expert files (no tiny model):

    python examples/turbo.py --model ./TurboWan2.2 --components ./Wan2.2-I2V-A14B --image cat.jpg \
        --prompt "A white cat surfing at sunset." [--quant_linear] [--sample_solver ode]
"""

import PIL.Image
import torch

from diffusers_wan22 import RCMScheduler, Wan22ImageToVideoPipeline, parse_example_args, save_video

args = parse_example_args(__doc__, ["model", "components", "quant_linear", "sla_topk", "image", "prompt", "size",
                                    "frame_num", "sample_steps", "sample_solver", "base_seed", "output", "overwrite"],
                          task="i2v-A14B", required=("image",), prompt="A white cat surfing at sunset.",
                          output="turbo.mp4")
device = "cuda" if torch.cuda.is_available() else "cpu"
pipe = Wan22ImageToVideoPipeline.from_turbo(
    args.model, components=args.components, quantized=args.turbo_quantized, sla_topk=args.sla_topk,
    dtype=torch.bfloat16 if device == "cuda" else torch.float32)  # umT5 and the VAE run in bf16 either way
if args.sample_solver == "ode":  # TurboDiffusion's --ode: the deterministic rCM sampler (default: SDE)
    pipe.scheduler = RCMScheduler.from_config(pipe.scheduler.config, sampler="ode")
pipe.to(device)
width, height = args.resolution  # chosen from the image by TurboDiffusion's rules when the flags were checked
out = pipe(image=PIL.Image.open(args.image).convert("RGB"), prompt=args.prompt, height=height, width=width,
           num_frames=args.frame_num, num_inference_steps=args.sample_steps,
           generator=torch.Generator("cpu").manual_seed(args.base_seed))  # CPU seed: TurboDiffusion's CPU run
print("experts per step:", out.experts, "size:", out.frames.shape[2:4])
save_video(out.frames[0], args.output, fps=pipe.variant_defaults.fps)
print("wrote", args.output)
