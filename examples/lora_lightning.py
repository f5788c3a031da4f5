"""4-step distilled Wan 2.2 with the two-file (high/low) Lightning-style LoRAs: 2 + 2 steps, no CFG.
Flags are those of `wan22 generate` (--lora PATH[:SCALE]@EXPERT).

    python examples/lora_lightning.py --model ./Wan2.2-T2V-A14B \
        --lora ./high_noise_model.safetensors@high --lora ./low_noise_model.safetensors@low
    python examples/lora_lightning.py --model tiny   # writes random tiny LoRAs first (in a temporary folder)
"""

import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from diffusers_wan22 import load_pipeline, parse_example_args, save_video

args = parse_example_args(__doc__, ["model", "lora", "prompt", "size", "frame_num", "base_seed", "output",
                                    "overwrite"], required=["lora"], prompt="Two cats boxing on a stage.",
                          output="lightning.mp4")
tiny = args.model.startswith("tiny")
pipe = load_pipeline(args.model, torch.float32 if tiny else torch.bfloat16)
pipe.to("cuda" if torch.cuda.is_available() else "cpu")


def tiny_loras(folder: Path) -> list[tuple[str, float, str]]:
    """Stand-in LoRA files for the tiny model, in the original key format of the published pairs."""
    loras = []
    for expert in ("high", "low"):
        sd = {}
        for i, block in enumerate(pipe.transformer.get_expert(expert).blocks):
            q = block.attn1.to_q
            sd[f"diffusion_model.blocks.{i}.self_attn.q.lora_A.weight"] = torch.randn(4, q.in_features) * 0.01
            sd[f"diffusion_model.blocks.{i}.self_attn.q.lora_B.weight"] = torch.randn(q.out_features, 4) * 0.01
        save_file(sd, folder / f"{expert}.safetensors")
        loras.append((str(folder / f"{expert}.safetensors"), 1.0, expert))
    return loras


with tempfile.TemporaryDirectory() as folder:  # removed at the end, also on errors
    loras = args.loras or tiny_loras(Path(folder))
    for i, (path, scale, expert) in enumerate(loras):  # --lora PATH[:SCALE]@EXPERT, one adapter each
        pipe.load_lora_weights(path, adapter_name=f"lightning_{i}", **({} if expert == "both" else {"expert": expert}))
    pipe.set_adapters([f"lightning_{i}" for i in range(len(loras))], [scale for _, scale, _ in loras])

width, height = args.size or (832, 480)
out = pipe(args.prompt, expert_steps=(2, 2), guidance_scale=1.0, guidance_scale_2=1.0, height=height, width=width,
           num_frames=args.frame_num, generator=torch.Generator("cpu").manual_seed(args.base_seed))
print("experts per step:", out.experts)  # ['high', 'high', 'low', 'low']
save_video(out.frames[0], args.output, fps=pipe.variant_defaults.fps)
print("wrote", args.output)
