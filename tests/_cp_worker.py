"""Worker for tests/test_distributed.py: ``torchrun --nproc_per_node=2 tests/_cp_worker.py MODELS_DIR OUT_DIR``.

Every rank loads the same tiny random pipelines (``MODELS_DIR/<variant>``, saved once by the test: building them in
each process would not give identical tokenizers), enables Ulysses context parallelism over the two ranks (gloo,
CPU) and runs the same call. Rank 0 saves what it got (`OUT_DIR/<case>.pt`) for the test to compare against a
single-process run, plus the error messages of the invalid configurations (`OUT_DIR/errors.json`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from diffusers import DiffusionPipeline

import diffusers_wan22  # noqa: F401  (registers Wan22Pipeline for DiffusionPipeline.from_pretrained)
from diffusers_wan22 import init_distributed, is_main_process

# (case, variant, call kwargs): shared with the test, which runs the same calls in one process.
CASES = {
    "moe": ("t2v-A14B", dict(height=32, width=32, num_frames=9, num_inference_steps=6)),
    "moe_batched_cfg": ("t2v-A14B", dict(height=32, width=32, num_frames=9, num_inference_steps=6,
                                         batched_cfg=True)),
    "dense_ti2v": ("ti2v-5B", dict(height=64, width=64, num_frames=9, num_inference_steps=4)),
}
PROMPT = "Two cats boxing on a stage."
SEED = 0


def run_case(pipe, kwargs: dict) -> dict:
    """Run one call; return its final latents, decoded frames, the expert of every step, and the sequence length
    the transformer's output projection saw on this rank (``local_tokens``) next to the full one (``tokens``)."""
    got = {}

    def keep_latents(_pipe, _i, _t, cb):
        got["latents"] = cb["latents"].clone()
        return {}

    experts = pipe.transformer.experts_named() if pipe.is_moe else [pipe.transformer]
    handles = [e.proj_out.register_forward_pre_hook(lambda _m, args: got.__setitem__("local", args[0].shape[1]))
               for e in experts]
    try:
        out = pipe(PROMPT, generator=torch.Generator().manual_seed(SEED), output_type="np",
                   callback_on_step_end=keep_latents, **kwargs)
    finally:
        for h in handles:
            h.remove()
    f, h, w = got["latents"].shape[2], got["latents"].shape[3] // 2, got["latents"].shape[4] // 2
    return {"latents": got["latents"], "frames": torch.from_numpy(out.frames), "experts": out.experts,
            "local_tokens": got["local"], "tokens": f * h * w}


def load(models_dir: str | Path, variant: str):
    """The saved tiny pipeline of ``variant`` (weights copied, not mmapped, for bit-exact CPU kernels)."""
    pipe = DiffusionPipeline.from_pretrained(Path(models_dir) / variant, disable_mmap=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _error(fn) -> str:
    try:
        fn()
    except Exception as e:  # noqa: BLE001  (the test checks type and message)
        return f"{type(e).__name__}: {e}"
    return "no error"


def main(models_dir: str, out_dir: str) -> None:
    out = Path(out_dir)
    init_distributed()  # gloo on this CPU-only machine
    errors = {}
    for case, (variant, kwargs) in CASES.items():
        pipe = load(models_dir, variant)
        if case == "moe":  # invalid configurations first: each must fail cleanly and leave the pipeline usable
            errors["world_size"] = _error(lambda: pipe.enable_parallelism(ulysses_degree=2, ring_degree=2))
            errors["ring_cpu"] = _error(lambda: pipe.enable_parallelism(ring_degree=2))
        pipe.enable_parallelism(ulysses_degree=2)
        if case == "moe":
            calls = []
            handle = pipe.transformer.register_forward_pre_hook(lambda *_: calls.append(1))
            errors["tokens"] = _error(lambda: pipe(PROMPT, height=16, width=16, num_frames=9, num_inference_steps=2))
            errors["tokens_forward_calls"] = len(calls)
            handle.remove()
            errors["twice"] = _error(lambda: pipe.enable_parallelism(ulysses_degree=2))
        result = run_case(pipe, kwargs)
        if is_main_process():
            torch.save(result, out / f"{case}.pt")
    if is_main_process():
        (out / "errors.json").write_text(json.dumps(errors, indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
