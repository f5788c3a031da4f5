"""Stock `diffusers.WanPipeline` vs `Wan22Pipeline` on identical small components and timesteps, in one process.

Runs alternate (stock, ours, stock, ours, ...) so drift in machine load hits both; prints the median wall-time
ratio ours / stock, plain and with batched CFG, and checks that the latents are equal.

    python benchmarks/pipeline_overhead.py [--runs 7] [--size 96] [--frames 17] [--steps 12]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import UniPCMultistepScheduler, WanPipeline

from diffusers_wan22 import Wan22Pipeline, build_tiny_components, official_unshifted_sigmas


class OfficialGridUniPC(UniPCMultistepScheduler):
    """Stock WanPipeline calls `set_timesteps(n)`: hand it the same official grid our pipeline uses."""

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, **kwargs):
        sigmas = official_unshifted_sigmas(num_inference_steps, "unipc") if sigmas is None else sigmas
        super().set_timesteps(device=device, sigmas=sigmas, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()

    c = build_tiny_components("t2v-A14B", seed=0)
    moe = c["transformer"]
    ours = Wan22Pipeline(**c)
    ours.set_progress_bar_config(disable=True)
    stock = WanPipeline(
        tokenizer=c["tokenizer"], text_encoder=c["text_encoder"], vae=c["vae"],
        scheduler=OfficialGridUniPC.from_config(c["scheduler"].config),
        transformer=moe.high_noise_expert, transformer_2=moe.low_noise_expert, boundary_ratio=0.875,
    )
    stock.set_progress_bar_config(disable=True)
    call = dict(prompt="Two cats boxing on a stage.", negative_prompt="blurry", height=args.size, width=args.size,
                num_frames=args.frames, num_inference_steps=args.steps, guidance_scale=4.0, guidance_scale_2=3.0,
                output_type="latent")

    def timed(pipe, **extra):
        start = time.perf_counter()
        out = pipe(**call, generator=torch.Generator().manual_seed(0), **extra).frames
        return time.perf_counter() - start, out

    timed(stock), timed(ours), timed(ours, batched_cfg=True)  # warm-up
    times = {"stock": [], "ours": [], "ours_batched": []}
    outs = {}
    for _ in range(args.runs):
        for name, pipe, extra in (("stock", stock, {}), ("ours", ours, {}), ("ours_batched", ours, {"batched_cfg": True})):
            t, outs[name] = timed(pipe, **extra)
            times[name].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    ref = outs["stock"]
    print(f"torch threads: {torch.get_num_threads()}, {args.runs} alternating runs, "
          f"{args.size}x{args.size}x{args.frames}, {args.steps} steps")
    for name in times:
        diff = (outs[name] - ref).abs().max().item()
        print(f"{name:13s} median {med[name] * 1000:8.1f} ms   ratio vs stock {med[name] / med['stock']:.3f}   "
              f"max|latents - stock| {diff:.2e}")


if __name__ == "__main__":
    main()
