"""`wan22 demo`: runs the built-in tiny random-weight Wan 2.2 MoE pipeline and writes a real mp4."""

from __future__ import annotations

import time

import torch

from ..pipelines.auto import build_demo_pipeline
from ..utils.video import save_video


def report_steps(experts: list[str], timesteps: list[float]) -> None:
    for i, (e, t) in enumerate(zip(experts, timesteps)):
        print(f"  step {i:2d}  t={t:7.1f}  expert={e}")


def run(args) -> int:
    """`wan22 demo`: the tiny random-weight MoE pipeline, end to end, to a real mp4."""
    width, height = args.size
    pipe = build_demo_pipeline()
    print("Built a tiny random-weight Wan 2.2 MoE pipeline (random weights: the video is noise).")
    start = time.perf_counter()
    out = pipe(args.prompt, height=height, width=width, num_frames=args.frame_num,
               num_inference_steps=args.sample_steps, generator=torch.Generator().manual_seed(args.base_seed))
    report_steps(out.experts, out.timesteps)
    path = save_video(out.frames[0], args.output, fps=pipe.variant_defaults.fps)
    print(f"Wrote {path} ({args.frame_num} frames, {width}x{height}, {time.perf_counter() - start:.1f}s).")
    print("For real videos: wan22 generate --model ./Wan2.2-T2V-A14B --prompt \"...\"")
    return 0
