"""Full T2V-A14B sampling runs vs the official code's goldens (tiny official-format checkpoint, float32, CPU).

Tolerance for every comparison: max|ours - official| <= 1e-4 * max|official| (`assert_close_rel`).
"""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler
from safetensors.torch import load_file

from conftest import OFFICIAL, assert_close_rel
from diffusers_wan22 import Wan22Pipeline
from goldens import load_golden

FIXTURE = OFFICIAL / "t2v_a14b"


@pytest.fixture(scope="module")
def official_pipe():
    return Wan22Pipeline.from_official(FIXTURE, torch_dtype=torch.float32)


@pytest.fixture(scope="module")
def golden():
    return load_golden(FIXTURE)


def _run(pipe, kwargs: dict, noise: torch.Tensor, solver: str, output_type: str):
    if solver == "dpm++":
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    (width, height), (low, high) = kwargs["size"], kwargs["guide_scale"]  # official: size (W, H), guide (low, high)
    per_step = []
    out = pipe(
        kwargs["input_prompt"],
        negative_prompt=kwargs["n_prompt"] or None,  # "" -> the official default negative prompt
        height=height, width=width, num_frames=kwargs["frame_num"], num_inference_steps=kwargs["sampling_steps"],
        guidance_scale=high, guidance_scale_2=low, latents=noise[None].clone(), output_type=output_type,
        callback_on_step_end=lambda p, i, t, kw: per_step.append(kw["latents"][0].clone()) or {},
    )
    return out, torch.stack(per_step)


@pytest.mark.parametrize("run, solver", [("run_unipc", "unipc"), ("run_dpmpp", "dpm++")])
def test_full_run_matches_official(official_pipe, golden, run, solver):
    meta, g = golden
    kwargs = meta["runs"][run]["generate_kwargs"]
    pipe = Wan22Pipeline(**official_pipe.components)  # fresh scheduler state per run, same weights
    pipe.scheduler = type(official_pipe.scheduler).from_config(official_pipe.scheduler.config)
    out, per_step = _run(pipe, kwargs, g[f"{run}/noise"], solver, output_type="pt")

    assert out.timesteps == g[f"{run}/scheduler_timesteps"].tolist()
    official_experts = ["high" if x else "low" for x in g[f"{run}/expert_is_high_noise"].tolist()]
    assert out.experts == official_experts
    for i in range(len(per_step)):
        assert_close_rel(per_step[i], g[f"{run}/latents_out"][i], what=f"{run} latents after step {i}")
    # Decoded video: ours is [B, F, C, H, W] in [0, 1]; the official [C, F, H, W] in [-1, 1].
    video = out.frames[0].permute(1, 0, 2, 3) * 2 - 1
    assert_close_rel(video, g[f"{run}/video"], what=f"{run} video")


def test_final_latents_match_official(official_pipe, golden):
    meta, g = golden
    pipe = Wan22Pipeline(**official_pipe.components)
    out, _ = _run(pipe, meta["runs"]["run_unipc"]["generate_kwargs"], g["run_unipc/noise"], "unipc", "latent")
    assert_close_rel(out.frames[0], g["run_unipc/vae_decode_in_0"], what="final latents")


def test_custom_negative_prompt_run_matches_official(official_pipe):
    """Extra golden: a non-default negative prompt, 17 frames, guidance (high 4.5, low 2.0), seed 11."""
    extra = json.loads((FIXTURE / "extra_goldens.json").read_text())
    g = load_file(FIXTURE / "extra_goldens.safetensors")
    kwargs = extra["runs"]["run_negprompt_unipc"]["generate_kwargs"]
    pipe = Wan22Pipeline(**official_pipe.components)
    out, per_step = _run(pipe, kwargs, g["run_negprompt_unipc/noise"], "unipc", output_type="pt")
    assert out.experts == ["high" if x else "low" for x in g["run_negprompt_unipc/expert_is_high_noise"].tolist()]
    assert_close_rel(per_step[-1], g["run_negprompt_unipc/vae_decode_in_0"], what="final latents")
    assert_close_rel(out.frames[0].permute(1, 0, 2, 3) * 2 - 1, g["run_negprompt_unipc/video"], what="video")
