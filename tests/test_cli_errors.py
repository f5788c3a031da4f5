"""What a new user gets wrong, run as the real `wan22` script (issue 16): every bad invocation is refused with ONE
stderr line that names the flag, exit code 2, no traceback, no output file, and before any weight file is opened.

"No weight file opened" is made observable: the model folders here are copies of the official fixtures whose
weight files (``*.safetensors``, ``*.pth``) are FIFOs. Opening a FIFO for reading blocks until someone writes to it,
so a command that touched a weight before refusing its arguments would hang and hit the timeout; `stat`, which the
memory check uses for file sizes, does not open them. (They are also ``chmod 000``, which stops a non-root user; the
tests may run as root, which ignores permission bits, hence the FIFOs.)

All invocations start at once in one fixture and run side by side: all but two are refused before torch is imported
(~0.3 s each); the two that need torch (is there a CUDA device? `wan22 info` reading headers) share the wait.
The same refusals for the tiny model and `wan22 info` on a folder without a VAE are checked in-process in
tests/test_user_paths.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import OFFICIAL

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 300  # a process blocked on a FIFO weight file ends here: the test then fails, naming the case
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
       "PYTHONUNBUFFERED": "1"}
WAN22 = [sys.executable, "-m", "diffusers_wan22_cli"]  # the console script's module (`wan22` itself may be
# installed from another checkout)
GEN = ["generate", "--prompt", "a cat"]


def fifo_copy(src: Path, dst: Path) -> Path:
    """A copy of an official fixture folder whose weight files are unreadable FIFOs (see the module docstring)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("golden*", "extra_goldens*", "fixture.json", "inputs"))
    for path in [*dst.rglob("*.safetensors"), *dst.rglob("*.pth")]:
        path.unlink()
        os.mkfifo(path)
        path.chmod(0)
    return dst


def make_inputs(folder: Path) -> dict[str, Path]:
    """A real image, a real 0.4 s tone, text under an image name, and a text file."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {name: folder / name for name in ("face.png", "tone.wav", "cat.png", "notes.txt", "prompts.txt")}
    Image.new("RGB", (80, 64), (100, 120, 140)).save(files["face.png"])
    t = np.arange(int(0.4 * 16000)) / 16000
    with wave.open(str(files["tone.wav"]), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes((0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2").tobytes())
    files["cat.png"].write_text("not a picture")
    files["notes.txt"].write_text("hello")
    files["prompts.txt"].write_text("a cat\na dog\n")
    return files


def broken_copy(dst: Path, breaker) -> Path:
    shutil.copytree(OFFICIAL / "t2v_a14b", dst, ignore=shutil.ignore_patterns("golden*", "extra_goldens*",
                                                                               "fixture.json"))
    breaker(dst)
    return dst


def _truncate_shard(folder: Path) -> None:
    shard = folder / "low_noise_model" / "diffusion_pytorch_model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])


# (id, argv, flag named in the error, text the error contains). {T2V} {I2V} {TI2V} {S2V}: FIFO folders;
# {face} {tone} {cat} {notes} {prompts}: input files; {trunc}: an official folder with a truncated shard.
# Generate cases get `--output out.mp4` unless they name their own output.
CASES = [
    # bug 3: a shift of 0, -1 or NaN made an all-black video with exit code 0
    ("shift_zero", [*GEN, "--model", "{T2V}", "--sample_shift", "0"], "--sample_shift", "finite number > 0"),
    ("shift_negative", [*GEN, "--model", "{T2V}", "--sample_shift", "-1"], "--sample_shift", "got -1.0"),
    ("shift_nan", [*GEN, "--model", "{T2V}", "--sample_shift", "nan"], "--sample_shift", "got nan"),
    ("guide_nan", [*GEN, "--model", "{T2V}", "--sample_guide_scale", "nan"], "--sample_guide_scale", "finite"),
    # bug 4: checks that used to run after the pipeline had loaded (or after every step)
    ("output_gif", [*GEN, "--model", "{T2V}", "--output", "out.gif"], "--output", "must end in .mp4"),
    ("frame_num_6", [*GEN, "--model", "{T2V}", "--frame_num", "6"], "--frame_num", "4k+1"),
    ("frame_num_6_hyphen", [*GEN, "--model", "{T2V}", "--frame-num", "6"], "--frame_num", "4k+1"),
    ("ti2v_size_not_32", [*GEN, "--model", "{TI2V}", "--size", "48*48"], "--size", "multiples of 32"),
    ("image_not_an_image", [*GEN, "--model", "{I2V}", "--image", "{cat}"], "--image", "not an image"),
    ("image_missing", [*GEN, "--model", "{I2V}"], "--image", "needs --image"),
    ("i2v_area_too_small", [*GEN, "--model", "{I2V}", "--image", "{face}", "--size", "16*16"], "--size",
     "too small"),
    ("s2v_size_too_small", [*GEN, "--model", "{S2V}", "--image", "{face}", "--audio", "{tone}", "--size", "16*16"],
     "--size", "at least 64*64"),
    # tracebacks the issue found
    ("lora_not_safetensors", [*GEN, "--model", "{T2V}", "--lora", "{face}"], "--lora", "not a safetensors file"),
    ("device_gpu", [*GEN, "--model", "{T2V}", "--device", "gpu"], "--device", "expected cpu, cuda"),
    ("device_cuda", [*GEN, "--model", "{T2V}", "--device", "cuda"], "--device", "no cuda device"),
    ("frame_num_huge", [*GEN, "--model", "{T2V}", "--frame_num", "100001", "--device", "cpu"], "--frame_num",
     "GB of RAM"),
    ("size_huge", [*GEN, "--model", "{T2V}", "--size", "16384*16384", "--device", "cpu"], "--size", "GB of RAM"),
    ("pose_video_image", [*GEN, "--model", "{S2V}", "--image", "{face}", "--audio", "{tone}", "--pose_video",
                          "{face}"], "--pose_video", "still image"),
    ("audio_not_audio", [*GEN, "--model", "{S2V}", "--image", "{face}", "--audio", "{notes}"], "--audio",
     "no audio stream"),
    ("info_truncated_shard", ["info", "{trunc}"], "diffusion_pytorch_model-00002-of-00002.safetensors",
     "truncated or corrupt"),
    ("convert_onto_cwd", ["convert", "{T2V}", ".", "--overwrite"], "DST", "--overwrite would delete"),
    ("convert_onto_parent_of_src", ["convert", "{T2V}", "{T2V}/..", "--overwrite"], "DST", "holds the source"),
    # options that were ignored without a word
    ("s2v_frame_num", [*GEN, "--model", "{S2V}", "--image", "{face}", "--audio", "{tone}", "--frame_num", "81"],
     "--frame_num", "does not apply to s2v-14B"),
    ("s2v_two_guidance", [*GEN, "--model", "{S2V}", "--image", "{face}", "--audio", "{tone}",
                          "--sample_guide_scale", "4", "3"], "--sample_guide_scale", "one value"),
    ("ti2v_two_guidance", [*GEN, "--model", "{TI2V}", "--sample_guide_scale", "4", "3"], "--sample_guide_scale",
     "one value"),
    ("output_with_prompts", ["generate", "--model", "{T2V}", "--prompts", "{prompts}", "--output", "o.mp4"],
     "--output", "use --output_dir"),
    ("output_dir_without_prompts", [*GEN, "--model", "{T2V}", "--output_dir", "videos"], "--output_dir",
     "is for --prompts"),
    ("output_exists", [*GEN, "--model", "{T2V}", "--output", "existing.mp4"], "--output", "pass --overwrite"),
    ("offload_and_memory_mode", [*GEN, "--model", "{T2V}", "--offload_model", "--memory_mode", "group_offload"],
     "--offload_model", "keep one"),
    ("offload_dir_without_group", [*GEN, "--model", "{T2V}", "--offload_dir", "spill"], "--offload_dir",
     "group_offload"),
    ("lazy_on_dense", [*GEN, "--model", "{TI2V}", "--memory_mode", "lazy_experts"], "--memory_mode",
     "one transformer"),
    ("plan_frame_82", ["plan", "--frame_num", "82"], "--frame_num", "4k+1"),
    # more values a user types
    ("seed_negative", [*GEN, "--model", "{T2V}", "--base_seed", "-2"], "--base_seed", "-1 (random)"),
    ("prompt_empty", ["generate", "--prompt", " ", "--model", "{T2V}"], "--prompt", "is empty"),
    ("tiny_unknown_task", [*GEN, "--model", "tiny:t2v-1B"], "--model", "tiny:<task>"),
    ("model_missing", [*GEN, "--model", "/no/such/folder"], "--model", "is not a folder"),
    ("task_mismatch", [*GEN, "--model", "{T2V}", "--task", "i2v-A14B"], "--task", "holds a t2v-A14B model"),
    ("steps_huge", [*GEN, "--model", "{T2V}", "--sample_steps", "5000"], "--sample_steps", "1..1000"),
    ("expert_steps_sum", [*GEN, "--model", "{T2V}", "--expert_steps", "2", "2", "--sample_steps", "8"],
     "--expert_steps", "makes 4 steps"),
    ("expert_steps_hyphen_dense", [*GEN, "--model", "{TI2V}", "--expert-steps", "2", "2"], "--expert_steps",
     "A14B tasks"),
    ("infer_frames_7", [*GEN, "--model", "{S2V}", "--image", "{face}", "--audio", "{tone}", "--infer_frames", "7"],
     "--infer_frames", "multiple of 4"),
    ("solver_unknown", [*GEN, "--model", "{T2V}", "--sample_solver", "euler"], "--sample_solver", "invalid choice"),
    ("convert_s2v_diffusers_layout", ["convert", "{S2V}", "new_folder", "--layout", "diffusers"], "--layout",
     "no stock diffusers pipeline"),
    ("convert_shard_size", ["convert", "{T2V}", "new_folder", "--max-shard-size", "lots"], "--max_shard_size",
     "expected a size like 5GB"),
]
PRE_EXISTING = {"output_exists": {"existing.mp4": b"an earlier video"}}


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("user_errors")
    folders = {key: fifo_copy(OFFICIAL / name, base / f"fifo_{name}")
               for key, name in (("T2V", "t2v_a14b"), ("I2V", "i2v_a14b"), ("TI2V", "ti2v_5b"), ("S2V", "s2v_14b"))}
    folders["trunc"] = broken_copy(base / "truncated", _truncate_shard)
    inputs = make_inputs(base / "inputs")
    return {**{k: str(v) for k, v in folders.items()}, **{Path(k).stem: str(v) for k, v in inputs.items()},
            "base": str(base)}


def run_case(case: tuple, places: dict) -> tuple[subprocess.CompletedProcess | None, Path, float]:
    name, argv, _, _ = case
    cwd = Path(places["base"]) / "runs" / name
    cwd.mkdir(parents=True)
    for file, data in PRE_EXISTING.get(name, {}).items():
        (cwd / file).write_bytes(data)
    argv = [a.format(**places) for a in argv]
    if argv[0] == "generate" and "--output" not in argv and "--prompts" not in argv:
        argv += ["--output", "out.mp4"]
    start = time.perf_counter()
    try:
        res = subprocess.run([*WAN22, *argv], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        res = None
    return res, cwd, time.perf_counter() - start


def interrupt_run(folder: Path) -> tuple[int, str, list[str]]:
    """`wan22 generate --model tiny` sent SIGINT in the middle of its run: (exit code, stderr, files left)."""
    folder.mkdir(parents=True)
    proc = subprocess.Popen([*WAN22, "generate", "--model", "tiny", "--prompt", "a cat", "--size", "64*64",
                             "--frame_num", "17", "--sample_steps", "500", "--dtype", "fp32", "--device", "cpu",
                             "--output", "out.mp4"], cwd=folder, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # the seed is printed right before the pipeline is built and run
            if line.startswith("Seed:"):
                break
        time.sleep(3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, err, sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def results(places) -> dict:
    """Every case, and the Ctrl-C run, side by side as real subprocesses (see the module docstring)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        interrupted = pool.submit(interrupt_run, Path(places["base"]) / "runs" / "ctrl_c")
        futures = {case[0]: pool.submit(run_case, case, places) for case in CASES}
        return {"ctrl_c": interrupted.result(), **{name: future.result() for name, future in futures.items()}}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_invocation_is_one_line_naming_the_flag(case, results):
    name, _, flag, text = case
    res, cwd, _ = results[name]
    assert res is not None, f"{name}: still running after {TIMEOUT} s: it opened a weight file (a FIFO)"
    err = res.stderr
    assert res.returncode == 2, f"rc {res.returncode}: {err[-2000:]}"
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("wan22: error: "), err
    assert flag in err and text in err, err
    left = {p.name: p.read_bytes() for p in cwd.iterdir()}
    assert left == PRE_EXISTING.get(name, {}), f"files left behind or changed: {sorted(left)}"


def test_refusals_before_torch_are_fast(results):
    """Invocations refused by the torch-free checks return in well under the time it takes to import torch."""
    needs_torch = {"device_cuda", "info_truncated_shard"}  # is there a CUDA device? / safetensors headers
    slow = {n: round(r[2], 1) for n, r in results.items() if n not in needs_torch | {"ctrl_c"} and r[2] > 10}
    assert not slow, f"refused slowly (torch imported before the check?): {slow}"


def test_ctrl_c_is_one_line_exit_130_and_leaves_no_file(results):
    """SIGINT in the middle of a run: `wan22: interrupted`, exit code 130, no traceback, no video, no temp file."""
    code, err, left = results["ctrl_c"]
    assert code == 130, err[-2000:]
    assert "Traceback" not in err and err.splitlines()[-1] == "wan22: interrupted", err[-2000:]
    assert left == []


@pytest.mark.parametrize("argv", [["--help"], ["plan", "--model", "ti2v-5B"]], ids=["help", "plan"])
def test_a_closed_stdout_is_not_a_traceback(argv):
    """`wan22 ... | head` when head has already gone: no traceback; exit code 0 (help) or 141 (= SIGPIPE)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte is written
    proc = subprocess.Popen([*WAN22, *argv], stdout=write_end, stderr=subprocess.PIPE, env=ENV, text=True)
    os.close(write_end)
    _, err = proc.communicate(timeout=60)
    assert err == "" and proc.returncode in (0, 141)


def test_every_flag_has_both_spellings():
    """`--frame_num` = `--frame-num`, `--expert_steps` = `--expert-steps`, `--max_shard_size` = `--max-shard-size`."""
    from diffusers_wan22.commands.parser import parse_args

    a = parse_args(["generate", "--model", "tiny", "--prompt", "x", "--frame-num", "5", "--expert-steps", "1", "1",
                    "--sample-guide-scale", "1", "--t5-cpu", "--base-seed=3"])
    b = parse_args(["generate", "--model", "tiny", "--prompt", "x", "--frame_num", "5", "--expert_steps", "1", "1",
                    "--sample_guide_scale", "1", "--t5_cpu", "--base_seed=3"])
    assert vars(a) == vars(b) and a.frame_num == 5 and a.expert_steps == [1, 1] and a.base_seed == 3
    c = parse_args(["convert", "src", "dst", "--max-shard-size", "20KB"])
    assert c.max_shard_size == parse_args(["convert", "src", "dst", "--max_shard_size", "20KB"]).max_shard_size


def test_validation_for_other_front_ends_names_the_flag(places):
    """`validate_generate` on plain values (what a UI calls): a `CliError` whose `.flag` is the field at fault."""
    import argparse

    from diffusers_wan22 import CliError
    from diffusers_wan22.commands.parser import generate_defaults
    from diffusers_wan22.commands.validate import validate_generate

    def check(**values):
        validate_generate(argparse.Namespace(**{**generate_defaults(), "prompt": "a cat", **values}))

    check(model="tiny", output=str(Path(places["base"]) / "ok.mp4"))
    for values, flag in [(dict(model="tiny", frame_num=6), "--frame_num"),
                         (dict(model=places["TI2V"], size=(48, 48)), "--size"),
                         (dict(model="tiny", sample_shift=float("nan")), "--sample_shift"),
                         (dict(model=places["I2V"], image=Path(places["cat"])), "--image")]:
        with pytest.raises(CliError) as info:
            check(**values)
        assert info.value.flag == flag and flag in str(info.value)


@pytest.mark.parametrize("module", ["validate", "media", "memory_check", "errors", "examples", "parser"])
def test_checking_modules_import_no_torch(module):
    code = (f"import sys, diffusers_wan22.commands.{module}; "
            "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'numpy') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-500:]
