"""`wan22 demo`: runs the built-in tiny random-weight Wan 2.2 MoE pipeline and writes a real mp4."""

from __future__ import annotations

import time

import torch

from ..pipelines.auto import build_demo_pipeline
from ..utils.video import save_video


def report_steps(experts: list[str], timesteps: list[float], moe: bool = True) -> None:
    """One line per step: its timestep, and for the A14B mixture of experts the expert that ran it."""
    for i, (e, t) in enumerate(zip(experts, timesteps)):
        print(f"  step {i:2d}  t={t:7.1f}" + (f"  expert={e}" if moe else ""))


def run(args) -> int:
    """`wan22 demo`: the tiny random-weight MoE pipeline, end to end, to a real mp4."""
    width, height = args.size
    pipe = build_demo_pipeline()
    print("Built a tiny random-weight Wan 2.2 MoE pipeline (random weights: the video is noise).")
    print(f"Seed: {args.base_seed}")
    start = time.perf_counter()
    out = pipe(args.prompt, height=height, width=width, num_frames=args.frame_num,
               num_inference_steps=args.sample_steps, generator=torch.Generator().manual_seed(args.base_seed))
    report_steps(out.experts, out.timesteps)
    fps = pipe.variant_defaults.fps
    path = save_video(out.frames[0], args.output, fps=fps)
    print(f"Wrote {path}: {args.frame_num} frames at {width}x{height}, {fps} fps = {args.frame_num / fps:.2f} s of "
          f"video (generated in {time.perf_counter() - start:.1f} s).")
    print("For real videos: wan22 generate --model ./Wan2.2-T2V-A14B --prompt \"...\" (see docs/getting-started.md)")
    return 0
