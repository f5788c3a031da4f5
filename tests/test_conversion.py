"""`wan22 convert`: every fixture variant, both layouts, atomicity under SIGKILL, verification, model card."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import OFFICIAL, assert_close_rel
from diffusers_wan22 import Wan22Pipeline, convert_checkpoint, load_official_components
from diffusers_wan22.loaders.conversion import TensorReader

VARIANTS = {"t2v_a14b": "t2v-A14B", "i2v_a14b": "i2v-A14B", "ti2v_5b": "ti2v-5B"}


def _component_states(pipe_or_components) -> dict[str, dict[str, torch.Tensor]]:
    comps = pipe_or_components if isinstance(pipe_or_components, dict) else pipe_or_components.components
    return {name: comps[name].state_dict() for name in ("transformer", "text_encoder", "vae")}


@pytest.mark.parametrize("fixture", sorted(VARIANTS))
def test_wan22_layout_holds_exactly_the_official_weights(fixture, tmp_path):
    src = OFFICIAL / fixture
    report = convert_checkpoint(src, tmp_path / "out", max_shard_size="200KB", verify=True, progress=False)
    assert report.verified and report.variant == VARIANTS[fixture] and report.tensors > 0
    pipe = Wan22Pipeline.from_pretrained(tmp_path / "out")  # same components for every variant's class
    reference = load_official_components(src)  # the in-memory loader uses the same key mapping
    ours, ref = _component_states(pipe), _component_states(reference)
    for name in ref:
        assert ours[name].keys() == ref[name].keys(), name
        for key, value in ref[name].items():
            assert torch.equal(ours[name][key], value), f"{name}.{key}"
    assert (tmp_path / "out" / "transformer" / "diffusion_pytorch_model.safetensors.index.json").exists()  # sharded
    card = (tmp_path / "out" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: diffusers\n") and "license: apache-2.0" in card


def test_converted_t2v_reproduces_the_official_run(tmp_path):
    """wan22 layout -> DiffusionPipeline.from_pretrained -> the official unipc golden run (rel 1e-4)."""
    from diffusers import DiffusionPipeline

    convert_checkpoint(OFFICIAL / "t2v_a14b", tmp_path / "out", progress=False)
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "out", torch_dtype=torch.float32)
    assert isinstance(pipe, Wan22Pipeline)
    meta = json.loads((OFFICIAL / "t2v_a14b" / "golden.json").read_text())["meta"]["runs"]["run_unipc"]
    g = load_file(OFFICIAL / "t2v_a14b" / "golden.safetensors")
    kw = meta["generate_kwargs"]
    out = pipe(kw["input_prompt"], height=kw["size"][1], width=kw["size"][0], num_frames=kw["frame_num"],
               num_inference_steps=kw["sampling_steps"], guidance_scale=kw["guide_scale"][1],
               guidance_scale_2=kw["guide_scale"][0], latents=g["run_unipc/noise"][None], output_type="latent")
    assert_close_rel(out.frames[0], g["run_unipc/vae_decode_in_0"], what="converted t2v final latents")


def test_stock_diffusers_loads_the_diffusers_layout_and_reproduces_the_official_run(tmp_path):
    from diffusers import WanPipeline

    from diffusers_wan22 import official_unshifted_sigmas

    convert_checkpoint(OFFICIAL / "t2v_a14b", tmp_path / "stock", layout="diffusers", progress=False)
    index = json.loads((tmp_path / "stock" / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline" and index["boundary_ratio"] == 0.875
    pipe = WanPipeline.from_pretrained(tmp_path / "stock", torch_dtype=torch.float32)
    assert pipe.scheduler.config.flow_shift == 12.0  # the official shift, not the 3.0 of diffusers' own script
    g = load_file(OFFICIAL / "t2v_a14b" / "golden.safetensors")
    meta = json.loads((OFFICIAL / "t2v_a14b" / "golden.json").read_text())["meta"]
    kw = meta["runs"]["run_unipc"]["generate_kwargs"]
    # Stock WanPipeline uses diffusers' default sigma grid; give it the official one so runs are comparable.
    original = pipe.scheduler.set_timesteps
    pipe.scheduler.set_timesteps = lambda n, device=None: original(
        sigmas=official_unshifted_sigmas(n, "unipc"), device=device)
    out = pipe(kw["input_prompt"], negative_prompt=meta["prompts"]["negative_prompt"]["text"],
               height=kw["size"][1], width=kw["size"][0], num_frames=kw["frame_num"],
               num_inference_steps=kw["sampling_steps"], guidance_scale=kw["guide_scale"][1],
               guidance_scale_2=kw["guide_scale"][0], latents=g["run_unipc/noise"][None], output_type="latent")
    assert_close_rel(out.frames[0], g["run_unipc/vae_decode_in_0"], what="stock WanPipeline on converted folder")
    # And ours loads the same stock folder into the MoE container.
    ours = Wan22Pipeline.from_pretrained(tmp_path / "stock")
    assert ours.transformer.config.boundary_ratio == 0.875


def test_existing_destination_is_refused_then_replaced_with_overwrite(tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        convert_checkpoint(OFFICIAL / "t2v_a14b", dst, progress=False)
    assert (dst / "keep.txt").read_text() == "user data"
    convert_checkpoint(OFFICIAL / "t2v_a14b", dst, overwrite=True, progress=False)
    assert (dst / "model_index.json").exists() and not (dst / "keep.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary or moved-aside folder left


def test_verification_catches_a_corrupted_tensor_and_writes_nothing(tmp_path, monkeypatch):
    original, seen = TensorReader.get, set()

    def flaky_get(self, ref):  # the first read of one tensor (the write) comes back corrupted, later reads are fine
        tensor = original(self, ref)
        if ref.out_key.endswith("proj_out.bias") and ref.out_key not in seen:
            seen.add(ref.out_key)
            tensor = tensor + 1
        return tensor

    monkeypatch.setattr(TensorReader, "get", flaky_get)
    with pytest.raises(ValueError, match=r"verify: transformer/.*proj_out.bias differs from its source"):
        convert_checkpoint(OFFICIAL / "t2v_a14b", tmp_path / "out", verify=True, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kill_when", ["tmp_dir", "first_shard"])
def test_sigkill_midway_leaves_no_destination_and_rerun_succeeds(tmp_path, kill_when):
    dst = tmp_path / "out"
    cmd = [sys.executable, "-m", "diffusers_wan22.cli", "convert", str(OFFICIAL / "t2v_a14b"), str(dst),
           "--max-shard-size", "20KB"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            tmps = list(tmp_path.glob(".out.tmp-*"))
            if tmps and (kill_when == "tmp_dir" or list(tmps[0].rglob("*.safetensors"))):
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, "the conversion finished before it could be killed"
    assert not dst.exists()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr
    assert (dst / "model_index.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the killed run's temporary folder was cleaned up


def test_bad_conversion_arguments(tmp_path):
    with pytest.raises(ValueError, match="`layout` must be one of"):
        convert_checkpoint(OFFICIAL / "t2v_a14b", tmp_path / "o", layout="comfy")
    with pytest.raises(ValueError, match="`dtype` must be one of"):
        convert_checkpoint(OFFICIAL / "t2v_a14b", tmp_path / "o", dtype="int4")
    with pytest.raises(ValueError, match="holds a t2v-A14B checkpoint, not i2v-A14B"):
        convert_checkpoint(OFFICIAL / "t2v_a14b", tmp_path / "o", variant="i2v-A14B")
    with pytest.raises(ValueError, match="max_shard_size"):
        convert_checkpoint(OFFICIAL / "t2v_a14b", tmp_path / "o", max_shard_size="lots")
    with pytest.raises(ValueError, match="is not an official Wan 2.2 folder"):
        convert_checkpoint(tmp_path, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_dtype_cast_and_cli_summary(tmp_path):
    res = subprocess.run(["wan22", "convert", str(OFFICIAL / "ti2v_5b"), str(tmp_path / "o"), "--dtype", "bf16",
                          "--verify"], capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr
    assert "converted ti2v-5B" in res.stdout and "dtypes: bfloat16" in res.stdout and "verified: yes" in res.stdout
    weights = load_file(tmp_path / "o" / "vae" / "diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
