"""T2V-A14B with a memory mode: one expert on the accelerator (expert_offload), block-level group offload, or lazy
experts (host RAM holds one expert). `wan22 plan` predicts what each mode needs; docs/memory.md has the table.
Flags are those of `wan22 generate` (--memory_mode, --offload_dir, ...).

    python examples/low_memory.py --model ./Wan2.2-T2V-A14B --memory_mode lazy_experts
    python examples/low_memory.py --model ./Wan2.2-T2V-A14B-wan22 --memory_mode group_offload --offload_dir /nvme/wan
    python examples/low_memory.py --model tiny --memory_mode expert_offload
"""

import torch

from diffusers_wan22 import load_pipeline, parse_example_args, save_video

args = parse_example_args(__doc__, ["model", "memory_mode", "offload_dir", "prompt", "size", "frame_num",
                                    "sample_steps", "base_seed", "output", "overwrite"], memory_mode="expert_offload",
                          prompt="Two cats boxing on a stage.", output="low_memory.mp4")
tiny = args.model.startswith("tiny")
lazy = args.memory_mode == "lazy_experts"  # read each expert at its first step instead of both now
pipe = load_pipeline(args.model, torch.float32 if tiny else torch.bfloat16, **({"lazy_experts": True} if lazy and
                                                                               not tiny else {}))
device = "cuda" if torch.cuda.is_available() else "cpu"  # on CPU the same hooks move weights CPU <-> CPU
options = {"offload_to_disk_path": str(args.offload_dir)} if args.offload_dir is not None else {}
pipe.enable_memory_mode(args.memory_mode, device=device, **options)  # lazy_experts: reads from pipe.lazy_source
width, height = args.size or (832, 480)
out = pipe(args.prompt, height=height, width=width, num_frames=args.frame_num, num_inference_steps=args.sample_steps,
           generator=torch.Generator("cpu").manual_seed(args.base_seed))
print("experts per step:", out.experts)
save_video(out.frames[0], args.output, fps=pipe.variant_defaults.fps)
print("wrote", args.output)
