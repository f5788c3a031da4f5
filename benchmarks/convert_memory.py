"""Peak host RAM of `wan22 convert` on a multi-GB synthetic official-format A14B-shaped checkpoint.

Builds `high_noise_model/` + `low_noise_model/` with the real official key names and the real 14B block width
(dim 5120, ffn 13824, 40 heads) but only ``--layers`` blocks per expert, sharded like the release; the T5, VAE and
tokenizer are the tiny fixture files. Then converts it in a child process and prints the child's peak RSS divided
by the largest output shard (goal <= 1.5) and the throughput.

    python benchmarks/convert_memory.py [--layers 3] [--max-shard-size 1GB] [--workdir /tmp/wan22-convert-bench]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch
from safetensors.torch import save_file

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "official" / "t2v_a14b"
DIM, FFN, FREQ, TEXT, IN, OUT = 5120, 13824, 256, 4096, 16, 16


def official_expert_tensors(layers: int) -> dict[str, tuple[int, ...]]:
    """Official WanModel key names and shapes (T2V-A14B geometry, ``layers`` blocks)."""
    shapes = {
        "patch_embedding.weight": (DIM, IN, 1, 2, 2), "patch_embedding.bias": (DIM,),
        "text_embedding.0.weight": (DIM, TEXT), "text_embedding.0.bias": (DIM,),
        "text_embedding.2.weight": (DIM, DIM), "text_embedding.2.bias": (DIM,),
        "time_embedding.0.weight": (DIM, FREQ), "time_embedding.0.bias": (DIM,),
        "time_embedding.2.weight": (DIM, DIM), "time_embedding.2.bias": (DIM,),
        "time_projection.1.weight": (6 * DIM, DIM), "time_projection.1.bias": (6 * DIM,),
        "head.modulation": (1, 2, DIM), "head.head.weight": (4 * OUT, DIM), "head.head.bias": (4 * OUT,),
    }
    for i in range(layers):
        b = f"blocks.{i}."
        shapes[b + "modulation"] = (1, 6, DIM)
        for attn in ("self_attn", "cross_attn"):
            for p in "qkvo":
                shapes[f"{b}{attn}.{p}.weight"], shapes[f"{b}{attn}.{p}.bias"] = (DIM, DIM), (DIM,)
            shapes[f"{b}{attn}.norm_q.weight"] = shapes[f"{b}{attn}.norm_k.weight"] = (DIM,)
        shapes[b + "norm3.weight"] = shapes[b + "norm3.bias"] = (DIM,)
        shapes[b + "ffn.0.weight"], shapes[b + "ffn.0.bias"] = (FFN, DIM), (FFN,)
        shapes[b + "ffn.2.weight"], shapes[b + "ffn.2.bias"] = (DIM, FFN), (DIM,)
    return shapes


def write_expert(folder: Path, layers: int, shard_bytes: int) -> int:
    folder.mkdir(parents=True)
    config = {"_class_name": "WanModel", "_diffusers_version": "0.39.0", "dim": DIM, "eps": 1e-6, "ffn_dim": FFN,
              "freq_dim": FREQ, "in_dim": IN, "model_type": "t2v", "num_heads": 40, "num_layers": layers,
              "out_dim": OUT, "text_len": 512}
    (folder / "config.json").write_text(json.dumps(config))
    shards, current, size, total = [], {}, 0, 0
    for key, shape in official_expert_tensors(layers).items():
        t = torch.empty(shape, dtype=torch.bfloat16).normal_(0, 0.02)
        if current and size + t.nbytes > shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[key], size, total = t, size + t.nbytes, total + t.nbytes
    shards.append(current)
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name))
        weight_map.update({k: name for k in shard})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    return total


def build_checkpoint(root: Path, layers: int) -> int:
    if root.exists():
        shutil.rmtree(root)
    total = sum(write_expert(root / d, layers, 2 * 10**9) for d in ("high_noise_model", "low_noise_model"))
    for name in ("models_t5_umt5-xxl-enc-bf16.pth", "Wan2.1_VAE.pth"):
        shutil.copy(FIXTURE / name, root / name)
    shutil.copytree(FIXTURE / "google", root / "google")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=3, help="blocks per expert (each ~0.7 GB in bf16)")
    parser.add_argument("--max-shard-size", default="1GB")
    parser.add_argument("--workdir", default="/tmp/wan22-convert-bench")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic checkpoint and the output")
    args = parser.parse_args()

    work = Path(args.workdir)
    src, dst = work / "official", work / "converted"
    print(f"building a synthetic A14B-shaped official checkpoint ({args.layers} blocks per expert) ...")
    total = build_checkpoint(src, args.layers)
    shutil.rmtree(dst, ignore_errors=True)
    start = time.perf_counter()
    child = psutil.Popen([sys.executable, "-m", "diffusers_wan22.cli", "convert", str(src), str(dst),
                          "--max-shard-size", args.max_shard_size], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    peak = 0
    while child.poll() is None:  # sample the child's RSS (getrusage would also count this parent's pages at fork)
        try:
            peak = max(peak, child.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.005)
    out, err = child.communicate()
    seconds = time.perf_counter() - start
    if child.returncode:
        raise SystemExit(err)
    largest = max(p.stat().st_size for p in dst.rglob("*.safetensors"))
    print(out.strip())
    print(f"source tensors      {total / 1e9:.2f} GB")
    print(f"largest out shard   {largest / 1e9:.2f} GB")
    print(f"child peak RSS      {peak / 1e9:.2f} GB   (includes ~0.5 GB of Python/torch/diffusers)")
    print(f"peak RSS / shard    {peak / largest:.2f}   (goal <= 1.5)")
    print(f"throughput          {total / 1e6 / seconds:.0f} MB/s   ({seconds:.1f} s incl. start-up)")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
