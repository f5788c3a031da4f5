"""Regenerate docs/quantization.md: accuracy and bytes of every expert precision policy, all measured or computed here.

1. The tiny official T2V-A14B fixture (`tests/fixtures/official/t2v_a14b`, official noise injected, 5 UniPC steps:
   4 high-noise + 1 low-noise) runs under each policy; the final latents are compared with the float32 run (and
   with the all-bf16 run). Parameter bytes are counted on the stored tensors (`quantization.parameter_bytes`).
2. The planner's bytes per policy for the real A14B experts, and which policies fit 24 / 40 GB (`wan22 plan`).
3. An A14B-shaped expert (dim 5120, 40 heads, FFN 13824, text dim 4096; 2 blocks instead of 40, 0.93 B parameters)
   built in a fresh process per policy: parameter bytes and process RSS (host RAM) measured, vs the planner.

    python docs/make_quantization.py                        # ~4 min on 2 CPU cores, < 8 GB RAM
    PYTHONPATH=/dir/with/torchao python docs/make_quantization.py   # also the torchao rows (see the doc)
    python docs/make_quantization.py --skip-a14b-shaped     # part 1 and 2 only (~1 min)
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # test support: goldens.replay_official_run, gguf_writer.write_gguf
FIXTURE = ROOT / "tests" / "fixtures" / "official" / "t2v_a14b"
OUT = ROOT / "docs" / "quantization.md"

# (label, high, low, scope); "gguf-XX" entries load per-expert GGUF files written from the fixture's experts.
FIXTURE_POLICIES = [
    ("fp32 (reference)", "fp32", "fp32", "all"),
    ("bf16", "bf16", "bf16", "all"),
    ("fp16", "fp16", "fp16", "all"),
    ("fp8, all linears (= ffn+attn for Wan)", "fp8", "fp8", "all"),
    ("fp8, ffn", "fp8", "fp8", "ffn"),
    ("fp8, attn", "fp8", "fp8", "attn"),
    ("fp8 ffn on high only (low fp32)", "fp8", None, "ffn"),
    ("fp8 ffn on low only (high fp32)", None, "fp8", "ffn"),
    ("high fp8 all, low bf16", ("fp8", "all"), ("bf16", "all"), "mixed"),
    ("int8-weight-only, all", "int8-weight-only", "int8-weight-only", "all"),
    ("int8-weight-only, ffn", "int8-weight-only", "int8-weight-only", "ffn"),
    ("fp8-weight-only, all", "fp8-weight-only", "fp8-weight-only", "all"),
    ("fp8-weight-only, ffn", "fp8-weight-only", "fp8-weight-only", "ffn"),
    ("GGUF Q8_0", "gguf-Q8_0", "gguf-Q8_0", "all"),
    ("GGUF Q4_0", "gguf-Q4_0", "gguf-Q4_0", "all"),
    ("GGUF Q4_K", "gguf-Q4_K", "gguf-Q4_K", "all"),
]
# Policies measured on the A14B-shaped expert: (label, policy, scope).
A14B_SHAPED_POLICIES = [
    ("bf16", "bf16", "all"), ("fp8, all", "fp8", "all"), ("fp8, ffn", "fp8", "ffn"),
    ("int8-weight-only, all", "int8-weight-only", "all"), ("fp8-weight-only, all", "fp8-weight-only", "all"),
    ("GGUF Q8_0", "gguf-Q8_0", "all"),
]
A14B_SHAPED = dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16,
                   out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=2, cross_attn_norm=True,
                   qk_norm="rms_norm_across_heads", rope_max_seq_len=1024)


def torchao_available() -> str | None:
    try:
        import torchao
        from torchao.quantization import Int8WeightOnlyConfig  # noqa: F401
    except Exception:  # noqa: BLE001
        return None
    return torchao.__version__


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def rel_max(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


# ---------------------------------------------------------------------------------------------------- part 1
def fixture_run(pipe) -> torch.Tensor:
    from goldens import replay_official_run

    return replay_official_run(pipe, FIXTURE).frames


def gguf_files(tmp: Path, quant_type: str) -> dict[str, Path]:
    from safetensors.torch import load_file

    from gguf_writer import write_gguf

    paths = {}
    for name in ("high", "low"):
        state = {}
        for f in sorted((FIXTURE / f"{name}_noise_model").glob("*.safetensors")):
            state.update(load_file(f))
        paths[name] = tmp / f"t2v_{name}_noise_{quant_type}.gguf"
        if not paths[name].exists():
            write_gguf(state, paths[name], quant_type)
    return paths


def fixture_policies(tmp: Path) -> list[dict]:
    from diffusers_wan22 import Wan22Pipeline, WanMoETransformer3DModel, gguf_quant_types, parameter_bytes

    have_torchao = torchao_available() is not None
    rows, reference, bf16 = [], None, None
    for label, high, low, scope in FIXTURE_POLICIES:
        row = {"label": label}
        if "weight-only" in str(high) and not have_torchao:
            rows.append({**row, "skipped": "torchao not importable"})
            continue
        pipe = Wan22Pipeline.from_official(FIXTURE, torch_dtype=torch.float32)
        if str(high).startswith("gguf-"):
            qt = high[5:]
            paths = gguf_files(tmp, qt)
            pipe.transformer = WanMoETransformer3DModel.from_gguf(
                paths["high"], paths["low"], config=FIXTURE / "high_noise_model", compute_dtype=torch.bfloat16)
            types = gguf_quant_types(paths["high"])
            row["note"] = "compute bf16; tensors per expert: " + ", ".join(f"{n} {k}" for k, n in types.items())
        elif scope == "mixed":
            pipe.set_expert_precision(high=high[0], scope=high[1])
            pipe.set_expert_precision(low=low[0], scope=low[1])
        elif high != "fp32" or low != "fp32":
            pipe.set_expert_precision(high=None if high == "fp32" else high,
                                      low=None if low == "fp32" else low, scope=scope)
        start = time.perf_counter()
        latents = fixture_run(pipe)
        row["seconds"] = time.perf_counter() - start
        moe = pipe.transformer
        row["bytes_high"] = parameter_bytes(moe.high_noise_expert)
        row["bytes_low"] = parameter_bytes(moe.low_noise_expert)
        if reference is None:
            reference = latents
        if label == "bf16":
            bf16 = latents
        row["rel_l2"], row["rel_max"] = rel_l2(latents, reference), rel_max(latents, reference)
        row["rel_l2_vs_bf16"] = rel_l2(latents, bf16) if bf16 is not None else None
        rows.append(row)
        print(f"  {label:40s} rel L2 {row['rel_l2']:.2e}  bytes {row['bytes_high'] + row['bytes_low']}", flush=True)
        del pipe, moe
        gc.collect()
    return rows


# ---------------------------------------------------------------------------------------------------- part 3
def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def random_a14b_shaped_expert():
    """The A14B-shaped expert with random bf16 parameters, built one tensor at a time (no fp32 copy of the model;
    buffers such as the RoPE tables are built normally)."""
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    with init_empty_weights():
        expert = WanTransformer3DModel(**A14B_SHAPED)
    gen = torch.Generator().manual_seed(0)
    for name, p in list(expert.named_parameters()):
        module_name, _, attr = name.rpartition(".")
        value = torch.randn(p.shape, generator=gen).mul_(0.02).to(torch.bfloat16)
        expert.get_submodule(module_name)._parameters[attr] = torch.nn.Parameter(value, requires_grad=False)
    return expert.eval()


def a14b_shaped_child(policy: str, scope: str, gguf_path: str | None) -> dict:
    """In a fresh process: build one A14B-shaped expert in bf16 (or load its GGUF file), apply ``policy``."""
    from diffusers_wan22 import apply_precision, load_gguf_expert, logical_numel, parameter_bytes

    torch.set_num_threads(2)
    base = rss_now()
    if policy.startswith("gguf-"):
        expert = load_gguf_expert(gguf_path, A14B_SHAPED, compute_dtype=torch.bfloat16)
    else:
        expert = random_a14b_shaped_expert()
        if policy != "bf16":
            apply_precision(expert, policy, scope)
    gc.collect()
    resident = rss_now() - base
    x = torch.randn(1, 16, 2, 16, 16, dtype=torch.bfloat16)  # 2 x 8 x 8 = 128 tokens
    ctx = torch.randn(1, 32, 4096, dtype=torch.bfloat16)
    with torch.no_grad():
        expert(x, torch.tensor([900.0]), ctx)
    return {"parameter_bytes": parameter_bytes(expert), "resident_rss": resident,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base,
            "params": sum(logical_numel(p) for p in expert.parameters())}


def a14b_shaped(tmp: Path) -> list[dict]:
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    from diffusers_wan22 import expert_weight_bytes, spec_from_modules

    with init_empty_weights(include_buffers=True):
        spec = spec_from_modules(WanTransformer3DModel(**A14B_SHAPED))
    have_torchao = torchao_available() is not None
    rows = []
    for label, policy, scope in A14B_SHAPED_POLICIES:
        if "weight-only" in policy and not have_torchao:
            rows.append({"label": label, "skipped": "torchao not importable"})
            continue
        gguf_path = None
        if policy.startswith("gguf-"):
            gguf_path = tmp / f"a14b_shaped_{policy[5:]}.gguf"
            if not gguf_path.exists():  # the same random bf16 expert, written in a separate process
                subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "write-gguf",
                                policy[5:], str(gguf_path)], check=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", policy, scope, str(gguf_path or "")]
        result = subprocess.run(cmd, check=True, capture_output=True, text=True)
        row = json.loads(result.stdout.strip().splitlines()[-1])
        planner_policy = policy.lower()
        row.update(label=label, planner=expert_weight_bytes(spec, planner_policy, scope, 2))
        rows.append(row)
        print(f"  {label:24s} params {row['parameter_bytes'] / 1e9:.2f} GB  RSS {row['resident_rss'] / 1e9:.2f} GB",
              flush=True)
    return rows


# ---------------------------------------------------------------------------------------------------- render
def render(fixture_rows: list[dict], shaped_rows: list[dict] | None) -> str:
    from diffusers_wan22 import A14B, I2V_A14B, POLICY_BYTES, expert_weight_bytes, precision_fit_table

    ao = torchao_available()
    ref_bytes = fixture_rows[0]["bytes_high"] + fixture_rows[0]["bytes_low"]
    out = [f"""# Quantized experts and per-expert precision

Generated by `python docs/make_quantization.py` (do not edit by hand). Code: `diffusers_wan22/hooks/precision.py`, `diffusers_wan22/quantizers/gguf.py`,
`WanMoETransformer3DModel.set_expert_precision` / `load_gguf_expert` / `from_gguf`,
`Wan22Pipeline.set_expert_precision`, `memory_planner.POLICY_BYTES`, `wan22 plan --precision / --precision_table`.
Tests: `tests/test_quantization.py`. Environment: torch {torch.__version__}, CPU ({platform.machine()}),
torchao {ao or "not importable (torchao rows skipped)"}.

## Use

```py
pipe = Wan22Pipeline.from_official("./Wan2.2-T2V-A14B", torch_dtype=torch.bfloat16)
pipe.set_expert_precision(high="fp8", low="fp8", scope="ffn")   # fp8 storage of the FFNs, bf16 compute
pipe.save_pretrained("./wan22-t2v-fp8-ffn")                      # F8_E4M3 tensors + the policy in the config
pipe = DiffusionPipeline.from_pretrained("./wan22-t2v-fp8-ffn")  # same storage, same outputs

# or, on a freshly loaded pipeline, one expert at a time (None leaves an expert as it is; a quantized expert is
# never re-quantized):
pipe.set_expert_precision(high="fp8")                       # all block linears of the high-noise expert
pipe.set_expert_precision(low="int8-weight-only", scope="ffn")  # torchao, low-noise FFNs only

# community per-expert GGUF files (official key naming); they carry no config
moe = WanMoETransformer3DModel.from_gguf("..._high_noise_Q8_0.gguf", "..._low_noise_Q8_0.gguf",
                                         config="./Wan2.2-T2V-A14B/high_noise_model", boundary_ratio=0.875)
pipe.transformer.load_gguf_expert("low", "..._low_noise_Q4_K_M.gguf")   # or swap one expert in place
```

`wan22 plan --precision fp8 --scope ffn` (or `--precision fp8,bf16` for high, low) gives the memory of each mode
under a policy; `wan22 plan --precision_table --model i2v-A14B` prints the fit table below.

* Policies: `fp32` / `bf16` / `fp16` cast the expert (`fp16` keeps the `_keep_in_fp32_modules` in fp32); `fp8`
  stores the selected linears (weight and bias) as float8_e4m3fn and computes in `compute_dtype` (bf16 default)
  through diffusers' layerwise casting (`diffusers.hooks.apply_layerwise_casting` on each selected layer);
  `int8-weight-only` / `fp8-weight-only` are torchao's `Int8WeightOnlyConfig` / `Float8WeightOnlyConfig` on the
  selected linears. For the quantizing policies the rest of the expert is cast to `compute_dtype`, except the
  `_keep_in_fp32_modules` (time embedder, modulation tables, norms), which stay fp32, as in diffusers' quantizers.
* Scopes: `ffn` (the two FFN projections of each block), `attn` (q/k/v/out of self- and cross-attention),
  `ffn+attn`, `all` = every `nn.Linear` but what diffusers' `enable_layerwise_casting` skips for Wan (patch and
  condition embedders, norms, `proj_out`) — for Wan the same layers as `ffn+attn`. Cast policies take `all` only.
* Refused with a clear error (tests): unknown policy / scope, a cast policy with a partial scope, a `compute_dtype`
  that contradicts a cast policy, re-quantizing a quantized expert, torchao policies without torchao
  (`QuantizationUnavailableError` naming the install command), policies on a dense transformer through the
  pipeline method, policies after lazy experts were enabled, saving torchao / GGUF experts (diffusers 0.42 cannot
  write those tensors; the pipeline checks before writing anything), a GGUF file with no quantized tensor, a LoRA
  loaded into an already quantized expert (peft would create fp8 adapter weights). LoRA adapters loaded *before*
  the policy work: the wrapped base layer is quantized, the adapter weights follow the compute dtype.
* Save / reload: the per-expert policy is stored in the MoE config (`expert_precision`). fp8 weights are saved as
  F8_E4M3 safetensors; `DiffusionPipeline.from_pretrained` builds the experts in their stored dtypes with their
  fp8 hooks *before* loading, so the fp8 / bf16 tensors are read without a full-precision copy, also with a
  `torch_dtype` (the stored precision wins for the experts) and with `lazy_experts=True`. Outputs after reload are
  bit-identical (`torch.equal`, tested).
* GGUF: files in the official key naming (as the community's per-expert `high_noise` / `low_noise` files) or in
  diffusers' naming load through `WanTransformer3DModel.from_single_file(path, config=..., quantization_config=
  GGUFQuantizationConfig(compute_dtype))`. Community files carry no config, and diffusers would download one from
  the Hub, so `config` is required: an official `config.json` folder, a diffusers config folder, a dict or a model.
  diffusers 0.42.1 dequantizes GGUF blocks in float16 on the CPU path before casting to the compute dtype (the test
  checks this against gguf-py's float32 decoder).

## Accuracy on the tiny official T2V-A14B fixture

Final latents of the official unipc run (prompt, noise and guidance of `run_unipc`, 5 steps: 4 on the high-noise
expert, 1 on the low-noise expert) under each policy. rel L2 = ‖x − x_fp32‖ / ‖x_fp32‖, rel max =
max|x − x_fp32| / max|x_fp32|. The fixture's experts are tiny (dim 32, FFN 64, 2 blocks, random weights), so these
numbers rank policies on this model; they are not predictions of visual quality on the 14B experts. Bytes are the
stored parameters of both experts; the fixture's text embedder (4096 → 32) dominates its parameter count, and the
fp32 modules kept by the quantizing policies are a much larger share here than in the real model.
The bound in the test suite: fp8 FFN on the high-noise expert only, rel L2 ≤ 3e-2.

| policy (both experts unless said) | rel L2 vs fp32 | rel max vs fp32 | rel L2 vs bf16 run | parameter bytes | vs fp32 | note |
| --- | ---: | ---: | ---: | ---: | ---: | --- |
"""]
    for r in fixture_rows:
        if "skipped" in r:
            out.append(f"| {r['label']} | – | – | – | – | – | not run: {r['skipped']} |\n")
            continue
        total = r["bytes_high"] + r["bytes_low"]
        vs_bf16 = "–" if r["rel_l2_vs_bf16"] is None else f"{r['rel_l2_vs_bf16']:.2e}"
        out.append(f"| {r['label']} | {r['rel_l2']:.2e} | {r['rel_max']:.2e} | {vs_bf16} | {total:,} | "
                   f"{total / ref_bytes:.2f} | {r.get('note', '')} |\n")
    out.append("""
The GGUF rows quantize a matrix only when its row length is a multiple of the block (32 for Q8_0 / Q4_0, 256 for
Q4_K), as the community converters do: at the fixture's width 32 / 64 every block matrix takes Q8_0 and Q4_0,
but Q4_K only the text embedder (4096 wide) — the Q4_K row measures that, not a 4-bit transformer.

## Bytes per policy and what fits (real T2V-A14B / I2V-A14B, planner)

`memory_planner.POLICY_BYTES` (bytes per stored parameter of the covered layers; the cast policies cover the whole
expert) and the resulting size of one real A14B expert (14.29 B parameters, of which 14.05 B in the blocks' linears;
the rest stays at 2 bytes):

| policy | bytes / param | one expert, scope all | scope ffn | scope attn |
| --- | ---: | ---: | ---: | ---: |
""")
    for name, bpp in POLICY_BYTES.items():
        cast = name in ("fp32", "bf16", "fp16")
        cells = [f"{expert_weight_bytes(A14B, name, s, 2) / 1e9:.1f} GB" if not cast or s == "all" else "–"
                 for s in ("all", "ffn", "attn")]
        out.append(f"| `{name}` | {bpp:.4g} | " + " | ".join(cells) + " |\n")
    for title, spec in (("T2V-A14B", A14B), ("I2V-A14B", I2V_A14B)):
        out.append(f"""
### {title}: fastest memory mode within the budget (predicted accelerator peak, GB)

`wan22 plan --precision_table --model {title.lower()}`; '-' = no mode fits. bf16 text encoder and VAE; the
modes are those of docs/memory.md (none, model_offload, expert_offload, lazy_experts, group_offload, tried in this
order).

""")
        out.append(precision_fit_table(spec, markdown=True) + "\n")
    out.append("""
Reading the tables: in bf16 one A14B expert is 28.6 GB, so on a 24 GB card only block-level group offload fits
(and streams every block every step). Storing the experts in 8 bits (fp8 / int8 / GGUF Q8_0 over all linears,
~14.5–15.4 GB per expert) makes per-expert offload fit 24 GB at 832×480×81, and 40 GB at 1280×720×81; FFN-only
fp8 (22.9 GB per expert) does not fit 24 GB with a whole expert resident. Q4_K (8.4 GB per expert) fits
per-expert offload at 720p within 24 GB. These are predictions from parameter counts and the activation formulas of
docs/memory.md; nothing here ran on a GPU.
""")
    if shaped_rows:
        out.append("""
## Measured on an A14B-shaped expert (host RAM)

One expert with the real A14B widths (dim 5120, 40 heads × 128, FFN 13824, text dim 4096) and 2 blocks instead of
40, random weights, built in bf16 (or loaded from its GGUF file) in a fresh process per policy, then the policy
applied. "resident RSS" = process RSS after the policy (and `gc`) minus RSS after the imports; "peak RSS" includes
building the bf16 expert first and one forward (128 tokens, bf16). "planner" = `expert_weight_bytes` for this
shape (non-covered parameters at 2 bytes).

| policy | parameters | parameter bytes | planner | resident RSS | peak RSS |
| --- | ---: | ---: | ---: | ---: | ---: |
""")
        for r in shaped_rows:
            if "skipped" in r:
                out.append(f"| {r['label']} | – | – | – | – | not run: {r['skipped']} |\n")
                continue
            out.append(f"| {r['label']} | {r['params'] / 1e9:.3f} B | {r['parameter_bytes'] / 1e9:.3f} GB | "
                       f"{r['planner'] / 1e9:.3f} GB | {r['resident_rss'] / 1e9:.2f} GB | "
                       f"{r['peak_rss'] / 1e9:.2f} GB |\n")
        out.append("""
Differences from the planner: the fp8 and torchao policies keep the `_keep_in_fp32_modules` in fp32 (here the
time embedder, 27.5 M parameters at 4 instead of 2 bytes, +0.055 GB), which the planner counts at 2 bytes; the
torchao per-row scales add < 1 MB. The GGUF file quantizes more than the planner's scope: like the community
files it also stores the condition embedders (time projection 157 M, text embedder 47 M parameters) in Q8_0, so
it comes out *below* the planner, which is conservative for GGUF by ~0.2 GB per real A14B expert.
""")
        measured = [r for r in shaped_rows if "skipped" not in r]
        gap = max(abs(r["resident_rss"] - r["parameter_bytes"]) for r in measured)
        out.append(f"Resident RSS is within {gap / 1e9:.3f} GB of the parameter bytes for every policy above.\n")
    out.append("""
## Not done / limits

* No GPU here: every accelerator figure is a planner prediction; accuracy numbers come from a tiny random-weight
  model on CPU, not from generated videos of the 14B experts (the issue's "quantizing everything breaks long
  videos, FFN-only does not" cannot be checked without the real weights).
* torchao is an optional extra (`pip install 'diffusers-wan22[quant]'`). With torchao installed, importing
  diffusers 0.42.1 imports torchao and logs "Unable to import `torchao` Tensor objects" (diffusers looks for
  classes torchao 0.16+ moved) plus torchao's own CUDA-extension warnings; the torchao rows above were measured
  with torchao on `PYTHONPATH` only. torchao and GGUF experts cannot be saved in a pipeline folder (refused).
* `wan22 convert --dtype` and `from_pretrained(quantization_config=...)` were not extended: diffusers applies a
  `quantization_config` to the whole MoE container (both experts alike); per-expert policies go through
  `set_expert_precision` (and `from_official(..., expert_precision=...)`), and are kept by `save_pretrained`.
* GGUF K-quants: gguf-py cannot write them; Q4_K is written by the small encoder in `tests/gguf_writer.py`
  (plain min/max scales, not llama.cpp's search) and decoded by diffusers; Q5_K / Q6_K / Q3_K / Q2_K are decoded
  by diffusers but were not written or tested here.
""")
    return "".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-a14b-shaped", action="store_true")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        policy, scope, path = args.child
        if policy == "write-gguf":
            from gguf_writer import write_gguf

            write_gguf(random_a14b_shaped_expert().state_dict(), path, scope)  # scope = the GGML type here
            return
        print(json.dumps(a14b_shaped_child(policy, scope, path or None)))
        return
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="wan22_quant_") as tmp:
        print("tiny official fixture:")
        fixture_rows = fixture_policies(Path(tmp))
        shaped = None
        if not args.skip_a14b_shaped:
            print("A14B-shaped expert (one process per policy):")
            shaped = a14b_shaped(Path(tmp))
    OUT.write_text(render(fixture_rows, shaped))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
