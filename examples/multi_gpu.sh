#!/usr/bin/env bash
# Multi-GPU Wan 2.2 (see docs/distributed.md). Run from the repository root; MODEL is an official or converted folder.
set -euo pipefail
MODEL=${MODEL:-./Wan2.2-T2V-A14B}
NGPU=${NGPU:-8}

# 1. One video, every GPU: context parallelism (Ulysses) splits each expert's token sequence across the GPUs.
torchrun --nproc_per_node="$NGPU" - <<PY
import torch
from diffusers_wan22 import Wan22Pipeline
from diffusers_wan22 import init_distributed, is_main_process
from diffusers_wan22 import save_video

device = init_distributed()  # NCCL, this rank's cuda:LOCAL_RANK
pipe = Wan22Pipeline.from_official("$MODEL", torch_dtype=torch.bfloat16).to(device)  # 80 GB cards: both experts
pipe.enable_parallelism(ulysses_degree=$NGPU)
out = pipe("Two cats boxing on a stage.", height=720, width=1280, generator=torch.Generator("cpu").manual_seed(0))
if is_main_process():
    save_video(out.frames[0], "cats_ulysses.mp4", fps=16)
PY

# 2. Many prompts, one GPU each: the prompt list is split across processes; prompt i gets seed base_seed + i.
printf '%s\n' "Two cats boxing on a stage." "A dog running fast along the beach at sunset." > prompts.txt
accelerate launch --multi_gpu --num_processes "$NGPU" -m diffusers_wan22.cli generate \
    --model "$MODEL" --prompts prompts.txt --output_dir videos --offload_model
