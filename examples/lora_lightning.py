"""4-step distilled Wan 2.2 with the two-file (high/low) Lightning-style LoRAs: 2 + 2 steps, no CFG.

    python examples/lora_lightning.py --model ./Wan2.2-T2V-A14B \
        --high ./high_noise_model.safetensors --low ./low_noise_model.safetensors
    python examples/lora_lightning.py --model tiny   # writes random tiny LoRAs first, so it runs anywhere
"""

import argparse
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from diffusers_wan22 import load_pipeline, save_video

parser = argparse.ArgumentParser()
parser.add_argument("--model", required=True, help="official folder, diffusers folder, or 'tiny'")
parser.add_argument("--high", help="LoRA file for the high-noise expert")
parser.add_argument("--low", help="LoRA file for the low-noise expert")
parser.add_argument("--prompt", default="Two cats boxing on a stage.")
parser.add_argument("--output", default="lightning.mp4")
args = parser.parse_args()

tiny = args.model.startswith("tiny")
pipe = load_pipeline(args.model, torch_dtype=torch.float32 if tiny else torch.bfloat16)
pipe.to("cuda" if torch.cuda.is_available() else "cpu")

if tiny:  # stand-in LoRA files in the original key format of the published pairs
    folder = Path(tempfile.mkdtemp())
    for expert in ("high", "low"):
        block = pipe.transformer.get_expert(expert).blocks
        sd = {}
        for i, b in enumerate(block):
            q = b.attn1.to_q
            sd[f"diffusion_model.blocks.{i}.self_attn.q.lora_A.weight"] = torch.randn(4, q.in_features) * 0.01
            sd[f"diffusion_model.blocks.{i}.self_attn.q.lora_B.weight"] = torch.randn(q.out_features, 4) * 0.01
        save_file(sd, folder / f"{expert}.safetensors")
        setattr(args, expert, str(folder / f"{expert}.safetensors"))

pipe.load_lora_weights(args.high, adapter_name="lightning_high", expert="high")
pipe.load_lora_weights(args.low, adapter_name="lightning_low", expert="low")
pipe.set_adapters("lightning_high", 1.0, expert="high")
pipe.set_adapters("lightning_low", 1.0, expert="low")

size = dict(height=64, width=64, num_frames=9) if tiny else dict(height=480, width=832, num_frames=81)
out = pipe(args.prompt, expert_steps=(2, 2), guidance_scale=1.0, guidance_scale_2=1.0, **size,
           generator=torch.Generator("cpu").manual_seed(0))
print("experts per step:", out.experts)  # ['high', 'high', 'low', 'low']
save_video(out.frames[0], args.output, fps=pipe.variant_defaults.fps)
print("wrote", args.output)
