"""`Wan22Pipeline` (text-to-video) on tiny random components: schedule, stock equality, save/load, inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler, UniPCMultistepScheduler, WanPipeline

from diffusers_wan22 import Wan22Pipeline, WanMoETransformer3DModel, official_unshifted_sigmas

CALL = dict(prompt="Two cats boxing on a stage.", height=32, width=32, num_frames=5, num_inference_steps=8)


def _seeded(**kw):
    return dict(CALL, generator=torch.Generator().manual_seed(0), **kw)


def test_experts_follow_the_scheduler_timesteps(tiny_pipe, forward_counter):
    forward_counter.attach(tiny_pipe.transformer.high_noise_expert, "high")
    forward_counter.attach(tiny_pipe.transformer.low_noise_expert, "low")
    seen = []
    out = tiny_pipe(**_seeded(output_type="latent"),
                    callback_on_step_end=lambda p, i, t, kw: seen.append((i, int(t), p.current_expert)) or {})
    assert out.timesteps == [999, 988, 972, 952, 922, 877, 799, 631]  # official unipc grid, shift 12
    expected = ["high" if t >= 875 else "low" for t in out.timesteps]
    assert out.experts == expected == [e for _, _, e in seen]
    # CFG: cond + uncond per step, each on the step's expert.
    assert forward_counter.calls == [e for e in expected for _ in range(2)]


def test_guidance_scale_per_expert(tiny_pipe, forward_counter):
    """Guidance 1.0 on the low-noise expert skips its unconditional pass (a free speed-up for distilled LoRAs)."""
    forward_counter.attach(tiny_pipe.transformer.low_noise_expert, "low")
    out = tiny_pipe(**_seeded(output_type="latent", guidance_scale=4.0, guidance_scale_2=1.0))
    assert len(forward_counter.calls) == out.experts.count("low")


def test_boundary_ratio_override_moves_the_switch(tiny_pipe):
    out = tiny_pipe(**_seeded(output_type="latent", boundary_ratio=0.95))
    assert out.experts == ["high" if t >= 950 else "low" for t in out.timesteps]
    assert out.experts.count("high") == 4


class _OfficialGridUniPC(UniPCMultistepScheduler):
    """Stock `WanPipeline` calls `set_timesteps(n)`; give it the same official grid as ours for the comparison."""

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, **kwargs):
        if sigmas is None:
            sigmas = official_unshifted_sigmas(num_inference_steps, "unipc")
        super().set_timesteps(device=device, sigmas=sigmas, **kwargs)


def test_equals_stock_wan_pipeline(tiny_components):
    ours = Wan22Pipeline(**tiny_components)
    moe = tiny_components["transformer"]
    stock = WanPipeline(
        tokenizer=tiny_components["tokenizer"], text_encoder=tiny_components["text_encoder"],
        vae=tiny_components["vae"], scheduler=_OfficialGridUniPC.from_config(tiny_components["scheduler"].config),
        transformer=moe.high_noise_expert, transformer_2=moe.low_noise_expert, boundary_ratio=0.875,
    )
    kwargs = _seeded(negative_prompt="blurry", guidance_scale=4.0, guidance_scale_2=3.0)
    a = ours(**kwargs).frames
    b = stock(**_seeded(negative_prompt="blurry", guidance_scale=4.0, guidance_scale_2=3.0)).frames
    assert a.shape == b.shape == (1, 5, 32, 32, 3)
    np.testing.assert_array_equal(a, b)


def test_save_then_diffusion_pipeline_from_pretrained(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "Wan22Pipeline"
    assert index["transformer"] == ["diffusers_wan22", "WanMoETransformer3DModel"]
    loaded = DiffusionPipeline.from_pretrained(tmp_path, disable_mmap=True)  # bit-exact weights, see test_moe_model
    assert isinstance(loaded, Wan22Pipeline) and isinstance(loaded.transformer, WanMoETransformer3DModel)
    a = tiny_pipe(**_seeded(output_type="latent")).frames
    b = loaded(**_seeded(output_type="latent")).frames
    assert torch.equal(a, b)


def test_dpm_solver_swap_gives_the_official_dpmpp_grid(tiny_pipe):
    tiny_pipe.scheduler = DPMSolverMultistepScheduler.from_config(tiny_pipe.scheduler.config)
    out = tiny_pipe(**_seeded(output_type="latent", num_inference_steps=5))
    assert out.timesteps == [1000, 979, 947, 888, 750]  # official dpm++ grid (shift 12, 5 steps)
    assert out.experts == ["high"] * 4 + ["low"]


def test_official_defaults_fill_unset_arguments(tiny_pipe):
    scales = tiny_pipe.resolve_guidance(None, None)
    assert scales == (4.0, 3.0)
    assert tiny_pipe.resolve_guidance(5.0, None) == (5.0, 5.0)  # diffusers semantics
    d = tiny_pipe.variant_defaults
    assert (d.height, d.width, d.num_frames, d.sample_steps, d.sample_shift) == (720, 1280, 81, 40, 12.0)


def test_default_negative_prompt_is_the_official_one(tiny_pipe, monkeypatch):
    seen = []
    original = tiny_pipe.encode_prompt
    monkeypatch.setattr(tiny_pipe, "encode_prompt", lambda **kw: seen.append(kw["negative_prompt"]) or original(**kw))
    tiny_pipe(**_seeded(output_type="latent", num_inference_steps=2))
    assert seen == [tiny_pipe.variant_defaults.negative_prompt]


def test_latents_are_honoured_and_shape_checked(tiny_pipe):
    noise = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    a = tiny_pipe(**dict(CALL, latents=noise.clone(), output_type="latent")).frames
    b = tiny_pipe(**dict(CALL, latents=noise.clone(), output_type="latent")).frames
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"`latents` has shape \(1, 16, 2, 4, 5\)"):
        tiny_pipe(**dict(CALL, latents=torch.zeros(1, 16, 2, 4, 5)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(height=40), r"`height` must be a positive multiple of 16.*got 40"),
        (dict(width=-16), r"`width` must be a positive multiple of 16.*got -16"),
        (dict(num_frames=6), r"`num_frames` must be 4k\+1.*got 6"),
        (dict(num_inference_steps=0), r"`num_inference_steps` must be an integer >= 1, at most 1000; got 0"),
        (dict(guidance_scale_2=float("nan")), r"`guidance_scale_2` must be a finite number; got nan"),
        (dict(num_videos_per_prompt=0), r"`num_videos_per_prompt` must be an integer >= 1; got 0"),
        (dict(output_type="gif"), r"`output_type` must be one of \('np', 'pil', 'pt', 'latent'\); got 'gif'"),
        (dict(guidance_scale=-1.0), r"`guidance_scale` must be >= 0; got -1.0"),
        (dict(guidance_scale_2=-2.0), r"`guidance_scale_2` must be >= 0; got -2.0"),
        (dict(boundary_ratio=1.2), r"`boundary_ratio` must be in \[0, 1\]; got 1.2"),
        (dict(prompt=None), r"Provide either `prompt` or `prompt_embeds`"),
        (dict(prompt=3), r"`prompt` must be a string"),
        (dict(prompt=["a", "b"], negative_prompt=["c"]), r"`negative_prompt` has 1 entries but `prompt` has 2"),
        (dict(callback_on_step_end_tensor_inputs=["noise"]), r"may only name"),
    ],
)
def test_bad_arguments_fail_before_any_forward(tiny_pipe, forward_counter, kwargs, message):
    forward_counter.attach(tiny_pipe.transformer, "transformer").attach(tiny_pipe.text_encoder, "text_encoder")
    with pytest.raises(ValueError, match=message):
        tiny_pipe(**dict(CALL, **kwargs))
    assert forward_counter.calls == []


@pytest.mark.parametrize("solver", ["unipc", "dpm++", "euler"])
@pytest.mark.parametrize("split", [(2, 2), (3, 5), (0, 4), (4, 0)])
def test_expert_steps_give_the_requested_split(tiny_pipe, solver, split):
    from diffusers import FlowMatchEulerDiscreteScheduler

    if solver == "dpm++":
        tiny_pipe.scheduler = DPMSolverMultistepScheduler.from_config(tiny_pipe.scheduler.config)
    elif solver == "euler":
        tiny_pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=12.0)
    out = tiny_pipe(**dict(_seeded(output_type="latent"), num_inference_steps=None, expert_steps=split,
                           guidance_scale=1.0, guidance_scale_2=1.0))
    assert out.experts == ["high"] * split[0] + ["low"] * split[1]
    if split[0] and split[1]:
        # The low-noise stage starts on the boundary (875), not wherever a uniform grid happens to cross it.
        assert 874 <= out.timesteps[split[0]] < 875
    assert torch.isfinite(out.frames).all()


def test_expert_steps_must_match_num_inference_steps(tiny_pipe):
    with pytest.raises(ValueError, match=r"`expert_steps` must be \(n_high, n_low\).*=8; got \(2, 2\)"):
        tiny_pipe(**dict(CALL, expert_steps=(2, 2)))


def _stock_folder(tiny_components, path):
    moe = tiny_components["transformer"]
    stock = WanPipeline(
        tokenizer=tiny_components["tokenizer"], text_encoder=tiny_components["text_encoder"],
        vae=tiny_components["vae"], scheduler=tiny_components["scheduler"],
        transformer=moe.high_noise_expert, transformer_2=moe.low_noise_expert, boundary_ratio=0.875,
    )
    stock.save_pretrained(path)
    return path


def test_from_pretrained_accepts_the_stock_diffusers_layout(tiny_components, tmp_path):
    folder = _stock_folder(tiny_components, tmp_path / "stock")
    pipe = Wan22Pipeline.from_pretrained(folder, disable_mmap=True)
    assert isinstance(pipe.transformer, WanMoETransformer3DModel) and pipe.transformer.config.boundary_ratio == 0.875
    ref = Wan22Pipeline(**tiny_components)(**_seeded(output_type="latent")).frames
    assert torch.equal(pipe(**_seeded(output_type="latent")).frames, ref)


def test_from_pretrained_with_a_hub_repo_id_downloads_first(tiny_pipe, tmp_path, monkeypatch):
    import huggingface_hub

    tiny_pipe.save_pretrained(tmp_path / "snapshot")
    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, **kw: calls.append((repo_id, kw)) or str(tmp_path / "snapshot"))
    pipe = Wan22Pipeline.from_pretrained("someorg/wan22-tiny", revision="main", disable_mmap=True)
    assert calls == [("someorg/wan22-tiny", {"revision": "main"})]
    assert isinstance(pipe.transformer, WanMoETransformer3DModel)
