"""I2V-A14B and TI2V-5B (text and image modes) vs the official goldens (tiny official checkpoints, float32, CPU).

Tolerance everywhere: max|ours - official| <= 1e-4 * max|official| (`assert_close_rel`).
"""

from __future__ import annotations

import json

import PIL.Image
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler
from safetensors.torch import load_file

from conftest import OFFICIAL, assert_close_rel
from diffusers_wan22 import Wan22ImageToVideoPipeline, Wan22Pipeline
from diffusers_wan22.utils.image import i2v_a14b_image, i2v_a14b_size, ti2v_best_output_size, ti2v_image


def _runs(variant: str, extra: bool = False):
    name = "extra_goldens" if extra else "golden"
    meta = json.loads((OFFICIAL / variant / f"{name}.json").read_text())
    runs = meta["runs"] if extra else meta["meta"]["runs"]
    return runs, load_file(OFFICIAL / variant / f"{name}.safetensors")


@pytest.fixture(scope="module")
def i2v_components():
    return Wan22ImageToVideoPipeline.from_official(OFFICIAL / "i2v_a14b", torch_dtype=torch.float32).components


@pytest.fixture(scope="module")
def ti2v_components():
    return Wan22Pipeline.from_official(OFFICIAL / "ti2v_5b", torch_dtype=torch.float32).components


def _guidance(kw) -> dict:
    g = kw["guide_scale"]
    return dict(guidance_scale=g[1], guidance_scale_2=g[0]) if isinstance(g, list) else dict(guidance_scale=g)


def _check_run(out, per_step, g, run):
    assert out.timesteps == g[f"{run}/scheduler_timesteps"].tolist()
    assert_close_rel(per_step[-1], g[f"{run}/vae_decode_in_0"], what=f"{run} final latents")
    assert_close_rel(out.frames[0].permute(1, 0, 2, 3) * 2 - 1, g[f"{run}/video"], what=f"{run} video")


def _call(pipe, kw, g, run, **extra):
    if kw["sample_solver"] == "dpm++":
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    per_step = []
    out = pipe(prompt=kw["input_prompt"], num_frames=kw["frame_num"], num_inference_steps=kw["sampling_steps"],
               latents=g[f"{run}/noise"][None].clone(), output_type="pt", **_guidance(kw), **extra,
               callback_on_step_end=lambda p, i, t, c: per_step.append(c["latents"][0].clone()) or {})
    return out, per_step


def _image(variant, kw):
    path = kw["img"]["path"] if isinstance(kw["img"], dict) else kw["img"].removeprefix("PIL image ")
    return PIL.Image.open(OFFICIAL / variant / path).convert("RGB")


@pytest.mark.parametrize("run, extra", [("run_unipc", False), ("run_dpmpp", False), ("run_offsize_unipc", True)])
def test_i2v_a14b_runs(i2v_components, run, extra):
    runs, g = _runs("i2v_a14b", extra)
    kw = runs[run]["generate_kwargs"]
    pipe = Wan22ImageToVideoPipeline(**i2v_components)
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    out, per_step = _call(pipe, kw, g, run, image=_image("i2v_a14b", kw), max_area=kw["max_area"])
    assert out.experts == ["high" if x else "low" for x in g[f"{run}/expert_is_high_noise"].tolist()]
    _check_run(out, per_step, g, run)


def test_i2v_a14b_image_preprocessing_and_condition(i2v_components):
    runs, g = _runs("i2v_a14b")
    kw = runs["run_unipc"]["generate_kwargs"]
    image = _image("i2v_a14b", kw)
    width, height = i2v_a14b_size(image.width, image.height, kw["max_area"])
    frame = i2v_a14b_image(image, width, height)
    assert_close_rel(frame, g["input_image"], what="i2v preprocessed image")
    pipe = Wan22ImageToVideoPipeline(**i2v_components)
    cond = pipe.image_condition(frame, kw["frame_num"], 1, torch.device("cpu"))["condition"][0]
    assert_close_rel(cond, g["run_unipc/model_y"], what="i2v condition y (mask + image latent)")
    # An off-size image: the official stretch to 128x48 (t=892 falls under the low-noise expert at boundary 0.9).
    extra = json.loads((OFFICIAL / "i2v_a14b" / "extra_goldens.json").read_text())["runs"]["run_offsize_unipc"]
    image = _image("i2v_a14b", extra["generate_kwargs"])
    assert i2v_a14b_size(image.width, image.height, 8000) == (extra["output"]["width"], extra["output"]["height"])


@pytest.mark.parametrize("run", ["run_t2v_unipc", "run_t2v_dpmpp"])
def test_ti2v_text_mode(ti2v_components, run):
    runs, g = _runs("ti2v_5b")
    kw = runs[run]["generate_kwargs"]
    pipe = Wan22Pipeline(**ti2v_components)
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    out, per_step = _call(pipe, kw, g, run, width=kw["size"][0], height=kw["size"][1])
    assert out.experts == ["high"] * len(out.timesteps)  # dense: "the one transformer"
    _check_run(out, per_step, g, run)


@pytest.mark.parametrize("run, extra", [("run_i2v_unipc", False), ("run_i2v_offsize_unipc", True)])
def test_ti2v_image_mode(ti2v_components, run, extra):
    runs, g = _runs("ti2v_5b", extra)
    kw = runs[run]["generate_kwargs"]
    pipe = Wan22ImageToVideoPipeline(**ti2v_components)
    image = _image("ti2v_5b", kw)
    out, per_step = _call(pipe, kw, g, run, image=image, max_area=kw["max_area"])
    _check_run(out, per_step, g, run)
    if extra:
        assert ti2v_best_output_size(image.width, image.height, kw["max_area"]) == (64, 96)
        assert_close_rel(ti2v_image(image, 64, 96), g[f"{run}/input_image"].reshape(3, 96, 64),
                         what="ti2v cover-resized + cropped image")


@pytest.mark.parametrize("bad, message", [
    ("cat.png", "`image` must be a PIL image, a numpy array or a torch tensor; got str"),
    (torch.zeros(4, 32, 32), r"`image` tensor must be \[3, H, W\]"),
    (torch.zeros(32, 32).numpy(), r"`image` array must be \[H, W, 3\]"),
])
def test_bad_images_fail_before_any_forward(i2v_components, forward_counter, bad, message):
    pipe = Wan22ImageToVideoPipeline(**i2v_components)
    forward_counter.attach(pipe.transformer, "transformer").attach(pipe.vae, "vae")
    with pytest.raises(ValueError, match=message):
        pipe(image=bad, prompt="a cat", num_frames=5, num_inference_steps=2)
    assert forward_counter.calls == []
