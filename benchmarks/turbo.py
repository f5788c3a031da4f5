"""TurboWan2.2 (TurboDiffusion) speed on this machine, as ratios of runs made side by side in one process.

(a) SLA self-attention (pure-PyTorch reference: block map, sparse softmax over the kept key blocks, linear branch,
    ``proj_l``) vs dense SDPA, at L = 8192 and 16384 tokens, head_dim 128, top-k 0.1 (goal <= 0.35x);
(b) a W8A8 linear (int8 weights and activations, 128x128 block scales, ``torch._int_mm`` per K block) vs the float
    GEMM, ``[L, 5120] x [5120, 5120]``;
(c) a whole Turbo I2V call (4 rCM steps, no CFG, SLA) vs the default I2V call (40 UniPC steps, CFG: 80 DiT calls)
    with experts of the same size and the same video size, from image + prompt to the final latents (goal >= 15x);
    the denoising loop alone is timed too.

(c) uses random experts of a small-but-realistic shape (head_dim 128 as in Wan, 4 heads, 2 blocks by default
(``--blocks``), FFN 1536) and the tiny random umT5 / VAE, at 576x320 x 9 frames (2160 tokens), so the whole script
runs on 2 CPU cores in a few minutes. The VAE decode is left out (``output_type="latent"``), as in TurboDiffusion's own speed figures; the one
VAE encode of the image condition stays in, and is relatively expensive here (the tiny VAE's 3-channel convolutions
run at the full video size, next to a 2-block DiT), while in the real A14B (40 heads, 40 blocks, 75600 tokens at
720p) the DiT dominates far more. Runs alternate (baseline, candidate, ...) so machine-load drift hits both; medians
are reported.

    python benchmarks/turbo.py [--runs 3] [--linear-tokens 4096] [--skip a,b,c] [--blocks 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import PIL.Image
import torch
import torch.nn.functional as F

from diffusers_wan22 import (
    RCMScheduler,
    TurboWanMoETransformer3DModel,
    W8A8Linear,
    Wan22ImageToVideoPipeline,
    WanMoETransformer3DModel,
    build_tiny_components,
    official_scheduler,
    sparse_linear_attention,
)

HEAD_DIM = 128


def alternate(baseline, candidate, runs: int) -> tuple[float, float]:
    """Median seconds of ``baseline()`` and ``candidate()`` over ``runs`` alternating runs (after one warm-up each)."""
    baseline(), candidate()
    times = {"baseline": [], "candidate": []}
    for _ in range(runs):
        for name, fn in (("baseline", baseline), ("candidate", candidate)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return statistics.median(times["baseline"]), statistics.median(times["candidate"])


def bench_attention(tokens: int, runs: int, heads: int = 2, topk: float = 0.1) -> None:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, tokens, HEAD_DIM, generator=gen) for _ in range(3))
    proj_l = torch.nn.Linear(HEAD_DIM, HEAD_DIM)
    with torch.no_grad():
        dense, sla = alternate(lambda: F.scaled_dot_product_attention(q, k, v),
                               lambda: sparse_linear_attention(q, k, v, proj_l, topk), runs)
    print(f"(a) L={tokens:6d} heads={heads} head_dim={HEAD_DIM} top-k {topk}: dense SDPA {dense * 1e3:8.1f} ms, "
          f"SLA {sla * 1e3:8.1f} ms, ratio SLA/dense {sla / dense:.3f}")


def bench_linear(tokens: int, runs: int, features: int = 5120) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(features, features)
    w8a8 = W8A8Linear.from_linear(linear)
    x = torch.randn(tokens, features)
    with torch.no_grad():
        dense, quant = alternate(lambda: linear(x), lambda: w8a8(x), runs)
        err = ((w8a8(x) - linear(x)).abs().max() / linear(x).abs().max()).item()
    print(f"(b) [{tokens}, {features}] x [{features}, {features}]: float32 GEMM {dense * 1e3:8.1f} ms, W8A8 "
          f"{quant * 1e3:8.1f} ms (mode {w8a8.mode}), ratio W8A8/float {quant / dense:.3f}, max rel err {err:.1e}")


def _experts(cls, seed: int, blocks: int, **extra):
    config = dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=HEAD_DIM, in_channels=36,
                  out_channels=16, text_dim=32, freq_dim=256, ffn_dim=1536, num_layers=blocks, cross_attn_norm=True,
                  boundary_ratio=0.9, **extra)
    torch.manual_seed(seed)
    model = cls(**config).eval()
    with torch.no_grad():  # a fresh Wan head outputs zeros; give every weight some signal
        for p in model.parameters():
            if p.is_floating_point():
                p.normal_(0.0, 0.02)
    return model


def bench_pipelines(runs: int, blocks: int) -> None:
    parts = build_tiny_components("i2v-A14B", seed=0)
    common = {k: parts[k] for k in ("tokenizer", "text_encoder", "vae")}
    official = Wan22ImageToVideoPipeline(**common, transformer=_experts(WanMoETransformer3DModel, 0, blocks),
                                         scheduler=official_scheduler("i2v-A14B"))
    turbo = Wan22ImageToVideoPipeline(**common, transformer=_experts(TurboWanMoETransformer3DModel, 0, blocks,
                                                                                 sla_topk=0.1),
                                      scheduler=RCMScheduler())
    image = PIL.Image.new("RGB", (576, 320), (90, 140, 200))
    call = dict(prompt="A white cat surfing at sunset.", height=320, width=576, num_frames=9, output_type="latent")
    loop_seconds = {}
    for name, pipe in (("official", official), ("turbo", turbo)):
        pipe.set_progress_bar_config(disable=True)
        pipe.denoise = _timed(pipe.denoise, loop_seconds.setdefault(name, []))

    def run(pipe):
        return lambda: pipe(image, generator=torch.Generator().manual_seed(0), **call)

    base, fast = alternate(run(official), run(turbo), runs)
    loop = {name: statistics.median(times[1:]) for name, times in loop_seconds.items()}  # [0]: the warm-up
    print(f"(c) I2V 576x320x9 (2160 tokens), 4-head / {blocks}-block experts, image + prompt -> latents: default 40 "
          f"steps + CFG (80 DiT calls) {base:7.2f} s, Turbo 4 steps (4 DiT calls, SLA 0.1) {fast:6.2f} s, speed-up "
          f"{base / fast:.1f}x; denoising loop alone {loop['official']:7.2f} s vs {loop['turbo']:6.2f} s, speed-up "
          f"{loop['official'] / loop['turbo']:.1f}x")


def _timed(fn, seconds: list[float]):
    """``fn`` recording the wall time of each call into ``seconds``."""
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        seconds.append(time.perf_counter() - start)
        return out
    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--linear-tokens", type=int, default=4096)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: a, b, c")
    parser.add_argument("--blocks", type=int, default=2,
                        help="(c): transformer blocks per expert (real A14B: 40; more blocks give the DiT its real "
                             "share of the call next to the VAE encode)")
    args = parser.parse_args()
    skip = set(args.skip.split(",")) if args.skip else set()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 on CPU")
    if "a" not in skip:
        for tokens in (8192, 16384):
            bench_attention(tokens, args.runs)
    if "b" not in skip:
        bench_linear(args.linear_tokens, args.runs)
    if "c" not in skip:
        bench_pipelines(max(1, args.runs // 3), args.blocks)


if __name__ == "__main__":
    main()
