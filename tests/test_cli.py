"""The `wan22` command line and the examples; mp4s are read back. The demo and a usage error run the real console
script as subprocesses (tests/test_cli_errors.py runs many more); the rest runs in-process (`cli.main`, the examples
through `runpy`), which is the same code without a torch import per test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import pytest

# Imported here, not inside the tests: importing diffusers logs torchao notices, which must not land in the stderr a
# test captures.
from diffusers_wan22.cli import main

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
# Examples of models without a tiny version run on the official-format fixtures instead (small sizes, CPU).
FOLDER_EXAMPLES = {
    "turbo.py": ["--model", str(FIXTURES / "turbo" / "components"), "--components",
                 str(FIXTURES / "official" / "i2v_a14b"),
                 "--image", str(FIXTURES / "turbo" / "fp32_sla_ode" / "image.png"),
                 "--size", "304*256", "--frame_num", "5", "--sample_solver", "ode", "--prompt", "A cat surfing."],
    "animate.py": ["--model", str(FIXTURES / "official" / "animate_14b"), "--src_root_path",
                   str(FIXTURES / "official" / "animate_14b" / "inputs" / "animate"), "--frame_num", "5",
                   "--sample_steps", "2"],
}
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.py") if p.name not in FOLDER_EXAMPLES)


def _run(args: list[str], cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def read_video(path: Path) -> tuple[int, tuple[int, int], float]:
    """(frame count, (width, height), fps) of an mp4, decoded with imageio-ffmpeg."""
    reader = imageio.get_reader(path)
    try:
        meta = reader.get_meta_data()
        frames = sum(1 for _ in reader)
    finally:
        reader.close()
    return frames, tuple(meta["size"]), meta["fps"]


def test_demo_writes_a_real_mp4_and_reports_experts(tmp_path):
    out = tmp_path / "demo.mp4"
    res = _run(["wan22", "demo", "--output", str(out), "--size", "64*48", "--frame_num", "9", "--sample_steps", "6"],
               tmp_path)
    assert res.returncode == 0, res.stderr
    assert "expert=high" in res.stdout and "expert=low" in res.stdout
    assert read_video(out) == (9, (64, 48), 16.0)
    assert [p.name for p in tmp_path.iterdir()] == ["demo.mp4"]  # no temporary file left behind


def test_generate_with_the_tiny_model(tmp_path, capsys):
    out = tmp_path / "gen.mp4"
    code = main(["generate", "--model", "tiny", "--prompt", "a cat", "--size", "32*32", "--frame_num", "5",
                 "--sample_steps", "4", "--sample_solver", "dpm++", "--sample_guide_scale", "4.0", "3.0",
                 "--dtype", "fp32", "--output", str(out)])
    res = capsys.readouterr()
    assert code == 0, res.err
    assert "t= 1000.0" in res.out  # the official dpm++ grid starts at 1000
    assert read_video(out) == (5, (32, 32), 16.0)


def _inputs(folder: Path) -> tuple[Path, Path]:
    """A reference image and a 0.4 s tone (one S2V clip of 8 frames)."""
    import wave

    import numpy as np
    from PIL import Image

    image, audio = folder / "face.png", folder / "tone.wav"
    Image.new("RGB", (80, 64), (100, 120, 140)).save(image)
    t = np.arange(int(0.4 * 16000)) / 16000
    with wave.open(str(audio), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes((0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2").tobytes())
    return image, audio


def _has_audio_stream(path: Path) -> bool:
    import imageio_ffmpeg

    probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-i", str(path)], capture_output=True, text=True)
    return "Audio: aac" in probe.stderr


@pytest.mark.parametrize("task, extra, expected", [
    ("i2v-A14B", ["--size", "32*32", "--frame_num", "5"], (5, (32, 16), 16.0)),  # --size = area: 80x64 image
    ("ti2v-5B", ["--size", "64*64", "--frame_num", "5"], (5, (64, 64), 24.0)),
    ("s2v-14B", ["--size", "64*64", "--infer_frames", "8", "--audio", "tone.wav"], (5, (64, 64), 16.0)),
])
def test_generate_each_image_task_with_the_tiny_model(tmp_path, monkeypatch, capsys, task, extra, expected):
    _inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out.mp4"
    code = main(["generate", "--model", "tiny", "--task", task, "--image", "face.png", "--prompt", "a cat",
                 "--sample_steps", "2", "--dtype", "fp32", "--output", str(out), *extra])
    assert code == 0, capsys.readouterr().err[-2000:]
    assert read_video(out) == expected
    assert _has_audio_stream(out) == (task == "s2v-14B")


@pytest.mark.parametrize("args, message", [
    (["--task", "s2v-14B"], "--task s2v-14B needs --image"),
    (["--task", "i2v-A14B"], "--task i2v-A14B needs --image"),
    (["--task", "s2v-14B", "--image", "face.png"], "--task s2v-14B needs --audio"),
    (["--audio", "tone.wav"], "--audio is for s2v-14B only"),
    (["--image", "face.png"], "t2v-A14B is text-only"),
    (["--task", "ti2v-5B", "--image", "nope.png"], "--image 'nope.png': no such file"),
    (["--lora", "face.png@middle"], "expert must be high, low or both"),
    (["--lora", "missing.safetensors"], "no such file"),
    (["--task", "ti2v-5B", "--expert-steps", "2", "2"], "applies to the A14B tasks"),
])
def test_task_input_errors(tmp_path, monkeypatch, capsys, args, message):
    _inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    code = main(["generate", "--model", "tiny", "--prompt", "x", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize(
    "args, message",
    [
        (["demo", "--size", "100*64"], "--size 100*64: width and height must be positive multiples of 16"),
        (["demo", "--size", "big"], "--size must look like 1280*720"),
        (["demo", "--frame_num", "0"], "expected a positive integer, got 0"),
        (["generate", "--prompt", "x"], "the following arguments are required: --model"),
        (["generate", "--model", "/no/such/dir", "--prompt", "x"], "is not a folder"),
        (["generate", "--model", "tiny", "--prompt", "x", "--sample_solver", "euler"], "invalid choice: 'euler'"),
        (["generate", "--model", "tiny", "--prompt", "x", "--sample_guide_scale", "1", "2", "3"],
         "--sample_guide_scale takes one or two values"),
        (["generate", "--model", "tiny", "--prompt", "x", "--frame_num", "6", "--dtype", "fp32"],
         "--frame_num must be 4k+1"),
        (["info", str(ROOT)], "is not an official Wan 2.2 folder"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_usage_errors_are_one_line_with_exit_code_2(capsys, args, message):
    """In-process (`cli.main`) for speed; the subprocess test below checks the real script behaves the same."""
    try:
        code = main(args)
    except SystemExit as e:  # argparse errors exit from inside the parser
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and err.count("\n") == 1, err


def test_usage_error_from_the_real_script(tmp_path):
    res = _run(["wan22", "generate", "--model", "tiny", "--prompt", "x", "--size", "30*30"], tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == "wan22: error: argument --size: --size 30*30: width and height must be positive " \
                                 "multiples of 16"


def test_info_counts_parameters_of_every_component(capsys):
    """`wan22 info` reads headers only; its counts equal the fixture's recorded parameter counts."""
    import json

    folder = ROOT / "tests" / "fixtures" / "official" / "s2v_14b"
    code = main(["info", str(folder)])
    res = capsys.readouterr()
    assert code == 0, res.err
    hp = json.loads((folder / "fixture.json").read_text())["tiny_hparams"]
    for name, count in (("transformer", hp["dit"]["param_count"]), ("text_encoder", hp["t5"]["param_count"]),
                        ("vae", hp["vae21"]["param_count"]), ("audio_encoder", hp["wav2vec2"]["param_count"])):
        line = next(line for line in res.out.splitlines() if line.strip().startswith(name))
        assert f"{count:,d}" in line, line
    assert "s2v-14B" in res.out


def test_info_on_an_official_folder(capsys):
    code = main(["info", str(ROOT / "tests" / "fixtures" / "official" / "t2v_a14b")])
    res = capsys.readouterr()
    assert code == 0, res.err
    assert "t2v-A14B" in res.out and "boundary=0.875" in res.out


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_runs_on_the_tiny_model(example, tmp_path, monkeypatch):
    """Each example as `python examples/X.py --model tiny --output out.mp4` (run in this process by runpy)."""
    import runpy

    out = tmp_path / "out.mp4"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(example), "--model", "tiny", "--output", str(out)])
    runpy.run_path(str(example), run_name="__main__")
    frames, _, _ = read_video(out)
    assert frames >= 1
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]  # no temporary folder or file left behind


@pytest.mark.parametrize("name", sorted(FOLDER_EXAMPLES))
def test_folder_examples_run_on_the_fixtures(name, tmp_path, monkeypatch, capsys):
    """examples/turbo.py and examples/animate.py (no tiny model) on the official-format fixtures: the same video as
    `wan22 generate` with the same flags."""
    import runpy

    import numpy as np

    monkeypatch.chdir(tmp_path)
    flags = [*FOLDER_EXAMPLES[name], "--base_seed", "3"]
    monkeypatch.setattr(sys, "argv", [name, *flags, "--output", "example.mp4"])
    runpy.run_path(str(ROOT / "examples" / name), run_name="__main__")
    assert main(["generate", *flags, "--dtype", "fp32", "--device", "cpu", "--output", "cli.mp4"]) == 0
    example, cli = (np.stack(imageio.mimread(tmp_path / f)) for f in ("example.mp4", "cli.mp4"))
    assert example.shape[0] == 5 if name == "turbo.py" else example.shape[0] >= 5
    assert np.array_equal(example, cli)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli.mp4", "example.mp4"]


def test_t5_cpu_and_memory_flags_give_the_same_video(tmp_path, monkeypatch):
    """--t5_cpu keeps UMT5 out of the offload chain and on the CPU; videos equal the plain run's."""
    import numpy as np

    monkeypatch.chdir(tmp_path)
    base = ["generate", "--model", "tiny", "--prompt", "a cat", "--size", "32*32", "--frame_num", "5",
            "--sample_steps", "2", "--dtype", "fp32", "--device", "cpu"]
    videos = []
    for i, extra in enumerate([[], ["--t5_cpu"], ["--t5_cpu", "--offload_model"], ["--memory_mode", "group_offload"]]):
        assert main([*base, *extra, "--output", f"{i}.mp4"]) == 0
        videos.append(imageio.mimread(tmp_path / f"{i}.mp4"))
    assert all(np.array_equal(np.stack(videos[0]), np.stack(v)) for v in videos[1:])
