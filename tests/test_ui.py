"""`wan22 ui` without a browser: the schedule the page draws is the one the pipeline runs, the page's command line
makes the same video from the CLI, each refused input lands on its field before anything loads, and the page is
served beyond this machine only on request. (tests/test_ui_browser.py drives the page itself.)"""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_wan22 import Wan22Pipeline, build_tiny_components
from diffusers_wan22.cli import main
from diffusers_wan22.commands.parser import build_parser
from diffusers_wan22.commands.ui import parse_generate, turbo_model_flags
from diffusers_wan22.commands.validate import check_host, validate_ui
from diffusers_wan22.core.image_sizes import turbo_adaptive_size
from diffusers_wan22.pipelines.generate_args import loader_options
from diffusers_wan22.schedulers.scheduling_rcm import RCMScheduler
from diffusers_wan22.ui.form import check_request, command_line, field_of
from diffusers_wan22.ui.planning import scheduler_for, step_schedule
from diffusers_wan22.ui.runner import DONE, Runner
from diffusers_wan22.ui.tasks import TASK_TABS, TURBO_TASK, tabs_for

TABS = {tab.key: tab for tab in TASK_TABS}
FIXTURES = Path(__file__).resolve().parent / "fixtures"
TURBO, I2V = FIXTURES / "turbo" / "components", FIXTURES / "official" / "i2v_a14b"  # TurboWan2.2 experts, umT5/VAE
ANIMATE = FIXTURES / "official" / "animate_14b"
ANIMATE_INPUTS = ANIMATE / "inputs" / "animate"  # the official preprocessing output (animation: no bg / mask)
TURBO_IMAGE = FIXTURES / "turbo" / "fp32_sla_ode" / "image.png"


def _form(**fields) -> dict:
    base = dict(prompt="a cat", size="32*32", frames=5, steps=4, shift=12.0, solver="unipc", guidance=4.0,
                guidance_2=3.0, split=False, high_steps=2, low_steps=2, dtype="fp32", memory_mode="none")
    return {**base, **fields}


@pytest.fixture(scope="module")
def t2v_pipe():
    return Wan22Pipeline(**build_tiny_components("t2v-A14B"))


@pytest.mark.parametrize("steps, shift, solver, expert_steps", [
    (8, 12.0, "unipc", None), (7, 5.0, "dpm++", None), (4, 3.0, "unipc", (1, 3))])
def test_the_drawn_schedule_is_the_one_the_pipeline_runs(t2v_pipe, steps, shift, solver, expert_steps):
    pipe = t2v_pipe
    pipe.scheduler = scheduler_for(pipe.scheduler.config, solver, shift)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a cat", height=16, width=16, num_frames=1, num_inference_steps=steps, expert_steps=expert_steps,
               output_type="latent", generator=torch.Generator().manual_seed(0))
    drawn = step_schedule(TABS["t2v"], steps, shift, solver, expert_steps)
    assert drawn.timesteps == out.timesteps and drawn.experts == out.experts and drawn.boundary == 875.0


def test_the_pages_command_line_makes_the_same_video(tmp_path):
    """The runner (what the page runs) and `wan22 generate` with the command the page shows give equal frames."""
    tab = TABS["t2v"]
    argv = command_line(tab, "tiny", _form(seed=3), 3, str(tmp_path / "page.mp4"))
    request = check_request(tab, argv, parse_generate)
    assert request.ok, request.errors
    runner = Runner("tiny", "cpu", tmp_path)
    job = runner.start(tab, request.args, step_schedule(tab, 4, 12.0))
    assert job.finished.wait(120) and job.state == DONE, job.status()
    cli_argv = argv[:-1] + [str(tmp_path / "cli.mp4")]
    assert main(["generate", *cli_argv]) == 0
    page, cli = np.stack(imageio.mimread(tmp_path / "page.mp4")), np.stack(imageio.mimread(tmp_path / "cli.mp4"))
    assert page.shape == (5, 32, 32, 3) and np.array_equal(page, cli)


@pytest.mark.parametrize("tab, fields, field, message", [
    ("t2v", dict(size="100*100"), "size", "positive multiples of 16"),  # the CLI's parser
    ("t2v", dict(size="big"), "size", "--size must look like 1280*720"),
    ("t2v", dict(frames=6), "frames", "--frame_num must be 4k+1"),  # the CLI's torch-free checks
    ("t2v", dict(steps=0), "steps", "expected a positive integer"),
    ("t2v", dict(shift=0.0), "shift", "--sample_shift must be a finite number > 0"),
    ("t2v", dict(guidance=float("nan")), "guidance", "--sample_guide_scale must be finite numbers >= 0"),
    ("t2v", dict(prompt=""), "prompt", "--prompt TEXT (or --prompts FILE) is required"),
    ("ti2v", dict(size="48*48", guidance_2=None), "size", "multiples of 32"),
    ("i2v", dict(), "image", "--task i2v-A14B needs --image"),
    ("s2v", dict(image="missing.png", audio="missing.wav"), "image", "--image 'missing.png': no such file"),
])
def test_each_refused_input_lands_on_its_field(tab, fields, field, message):
    argv = command_line(TABS[tab], "tiny", _form(**fields), 0, "out.mp4")
    request = check_request(TABS[tab], argv, parse_generate)
    assert field in request.errors and message in request.errors[field], request.errors


def test_speech_to_video_frames_per_clip_are_checked(tmp_path):
    image, audio = tmp_path / "face.png", tmp_path / "tone.wav"
    image.write_bytes(b"x"), audio.write_bytes(b"x")  # existence is what the CLI checks before loading
    form = _form(image=str(image), audio=str(audio), size="64*64", infer_frames=6, guidance_2=None)
    request = check_request(TABS["s2v"], command_line(TABS["s2v"], "tiny", form, 0, "o.mp4"), parse_generate)
    assert "multiple of 4" in request.errors["infer_frames"]


def test_free_text_starting_with_a_dash_stays_a_value():
    argv = command_line(TABS["t2v"], "tiny", _form(prompt="-- a cat --", guidance_2=None), 5, "o.mp4")
    request = check_request(TABS["t2v"], argv, parse_generate)
    assert request.ok, request.errors
    assert (request.args.prompt, request.args.base_seed, request.args.sample_guide_scale) == ("-- a cat --", 5, [4.0])


def test_error_messages_name_their_field():
    assert field_of("argument --frame_num: expected a positive integer, got '0'") == "frames"
    assert field_of("`height` must be a positive multiple of 16; got 40.") == "size"
    assert field_of("something else entirely") == "general"


def test_tabs_follow_the_folder():
    assert [t.key for t in tabs_for("tiny", None)] == ["t2v", "i2v", "ti2v", "s2v"]  # Turbo / Animate: no tiny model
    assert [t.key for t in tabs_for("/models/x", "i2v-A14B")] == ["i2v"]
    assert [t.key for t in tabs_for("/models/x", TURBO_TASK)] == ["turbo"]
    assert [t.key for t in tabs_for("/models/x", "animate-14B")] == ["animate"]
    with pytest.raises(ValueError, match="no tab"):
        tabs_for("/models/x", "flf2v-A14B")


def _ui_args(*argv: str):
    args = build_parser().parse_args(["ui", *argv])
    validate_ui(args)
    return args


@pytest.mark.parametrize("argv, message", [
    (["--components", str(I2V)], "--components applies to TurboWan2.2 folders only"),
    (["--model", str(ANIMATE), "--quant_linear"], "--quant_linear applies to TurboWan2.2 folders"),
    (["--model", str(TURBO)], "has no models_t5_umt5-xxl-enc-bf16.pth"),  # umT5 / VAE: pass --components
    (["--model", str(TURBO), "--components", str(I2V), "--sla_topk", "2"], "--sla_topk must be a fraction in (0, 1]"),
])
def test_wan22_ui_checks_the_turbo_flags_as_generate_does(argv, message, capsys):
    assert main(["ui", *argv]) == 2
    assert message in capsys.readouterr().err


def test_the_turbo_tab_makes_a_turbo_command_line():
    """A TurboWan2.2 folder: every command carries --components (and --quant_linear for the W8A8 experts), takes
    the rCM sampler and TurboDiffusion's area rule; shift, guidance and steps past 4 are refused on their fields."""
    tab, args = TABS["turbo"], _ui_args("--model", str(TURBO), "--components", str(I2V))
    flags = turbo_model_flags(args)
    assert flags == ("--components", str(I2V))
    assert turbo_model_flags(_ui_args("--model", str(TURBO), "--components", str(I2V), "--quant_linear",
                                      "--sla_topk", "0.25"))[2:] == ("--quant_linear", "--sla_topk", "0.25")
    form = dict(prompt="A cat surfing.", image=str(TURBO_IMAGE), size="304*256", frames=5, steps=4, solver="sde",
                dtype="fp32", memory_mode="none")
    argv = command_line(tab, str(TURBO), form, 1, "o.mp4", flags)
    request = check_request(tab, argv, parse_generate)
    assert request.ok, request.errors
    assert "--sample_shift" not in argv and "--sample_guide_scale" not in argv and "--negative_prompt" not in argv
    parsed = request.args
    assert (parsed.sample_solver, parsed.turbo_quantized, str(parsed.components)) == ("sde", False, str(I2V))
    assert tuple(parsed.resolution) == turbo_adaptive_size(*Image.open(TURBO_IMAGE).size, 304 * 256)
    assert loader_options(parsed) == dict(quantized=False, components=I2V, sla_topk=0.1)  # as `generate` loads it
    refused = check_request(tab, command_line(tab, str(TURBO), dict(form, steps=5), 1, "o.mp4", flags),
                            parse_generate)
    assert "--sample_steps must be 1..4" in refused.errors["steps"]
    refused = check_request(tab, command_line(tab, str(TURBO), dict(form, image=None), 1, "o.mp4", flags),
                            parse_generate)
    assert "needs --image" in refused.errors["image"]


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_the_turbo_schedule_is_the_rcm_grid(steps):
    scheduler = RCMScheduler()
    scheduler.set_timesteps(steps)
    drawn = step_schedule(TABS["turbo"], steps, 5.0, "ode")
    assert drawn.timesteps == scheduler.timesteps.tolist() and drawn.boundary == 900.0
    # the high-noise expert while t >= 0.9 (995, 934), then the low-noise one (853, 609)
    assert drawn.experts == ["high", "high", "low", "low"][:steps]


def test_the_animate_tab_takes_the_official_flags():
    tab = TABS["animate"]
    form = dict(src_root_path=str(ANIMATE_INPUTS), mode="animate", refert_num=5, relighting=True, frames=13, steps=2,
                guidance=1.0, dtype="fp32", memory_mode="none")
    argv = command_line(tab, str(ANIMATE), form, 0, "o.mp4")
    request = check_request(tab, argv, parse_generate)
    assert request.ok, request.errors
    parsed = request.args
    assert (parsed.task, parsed.prompt, parsed.refert_num, parsed.frame_num, parsed.replace_flag) == (
        "animate-14B", None, 5, 13, False)  # no prompt: the pipeline uses the official one
    assert loader_options(parsed) == {"use_relighting_lora": True}
    cases = [(dict(mode="replace"), "src_root_path", "lacks ['src_bg.mp4', 'src_mask.mp4']"),
             (dict(src_root_path=""), "src_root_path", "needs --src_root_path"),
             (dict(frames=6), "frames", "--frame_num must be 4k+1"),
             (dict(refert_num=3), "refert_num", "--refert_num must be 1 or 5"),
             (dict(frames=9), "frames", "fewer than the 5 conditioning frames")]  # the pipeline's own check
    for fields, field, message in cases:
        refused = check_request(tab, command_line(tab, str(ANIMATE), {**form, **fields}, 0, "o.mp4"), parse_generate)
        assert field in refused.errors and message in refused.errors[field], (fields, refused.errors)


def test_a_remote_host_needs_the_flag_and_warns(capsys, tmp_path):
    assert main(["ui", "--host", "0.0.0.0"]) == 2
    assert "--allow-remote" in capsys.readouterr().err
    # with the flag: the warning, then (here) the missing folder stops it before anything is served
    # with the flag the host is accepted (here the missing folder is what stops it, before anything is served) ...
    assert main(["ui", "--host", "0.0.0.0", "--allow-remote", "--model", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "is not a folder" in err and "--allow-remote" not in err
    # ... and the page warns when it starts
    assert "WARNING: serving on 0.0.0.0:7860" in check_host("0.0.0.0", 7860, allow_remote=True)
    assert check_host("127.0.0.1", 7860, allow_remote=False) is None


def test_memory_plan_sizes_for_every_tab_and_folder(tmp_path):
    """The page plans with the sizes the command line checks with (`core/model_specs`): the real model for tiny
    tabs (TI2V-5B too), a model folder's own config and weight files, the real I2V-A14B for TurboWan2.2 `.pth`
    experts; a saved Animate folder (a stock-incompatible transformer config) is read without building a model."""
    from diffusers_wan22.core.model_specs import folder_spec, variant_spec
    from diffusers_wan22.ui.planning import planner_spec

    for tab in TASK_TABS:
        spec, source = planner_spec(tab, "tiny")
        assert spec == variant_spec(tab.variant) and source == f"the real {tab.variant}"
    spec, source = planner_spec(TABS["animate"], str(ANIMATE))
    assert spec == folder_spec(str(ANIMATE), "animate-14B") and "its config and weight files" in source
    assert planner_spec(TABS["turbo"], str(TURBO))[0] == variant_spec("i2v-A14B")
    saved = tmp_path / "animate"  # a saved folder's layout: model_index.json + transformer config with Animate keys
    (saved / "transformer").mkdir(parents=True)
    (saved / "model_index.json").write_text('{"_class_name": "Wan22AnimatePipeline"}')
    config = {"_class_name": "WanAnimateTransformer3DModel", "num_attention_heads": 2, "attention_head_dim": 16,
              "ffn_dim": 64, "num_layers": 2, "in_channels": 36, "out_channels": 16, "motion_encoder_size": 512}
    (saved / "transformer" / "config.json").write_text(json.dumps(config))
    spec, source = planner_spec(TABS["animate"], str(saved))
    assert spec.num_layers == 2 and spec.dim == 32 and "its config and weight files" in source
