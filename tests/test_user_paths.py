"""The paths a new user takes first (issue 16), end to end on the tiny official-format fixtures.

* bug 1: `wan22 generate --model DIR` loads every folder layout `wan22 convert` writes (both, every variant; the
  converter's own output in the README commands);
* bug 2: `--memory_mode lazy_experts` works from the command line (tiny, official, converted folders of both
  layouts) and in `examples/low_memory.py`, and gives the video of the eager run;
* bug 7: `Wan22SpeechToVideoPipeline(output_type="pt")` is diffusers' ``[B, F, 3, H, W]`` in [0, 1];
* every `wan22` command of README.md runs (official folders -> the fixtures, sizes made small);
* docs/cli.md is what docs/make_cli_reference.py makes from the parser today;
* what the CLI prints (resolution, seed, no expert for a dense model), the documented scheduler swap keeps the
  shift, the pipelines refuse a bad shift or a size that cannot fit before any model runs, and the memory check's
  parameter counts equal diffusers' models.

Commands run in-process (`diffusers_wan22.cli.main`) to keep the suite fast; tests/test_cli_errors.py runs the real
script as subprocesses.
"""

from __future__ import annotations

import os
import re
import runpy
import shlex
import subprocess
import sys
import wave
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from conftest import OFFICIAL
from diffusers_wan22 import Wan22Pipeline, Wan22SpeechToVideoPipeline, build_tiny_components
from diffusers_wan22.cli import main

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = {"t2v-A14B": OFFICIAL / "t2v_a14b", "i2v-A14B": OFFICIAL / "i2v_a14b", "ti2v-5B": OFFICIAL / "ti2v_5b",
            "s2v-14B": OFFICIAL / "s2v_14b", "animate-14B": OFFICIAL / "animate_14b"}
TURBO = ROOT / "tests" / "fixtures" / "turbo" / "components"  # TurboDiffusion's expert files, tiny
# README names the official download folders (Wan-AI/Wan2.2-<Name>); Animate's preprocessing output folder -> the
# fixture's inputs
README_FOLDERS = {**{f"./Wan2.2-{task.upper()}": str(path) for task, path in FIXTURES.items()},
                  "./Wan2.2-Animate-14B": str(FIXTURES["animate-14B"]),
                  "./process_results": str(FIXTURES["animate-14B"] / "inputs" / "animate"),
                  "./TurboWan2.2": str(TURBO)}
# small runs: (size, frame flags) per task
SMALL = {"t2v-A14B": ["--size", "32*32", "--frame_num", "1"], "i2v-A14B": ["--size", "32*32", "--frame_num", "1"],
         "ti2v-5B": ["--size", "64*64", "--frame_num", "1"],
         "s2v-14B": ["--size", "64*64", "--infer_frames", "4", "--num_clip", "1"],
         "animate-14B": ["--frame_num", "5"],
         "turbo": ["--size", "304*256", "--frame_num", "5"]}  # SLA keeps 10% of the key blocks: enough tokens for one
FAST = ["--sample_steps", "2", "--dtype", "fp32", "--device", "cpu"]


def make_inputs(folder: Path) -> None:
    """The files README's commands name: cat.jpg, face.png, speech.wav (0.4 s) and two tiny LoRA files."""
    Image.new("RGB", (80, 64), (200, 120, 40)).save(folder / "cat.jpg")
    Image.new("RGB", (80, 64), (100, 120, 140)).save(folder / "face.png")
    t = np.arange(int(0.4 * 16000)) / 16000
    with wave.open(str(folder / "speech.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes((0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2").tobytes())
    g = torch.Generator().manual_seed(0)
    for name in ("hi", "lo"):  # the official key format of the published two-file LoRAs, for the fixture's dim 32
        save_file({f"diffusion_model.blocks.{i}.self_attn.q.lora_{ab}.weight": torch.randn(shape, generator=g) * 0.01
                   for i in range(2) for ab, shape in (("A", (4, 32)), ("B", (32, 4)))}, folder / f"{name}.safetensors")


def run_cli(argv: list[str], cwd: Path, monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.chdir(cwd)
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def video(path: Path) -> np.ndarray:
    return iio.imread(path)


# ------------------------------------------------------------------------------------------------ bug 1
def stock_layout(dst: Path, variant: str, parts: dict | None = None) -> Path:
    """The stock diffusers layout `wan22 convert --layout diffusers` writes (diffusers' own `WanPipeline` /
    `WanImageToVideoPipeline`: `transformer/` + `transformer_2/`, `boundary_ratio`), saved from ``parts`` (default:
    tiny components). The converter itself writes one in the README commands (`test_every_readme_command_runs`)."""
    from diffusers import WanImageToVideoPipeline, WanPipeline

    parts = dict(parts or build_tiny_components(variant))
    moe = parts.pop("transformer")
    experts = dict(transformer=moe.high_noise_expert, transformer_2=moe.low_noise_expert) if variant != "ti2v-5B" \
        else dict(transformer=moe, transformer_2=None)
    if variant == "i2v-A14B":
        WanImageToVideoPipeline(**parts, **experts, image_encoder=None, image_processor=None,
                                boundary_ratio=0.9).save_pretrained(dst)
    else:
        WanPipeline(**parts, **experts, boundary_ratio=None if variant == "ti2v-5B" else 0.875,
                    expand_timesteps=variant == "ti2v-5B").save_pretrained(dst)
    return dst


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[tuple[str, str], Path]:
    """A folder of each layout the converter writes, per variant: ours (what `--layout wan22` writes, i.e.
    `save_pretrained`; T2V and S2V are the folders an earlier version saved, tests/fixtures/saved_f22e386) and the
    stock one, saved by diffusers' own pipelines from tiny components; the T2V stock folder holds the official
    fixture's weights (the lazy-experts test compares it with the official folder)."""
    from diffusers_wan22 import Wan22ImageToVideoPipeline

    base = tmp_path_factory.mktemp("folders")
    saved = Path(__file__).parent / "fixtures" / "saved_f22e386"
    out = {("t2v-A14B", "wan22"): saved / "t2v_a14b", ("s2v-14B", "wan22"): saved / "s2v_14b"}
    official = Wan22Pipeline.from_official(FIXTURES["t2v-A14B"]).components
    out["t2v-A14B", "diffusers"] = stock_layout(base / "t2v-diffusers", "t2v-A14B", official)
    for variant in ("i2v-A14B", "ti2v-5B"):
        out[variant, "diffusers"] = stock_layout(base / f"{variant}-diffusers", variant)
        cls = Wan22ImageToVideoPipeline if variant == "i2v-A14B" else Wan22Pipeline
        cls(**build_tiny_components(variant)).save_pretrained(base / f"{variant}-wan22")
        out[variant, "wan22"] = base / f"{variant}-wan22"
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    make_inputs(folder)
    return folder


LAYOUTS = [("t2v-A14B", "wan22"), ("t2v-A14B", "diffusers"), ("i2v-A14B", "wan22"), ("i2v-A14B", "diffusers"),
           ("ti2v-5B", "wan22"), ("ti2v-5B", "diffusers"), ("s2v-14B", "wan22")]


@pytest.mark.parametrize("variant, layout", LAYOUTS, ids=[f"{v}-{lay}" for v, lay in LAYOUTS])
def test_generate_loads_every_layout_the_converter_writes(folders, inputs, variant, layout, tmp_path, monkeypatch,
                                                          capsys):
    extra = {"i2v-A14B": ["--image", str(inputs / "cat.jpg")],
             "s2v-14B": ["--image", str(inputs / "face.png"), "--audio", str(inputs / "speech.wav")]}.get(variant, [])
    code, out, err = run_cli(["generate", "--model", str(folders[variant, layout]), "--prompt", "a cat",
                              *SMALL[variant], *FAST, *extra, "--output", "out.mp4"], tmp_path, monkeypatch, capsys)
    assert code == 0, err
    assert video(tmp_path / "out.mp4").shape[0] >= 1 and "Resolution:" in out


# ------------------------------------------------------------------------------------------------ bug 2
def test_lazy_experts_from_the_command_line_give_the_eager_video(folders, tmp_path, monkeypatch, capsys):
    """`--memory_mode lazy_experts` on the official T2V fixture, on its conversion to the stock layout and on our
    layout saved from it, gives the video of the eager official run; on `tiny`, that of the eager tiny run.
    `--expert_steps 1 1`: one step on each expert, so both are read lazily."""
    official = FIXTURES["t2v-A14B"]
    ours = tmp_path / "ours"
    Wan22Pipeline.from_official(official).save_pretrained(ours)
    runs = {}
    for name, model, mode in (("official eager", official, None), ("official", official, "lazy_experts"),
                              ("stock layout", folders["t2v-A14B", "diffusers"], "lazy_experts"),
                              ("our layout", ours, "lazy_experts"), ("tiny eager", "tiny", None),
                              ("tiny", "tiny", "lazy_experts")):
        argv = ["generate", "--model", str(model), "--prompt", "a cat", "--size", "32*32", "--frame_num", "1",
                "--expert_steps", "1", "1", "--dtype", "fp32", "--device", "cpu", "--output", f"{len(runs)}.mp4"]
        code, out, err = run_cli([*argv, *(["--memory_mode", mode] if mode else [])], tmp_path, monkeypatch, capsys)
        assert code == 0, f"{name}: {err}"
        assert "expert=high" in out and "expert=low" in out, name
        runs[name] = video(tmp_path / f"{len(runs)}.mp4")
    for name in ("official", "stock layout", "our layout"):
        assert np.array_equal(runs[name], runs["official eager"]), name
    assert np.array_equal(runs["tiny"], runs["tiny eager"])


def test_low_memory_example_runs_lazy_experts_on_an_official_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["low_memory.py", "--model", str(FIXTURES["t2v-A14B"]), "--memory_mode",
                                      "lazy_experts", "--size", "32*32", "--frame_num", "1", "--sample_steps", "4"])
    runpy.run_path(str(ROOT / "examples" / "low_memory.py"), run_name="__main__")
    assert "experts per step: ['high', 'high', 'high', 'low']" in capsys.readouterr().out
    assert video(tmp_path / "low_memory.mp4").shape == (1, 32, 32, 3)


# ------------------------------------------------------------------------------------------------ bug 7
def test_s2v_pt_output_is_frames_first_in_unit_range():
    """`output_type="pt"` is diffusers' layout, [B, F, 3, H, W] in [0, 1], and equals the "np" output."""
    pipe = Wan22SpeechToVideoPipeline(**build_tiny_components("s2v-14B"))
    image = Image.new("RGB", (64, 64), (100, 120, 140))
    audio = (np.sin(np.arange(6400) / 10).astype(np.float32) * 0.3, 16000)
    kw = dict(prompt="a woman is singing", height=64, width=64, infer_frames=4, num_clips=1, num_inference_steps=2)
    pt = pipe(image, audio, output_type="pt", generator=torch.Generator().manual_seed(0), **kw).frames
    arr = pipe(image, audio, output_type="np", generator=torch.Generator().manual_seed(0), **kw).frames
    assert pt.shape == (1, 1, 3, 64, 64) and 0.0 <= pt.min() and pt.max() <= 1.0
    np.testing.assert_allclose(pt.permute(0, 1, 3, 4, 2).numpy(), arr, atol=1e-6)


# ------------------------------------------------------------------------------------------------ README, docs
def readme_commands() -> list[str]:
    """Every `wan22 ...` command in README.md's bash blocks (`pip install ... && wan22 demo` gives `wan22 demo`)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            commands += [part.strip() for part in line.split("&&") if part.strip().startswith("wan22 ")]
    return commands


def offline_argv(command: str) -> list[str]:
    """A README command made to run here: official folders -> the tiny fixtures, small sizes, CPU."""
    argv = shlex.split(command, comments=True)[1:]
    argv = [README_FOLDERS.get(a, a) for a in argv]
    if argv[0] == "demo":
        return [*argv, "--size", "32*32", "--frame_num", "1", "--sample_steps", "2"]
    if argv[0] != "generate":
        return argv
    task = "turbo" if str(TURBO) in argv else next((t for t, f in FIXTURES.items() if str(f) in argv), "t2v-A14B")
    steps = [] if "--expert_steps" in argv else ["--sample_steps", "1"]
    return [*argv, *SMALL[task], *steps, "--dtype", "fp32", "--device", "cpu"]


def test_every_readme_command_runs(tmp_path, monkeypatch, capsys):
    """In README order (the converted folder is used after `wan22 convert` wrote it); `hf download` needs the
    network and is not run."""
    make_inputs(tmp_path)
    commands = readme_commands()
    assert len(commands) >= 12 and any(c.startswith("wan22 generate") for c in commands)
    for command in commands:
        argv = offline_argv(command)
        code, out, err = run_cli(argv, tmp_path, monkeypatch, capsys)
        assert code == 0, f"{command}\n-> {argv}\n{err[-2000:]}"
        if "--output" in argv:
            assert (tmp_path / argv[argv.index("--output") + 1]).is_file(), command


def test_cli_reference_matches_the_parser():
    res = subprocess.run([sys.executable, str(ROOT / "docs" / "make_cli_reference.py"), "--check"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr


def test_documented_scheduler_swap_keeps_the_official_expert_split():
    """README: `FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, shift=...flow_shift)` keeps
    shift 12, so 4 steps split 3 high + 1 low as with UniPC; without `shift=` it would be 1 + 3."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe = Wan22Pipeline(**build_tiny_components("t2v-A14B"))
    kw = dict(prompt="a cat", height=32, width=32, num_frames=1, num_inference_steps=4, output_type="latent")
    official = pipe(**kw).experts
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config,
                                                                 shift=pipe.scheduler.config.flow_shift)
    assert pipe(**kw).experts == official == ["high"] * 3 + ["low"]
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, shift=1.0)
    assert pipe(**kw).experts == ["high"] + ["low"] * 3


# ------------------------------------------------------------------------------------------------ what is printed
def test_dense_model_reports_no_expert_and_a_random_seed_is_printed(tmp_path, monkeypatch, capsys):
    seeds = []
    for i in range(2):
        code, out, err = run_cli(["generate", "--model", "tiny", "--task", "ti2v-5B", "--prompt", "a car",
                                  *SMALL["ti2v-5B"], *FAST, "--base_seed", "-1", "--output", f"{i}.mp4"], tmp_path,
                                 monkeypatch, capsys)
        assert code == 0, err
        assert "expert=" not in out and "step  1" in out and "Resolution: 64x64, 1 frame (0.0 s at 24 fps)" in out
        seeds.append(int(re.search(r"Seed: (\d+)", out).group(1)))
    assert seeds[0] != seeds[1]


def test_image_task_prints_the_resolution_it_chose(inputs, tmp_path, monkeypatch, capsys):
    code, out, err = run_cli(["generate", "--model", "tiny", "--task", "i2v-A14B", "--image", str(inputs / "cat.jpg"),
                              "--prompt", "a cat", *SMALL["i2v-A14B"], *FAST, "--output", "o.mp4"], tmp_path,
                             monkeypatch, capsys)
    assert code == 0, err
    assert "Resolution: 32x16: the image's aspect ratio within the --size 32*32 area" in out
    assert video(tmp_path / "o.mp4").shape == (1, 16, 32, 3)


# ------------------------------------------------------------------------------------------------ refusals in-process
def test_tiny_model_size_that_cannot_fit_is_refused_before_the_call(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["generate", "--model", "tiny", "--prompt", "a cat", "--size", "16384*16384", "--device",
                            "cpu", "--output", "o.mp4"], tmp_path, monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1 and "--size" in err and "GB of RAM" in err, err
    assert list(tmp_path.iterdir()) == []


def test_info_on_a_folder_without_its_vae_is_an_error(tmp_path, monkeypatch, capsys):
    import shutil

    folder = tmp_path / "Wan2.2-T2V-A14B"
    shutil.copytree(FIXTURES["t2v-A14B"], folder, ignore=shutil.ignore_patterns("golden*", "extra_goldens*"))
    (folder / "Wan2.1_VAE.pth").unlink()
    code, out, err = run_cli(["info", str(folder)], tmp_path, monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1 and "Missing Wan 2.1 VAE" in err and "Wan2.1_VAE.pth" in err, err


def test_pipelines_refuse_a_bad_shift_or_an_impossible_size_before_any_model_runs(tiny_pipe, forward_counter):
    from diffusers import UniPCMultistepScheduler

    forward_counter.attach(tiny_pipe.transformer, "transformer")
    kw = dict(prompt="a cat", num_frames=5, num_inference_steps=2, output_type="latent")
    with pytest.raises(ValueError, match=r"`height`=16384, `width`=16384, `num_frames`=5 .* GB for activations"):
        tiny_pipe(height=16384, width=16384, **kw)
    for shift in (0.0, -1.0, float("nan")):
        tiny_pipe.scheduler = UniPCMultistepScheduler.from_config(tiny_pipe.scheduler.config, flow_shift=shift)
        with pytest.raises(ValueError, match="`flow_shift` must be a finite number > 0"):
            tiny_pipe(height=32, width=32, **kw)
    assert forward_counter.calls == []


def test_memory_check_counts_parameters_like_diffusers():
    """`dit_parameter_counts` (torch-free, from a config) equals `WanTransformer3DModel` built on meta, for the
    fixtures' configs and the real A14B (16 and 36 input channels) and TI2V-5B transformers."""
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    from diffusers_wan22.core.model_specs import dit_parameter_counts

    configs = [dict(dim=5120, ffn_dim=13824, num_layers=40, heads=40, ch=(16, 16)),
               dict(dim=5120, ffn_dim=13824, num_layers=40, heads=40, ch=(36, 16)),
               dict(dim=3072, ffn_dim=14336, num_layers=30, heads=24, ch=(48, 48)),
               dict(dim=32, ffn_dim=64, num_layers=2, heads=2, ch=(16, 16))]
    for c in configs:
        with init_empty_weights():
            model = WanTransformer3DModel(num_attention_heads=c["heads"], attention_head_dim=c["dim"] // c["heads"],
                                          in_channels=c["ch"][0], out_channels=c["ch"][1], ffn_dim=c["ffn_dim"],
                                          num_layers=c["num_layers"], text_dim=4096, freq_dim=256)
        total, block = dit_parameter_counts(c["dim"], c["ffn_dim"], c["num_layers"], *c["ch"])
        assert (total, block) == (sum(p.numel() for p in model.parameters()),
                                  sum(p.numel() for p in model.blocks[0].parameters())), c


def test_a_pipeline_class_refuses_another_variants_folder_before_reading_it(tmp_path):
    """`Wan22Pipeline.from_official` on an I2V-A14B folder names the class that runs it, before any weight is read
    (a truncated shard would otherwise be the error)."""
    import shutil

    folder = tmp_path / "Wan2.2-I2V-A14B"
    shutil.copytree(FIXTURES["i2v-A14B"], folder, ignore=shutil.ignore_patterns("golden*", "extra_goldens*"))
    shard = next((folder / "high_noise_model").glob("*-00001-of-*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ValueError, match="holds a i2v-A14B model, which Wan22Pipeline does not run .* load it with "
                                         "Wan22ImageToVideoPipeline"):
        Wan22Pipeline.from_official(folder)


def test_ci_runs_the_readme_test_command():
    """README's first screen has exactly two commands (main job, test suite); `.ci/run` runs the second verbatim."""
    first_block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)[1]
    main_job, test_suite = [line.split("  #")[0].strip() for line in first_block.strip().splitlines()]
    assert main_job.endswith("wan22 demo") and test_suite.endswith("python -m pytest -q")
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == test_suite
