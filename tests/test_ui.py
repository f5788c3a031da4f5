"""`wan22 ui` without a browser: the schedule the page draws is the one the pipeline runs, the page's command line
makes the same video from the CLI, each refused input lands on its field before anything loads, and the page is
served beyond this machine only on request. (tests/test_ui_browser.py drives the page itself.)"""

from __future__ import annotations

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from diffusers_wan22 import Wan22Pipeline, build_tiny_components
from diffusers_wan22.cli import main
from diffusers_wan22.commands.ui import parse_generate
from diffusers_wan22.commands.validate import check_host
from diffusers_wan22.ui.form import check_request, command_line, field_of
from diffusers_wan22.ui.planning import scheduler_for, step_schedule
from diffusers_wan22.ui.runner import DONE, Runner
from diffusers_wan22.ui.tasks import TASK_TABS, tabs_for

TABS = {tab.key: tab for tab in TASK_TABS}


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
    assert [t.key for t in tabs_for("tiny", None)] == ["t2v", "i2v", "ti2v", "s2v"]
    assert [t.key for t in tabs_for("/models/x", "i2v-A14B")] == ["i2v"]
    with pytest.raises(ValueError, match="no tab"):
        tabs_for("/models/x", "animate-14B")


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
