"""Host RAM and expert-switch time of lazy experts vs both experts resident, on an A14B-shaped synthetic model.

The transformer has the real A14B expert shape (dim 5120, 40 heads x 128, FFN 13824) with ``--layers`` blocks per
expert (2 by default: 0.91B parameters, 3.65 GB per expert in fp32); the text encoder and VAE are the tiny demo ones.
Random weights are saved once with ``save_pretrained`` (2 GB shards) into a temporary folder; every measured run is
a separate process (``--child``) so its peak RSS (``ru_maxrss``) covers loading and the full generation.

Runs:
  resident        ``Wan22Pipeline.from_pretrained(folder)``: both experts in RAM
  lazy            ``from_pretrained(folder, lazy_experts=True, prefetch_steps=0)``: one expert at a time
  lazy_prefetch   ``lazy_experts=True, prefetch_steps=N``: the next expert is read during the last N steps

The weights are evicted from the OS page cache before every run (``posix_fadvise(DONTNEED)``), so each run reads
from disk like a fresh start; otherwise the "lazy" switch would be served from the cache the save left behind.

Printed: peak RSS per run, the lazy / resident ratio (goal <= 0.6), the planner's host-RAM prediction
(``execution="cpu"``) vs measured (goal within 15 %), and the switch step's time / median step time.

    python3 benchmarks/host_memory.py            # ~3-5 minutes on 2 CPU cores, ~9 GB of RAM at most
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEIGHT = WIDTH = 128  # 8 x 8 patches per latent frame
NUM_FRAMES = 5  # 2 latent frames -> 128 tokens
STEPS = 8  # official UniPC grid, shift 12: 6 high-noise steps then 2 low-noise steps


def rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def drop_page_cache(folder: Path) -> None:
    """Evict the saved weights from the OS page cache (POSIX_FADV_DONTNEED; clean pages, no root needed)."""
    import os

    for path in Path(folder).rglob("*.safetensors"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def build(folder: Path, layers: int) -> None:
    import torch
    from diffusers import WanTransformer3DModel

    from diffusers_wan22 import Wan22Pipeline, WanMoETransformer3DModel, build_tiny_components

    torch.manual_seed(0)
    components = build_tiny_components("t2v-A14B", seed=0)
    kwargs = dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16,
                  out_channels=16, text_dim=components["text_encoder"].config.d_model, freq_dim=256, ffn_dim=13824,
                  num_layers=layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=1024)
    experts = []
    for _ in range(2):
        expert = WanTransformer3DModel(**kwargs).eval()
        with torch.no_grad():  # the zero-initialised head would make every output 0
            expert.proj_out.weight.normal_(0, 0.02)
        experts.append(expert)
    components["transformer"] = WanMoETransformer3DModel.from_experts(*experts, boundary_ratio=0.875)
    Wan22Pipeline(**components).save_pretrained(folder, max_shard_size="2GB")


def child(folder: Path, run: str, prefetch_steps: int) -> dict:
    import torch

    from diffusers_wan22 import Wan22Pipeline, estimate_memory, spec_from_pipeline

    torch.set_num_threads(2)
    base = rss_now()
    if run == "resident":
        pipe = Wan22Pipeline.from_pretrained(folder)
    else:
        pipe = Wan22Pipeline.from_pretrained(folder, lazy_experts=True,
                                             prefetch_steps=prefetch_steps if run == "lazy_prefetch" else 0)
    pipe.set_progress_bar_config(disable=True)
    times, last = [], [time.perf_counter()]

    def on_step(p, i, t, kw):
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now
        return {}

    last[0] = time.perf_counter()
    out = pipe("Two cats boxing on a stage.", height=HEIGHT, width=WIDTH, num_frames=NUM_FRAMES,
               num_inference_steps=STEPS, guidance_scale=1.0, output_type="latent",
               generator=torch.Generator().manual_seed(0), callback_on_step_end=on_step)
    # step 0 also holds the text encoding and (lazy) the first read: timed from the call start, reported apart
    switch = next(i for i in range(1, len(out.experts)) if out.experts[i] != out.experts[i - 1])
    regular = [t for i, t in enumerate(times) if i not in (0, switch)]
    mode = "none" if run == "resident" else "lazy_experts"
    spec = spec_from_pipeline(pipe)
    est = estimate_memory(spec, HEIGHT, WIDTH, NUM_FRAMES, mode=mode, weight_bytes=4, execution="cpu",
                          prefetch=run == "lazy_prefetch", vae_tiling=False)
    return dict(run=run, peak_rss=rss_peak(), import_rss=base, predicted_host=est.host_bytes,
                expert_bytes=spec.expert_params * 4, step_times=times, switch_step=switch,
                switch_ratio=times[switch] / statistics.median(regular), experts=out.experts,
                checksum=float(out.frames.double().sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2, help="blocks per expert (2: 3.65 GB fp32 per expert)")
    parser.add_argument("--prefetch_steps", type=int, default=2)
    parser.add_argument("--folder", type=Path, default=None, help="reuse / keep the saved model here")
    parser.add_argument("--child", nargs=2, metavar=("FOLDER", "RUN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child[0]), args.child[1], args.prefetch_steps)))
        return

    tmp = None
    folder = args.folder
    if folder is None:
        tmp = tempfile.TemporaryDirectory(prefix="wan22_host_memory_")
        folder = Path(tmp.name)
    if not (folder / "model_index.json").exists():
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                        f"from host_memory import build; from pathlib import Path; "
                        f"build(Path({str(folder)!r}), {args.layers})"], check=True)
        print(f"built and saved the synthetic model in {time.perf_counter() - start:.0f} s: {folder}")

    results = {}
    for run in ("resident", "lazy", "lazy_prefetch"):
        drop_page_cache(folder)  # every run starts from disk, as a fresh machine would
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", str(folder), run,
                               "--prefetch_steps", str(args.prefetch_steps)],
                              check=True, capture_output=True, text=True)
        results[run] = r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{run:14s} peak RSS {r['peak_rss'] / 1e9:6.2f} GB   planner {r['predicted_host'] / 1e9:6.2f} GB "
              f"({100 * (r['predicted_host'] / r['peak_rss'] - 1):+5.1f} %)   switch step {r['switch_step']}: "
              f"{r['switch_ratio']:.2f}x median step   steps "
              f"{' '.join(f'{t:.2f}' for t in r['step_times'])} s   ({time.perf_counter() - start:.0f} s)")
    res = results["resident"]
    print(f"expert size {res['expert_bytes'] / 1e9:.2f} GB (fp32); RSS after imports {res['import_rss'] / 1e9:.2f} GB")
    for run in ("lazy", "lazy_prefetch"):
        print(f"{run} / resident peak RSS: {results[run]['peak_rss'] / res['peak_rss']:.2f} (goal <= 0.6)")
    same = len({r["checksum"] for r in results.values()}) == 1
    print(f"identical latents across runs: {same}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
