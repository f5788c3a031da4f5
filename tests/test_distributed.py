"""Multi-process inference on CPU (gloo, loopback only): context parallel (torchrun), prompts split (accelerate).

(a) `torchrun --nproc_per_node=2 tests/_cp_worker.py`: Ulysses-2 equals the single-process output (MoE across the
    expert switch, batched CFG, dense TI2V-5B with the 2.2 VAE) and really splits the tokens;
(b) `accelerate launch --num_processes 2 -m diffusers_wan22.cli generate --prompts FILE`: 4 videos, each identical to
    the single-process run for the same prompt and seed;
(c) the divisibility / configuration errors are clear and raised before any model runs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("_cp_worker.py")
PROMPTS = [
    "Two cats boxing on a stage.",
    "A dog running fast along the beach at sunset.",
    "An astronaut riding a horse on the moon, cinematic lighting.",
    "Waves crash against the rocks while seagulls fly overhead.",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], cwd: Path, timeout: float) -> tuple[str, float]:
    """Run ``cmd`` in its own process group (killed whole on timeout); return its output and wall time."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd[:4])} timed out after {timeout}s:\n{out[-3000:]}")
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{out[-4000:]}"
    return out, elapsed


# ------------------------------------------------------------------------------------------- (a) context parallel
@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Both tiny variants saved once: every process then loads identical weights and tokenizer."""
    import diffusers_wan22  # noqa: F401
    from diffusers_wan22 import build_demo_pipeline

    root = tmp_path_factory.mktemp("models")
    for variant in ("t2v-A14B", "ti2v-5B"):
        build_demo_pipeline(variant, seed=0).save_pretrained(root / variant)
    return root


@pytest.fixture(scope="module")
def cp_run(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("cp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(WORKER), str(tiny_models), str(out)]
    _run(cmd, ROOT, timeout=120)
    return out


@pytest.mark.parametrize("case", ["moe", "moe_batched_cfg", "dense_ti2v"])
def test_ulysses2_equals_single_process(tiny_models, cp_run, case):
    sys.path.insert(0, str(WORKER.parent))
    from _cp_worker import CASES, load, run_case

    variant, kwargs = CASES[case]
    ref = run_case(load(tiny_models, variant), kwargs)
    got = torch.load(cp_run / f"{case}.pt")
    assert got["experts"] == ref["experts"]
    if variant == "t2v-A14B":
        assert set(ref["experts"]) == {"high", "low"}, ref["experts"]  # the run crosses the expert switch
    d_lat = (got["latents"] - ref["latents"]).abs().max().item()
    d_frames = (got["frames"] - ref["frames"]).abs().max().item()
    print(f"{case}: experts {ref['experts']}, max|dlatents|={d_lat:.2e}, max|dframes|={d_frames:.2e}")
    assert d_lat <= 1e-5 and d_frames <= 1e-5, f"{case}: max|dlatents|={d_lat:.2e}, max|dframes|={d_frames:.2e}"
    # The tokens really were split: each rank's proj_out saw half the sequence.
    assert got["local_tokens"] * 2 == got["tokens"], (got["local_tokens"], got["tokens"])


def test_cp_configuration_errors_are_clear(cp_run):
    errors = json.loads((cp_run / "errors.json").read_text())
    assert errors["world_size"].startswith("ValueError") and "must equal the world size 2" in errors["world_size"]
    assert errors["ring_cpu"].startswith("NotImplementedError") and "Ring attention" in errors["ring_cpu"]
    assert errors["tokens"].startswith("ValueError")
    assert "3 latent frames x 1 x 1" in errors["tokens"] and "= 3 tokens" in errors["tokens"]
    assert "num_frames=13" in errors["tokens"]  # a concrete suggestion
    assert errors["tokens_forward_calls"] == 0  # refused before the transformer ran
    assert errors["twice"].startswith("RuntimeError") and "already enabled" in errors["twice"]


# ------------------------------------------------------------------------------------------- (c) in-process checks
def test_heads_and_process_group_errors(tiny_pipe):
    with pytest.raises(ValueError, match=r"`ulysses_degree`=3 must divide the high-noise expert's 2 attention heads"):
        tiny_pipe.enable_parallelism(ulysses_degree=3)
    with pytest.raises(RuntimeError, match="torchrun"):
        tiny_pipe.enable_parallelism(ulysses_degree=2)
    with pytest.raises(ValueError, match="positive integer"):
        tiny_pipe.enable_parallelism(ulysses_degree=0)
    assert tiny_pipe.parallel_degree == 1
    tiny_pipe._check_parallel_inputs(16, 16, 9)  # off: no-op whatever the token count


def test_token_counts_of_official_sizes():
    from diffusers_wan22.utils.distributed import cp_token_count

    # A14B, Wan 2.1 VAE (4x8x8) + patch (1,2,2): tokens = F_lat * H/16 * W/16
    assert cp_token_count(81, 720, 1280, 4, 8, (1, 2, 2)) == (21 * 45 * 80, (21, 45, 80))
    assert cp_token_count(81, 480, 832, 4, 8, (1, 2, 2))[0] == 21 * 30 * 52
    # TI2V-5B, Wan 2.2 VAE (4x16x16) + patch: tokens = F_lat * H/32 * W/32
    assert cp_token_count(121, 704, 1280, 4, 16, (1, 2, 2))[0] == 31 * 22 * 40
    for tokens in (75600, 32760, 27280):
        assert tokens % 8 == 0 and tokens % 4 == 0


def test_is_main_process_without_distributed(monkeypatch):
    from diffusers_wan22 import is_main_process

    monkeypatch.delenv("RANK", raising=False)
    assert is_main_process()
    monkeypatch.setenv("RANK", "1")
    assert not is_main_process()


# ------------------------------------------------------------------------------------------- (b) data parallel
def test_accelerate_splits_prompts_and_matches_single_process(tiny_models, tmp_path):
    import imageio.v3 as iio

    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    common = ["generate", "--model", str(tiny_models / "t2v-A14B"), "--prompts", str(tmp_path / "prompts.txt"),
              "--size", "32*32", "--frame_num", "9", "--sample_steps", "6", "--dtype", "fp32", "--base_seed", "7"]
    single_out, t1 = _run([sys.executable, "-m", "diffusers_wan22.cli", *common, "--output_dir", "single"],
                          tmp_path, timeout=90)
    # `accelerate launch --cpu --num_processes N` only forks N processes through mpirun (with --mpirun_hostfile);
    # its torchrun-based launcher (`--multi_gpu`) starts them on a CPU-only machine, and the CLI then selects gloo.
    multi_out, t2 = _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
                          "-m", "diffusers_wan22.cli", *common, "--output_dir", "multi"], tmp_path, timeout=120)
    # Both processes worked, on disjoint halves of the prompt list.
    # stdout and stderr share one pipe: a progress bar may precede a report on its line, so search, don't anchor.
    owners: dict[str, list[int]] = {}
    for who, index in re.findall(r"(\[process \d+/2\]) prompt (\d+) \(seed", multi_out):
        owners.setdefault(who, []).append(int(index))
    assert {k: sorted(v) for k, v in owners.items()} == {"[process 0/2]": [0, 1], "[process 1/2]": [2, 3]}, multi_out
    assert "(seed 9)" in multi_out and "prompt 2 (seed 9)" in multi_out  # seed = base_seed + index
    for i in range(len(PROMPTS)):
        a = iio.imread(tmp_path / "single" / f"{i}.mp4")
        b = iio.imread(tmp_path / "multi" / f"{i}.mp4")
        assert a.shape == (9, 32, 32, 3) and np.array_equal(a, b), f"prompt {i}: videos differ"
        if i:  # different prompts and seeds give different videos
            assert not np.array_equal(a, iio.imread(tmp_path / "single" / "0.mp4"))
    print(f"single process {t1:.1f}s, accelerate x2 {t2:.1f}s")
