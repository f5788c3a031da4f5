"""S2V-14B: audio features, transformer forward and full multi-clip sampling runs vs the official goldens; the
speech-to-video pipeline end to end on tiny components (mp4 with an audio stream); bad inputs; conversion.

Tolerance for every parity comparison: max|ours - official| <= 1e-4 * max|official| (`assert_close_rel`).
"""

from __future__ import annotations

import json
import subprocess

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler
from PIL import Image

from conftest import OFFICIAL, assert_close_rel
from diffusers_wan22 import (
    Wan22SpeechToVideoPipeline,
    build_tiny_components,
    get_variant,
    load_audio,
    load_official_transformer,
    save_video,
)
from diffusers_wan22.utils.audio import bucket_features, resample_features, wav2vec2_features
from goldens import load_golden

FIXTURE = OFFICIAL / "s2v_14b"
PROMPT = "A woman is singing."


@pytest.fixture(scope="module")
def golden():
    return load_golden(FIXTURE)


@pytest.fixture(scope="module")
def official_pipe():
    return Wan22SpeechToVideoPipeline.from_official(FIXTURE, torch_dtype=torch.float32)


@pytest.fixture(scope="module")
def tiny_s2v():
    return Wan22SpeechToVideoPipeline(**build_tiny_components("s2v-14B"))


def _tone(seconds: float, sr: int = 16000, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _official_kwargs(meta, run: str) -> dict:
    kw = meta["runs"][run]["generate_kwargs"]
    return dict(
        image=Image.open(FIXTURE / kw["ref_image_path"]), audio=str(FIXTURE / kw["audio_path"]),
        prompt=kw["input_prompt"], negative_prompt=kw["n_prompt"] or None, max_area=kw["max_area"],
        infer_frames=kw["infer_frames"], num_inference_steps=kw["sampling_steps"],
        guidance_scale=kw["guide_scale"], num_clips=kw["num_repeat"],
    )


# ------------------------------------------------------------------------------------------ components
def test_audio_features_match_official(official_pipe, golden):
    """All 25 wav2vec2 layers at 30 Hz, including the 25th (final encoder LayerNorm, transformers 4 semantics)."""
    _, g = golden
    samples = load_audio(FIXTURE / "inputs" / "audio.wav")
    features = resample_features(wav2vec2_features(official_pipe.audio_encoder, official_pipe.audio_processor, samples))
    for layer in range(features.shape[0]):
        assert_close_rel(features[layer], g["audio/feat_all_layers"][layer], what=f"audio layer {layer}")
    bucket, clips = bucket_features(features, fps=16, frames_per_clip=8)
    assert clips == 2
    assert_close_rel(bucket[0].permute(2, 0, 1), g["audio/embed_bucket"], what="audio bucket")


def test_audio_array_input_equals_file(official_pipe):
    """(samples, rate) at another rate is resampled to 16 kHz; at 16 kHz it equals reading the file."""
    samples = load_audio(FIXTURE / "inputs" / "audio.wav")
    assert np.array_equal(load_audio((samples, 16000)), samples)
    resampled = load_audio((samples[::2].copy(), 8000))
    assert abs(len(resampled) - len(samples)) <= 16


@pytest.mark.parametrize("drop", [True, False])
def test_transformer_forward_matches_official(golden, drop):
    _, g = golden
    model = load_official_transformer(FIXTURE)
    ctx = g["t5/prompt/context"]
    ctx = torch.cat([ctx, ctx.new_zeros(512 - ctx.shape[0], ctx.shape[1])])[None]
    with torch.no_grad():
        out = model(g["expert/model/x"][None], g["expert/model/t"], ctx, g["expert/model/ref_latents"],
                    g["expert/model/motion_latents"], g["expert/model/audio_input"],
                    pose_latents=g["expert/model/cond_states"], drop_motion_frames=drop).sample[0]
    assert_close_rel(out, g[f"expert/model/out_drop_motion_{str(drop).lower()}"], what=f"S2V forward drop={drop}")


# ------------------------------------------------------------------------------------------ full runs
def _as_official_video(frames: torch.Tensor) -> torch.Tensor:
    """Our ``output_type="pt"`` video (diffusers' layout: ``[F, 3, H, W]`` in [0, 1]) in the official layout and
    range (``[3, F, H, W]`` in [-1, 1]); compared with the official video clamped to that range."""
    return frames.permute(1, 0, 2, 3) * 2 - 1


def test_two_clip_unipc_run_matches_official(official_pipe, golden):
    """2 chained clips (motion buffer re-encoded between them), UniPC, CFG 4.5 with silent-audio uncond."""
    meta, g = golden
    pipe = Wan22SpeechToVideoPipeline(**official_pipe.components)
    kwargs = _official_kwargs(meta, "run_unipc")
    noise = [g["run_unipc/noise_0"][None], g["run_unipc/noise_1"][None]]
    per_step = {}
    record = (lambda p, i, t, kw: per_step.setdefault(p.current_clip, []).append(kw["latents"][0].clone()) or {})
    out = pipe(**kwargs, latents=noise, output_type="pt", callback_on_step_end=record)
    assert out.num_clips == 2 and out.timesteps == g["run_unipc/clip0/scheduler_timesteps"].tolist()
    for clip in range(2):
        for step, latents in enumerate(per_step[clip]):
            assert_close_rel(latents, g[f"run_unipc/clip{clip}/latents_out"][step],
                             what=f"clip {clip} latents after step {step}")
    assert_close_rel(_as_official_video(out.frames[0]), g["run_unipc/video"].clamp(-1, 1), what="2-clip video")


def test_dpmpp_run_matches_official(official_pipe, golden):
    meta, g = golden
    pipe = Wan22SpeechToVideoPipeline(**official_pipe.components)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(official_pipe.scheduler.config)
    out = pipe(**_official_kwargs(meta, "run_dpmpp"), latents=[g["run_dpmpp/noise"][None]], output_type="pt")
    assert out.timesteps == g["run_dpmpp/scheduler_timesteps"].tolist()
    assert_close_rel(_as_official_video(out.frames[0]), g["run_dpmpp/video"].clamp(-1, 1), what="dpm++ video")


def test_official_defaults():
    d = get_variant("s2v-14B")
    fixture = json.loads((FIXTURE / "fixture.json").read_text())["official_config_mirrored"]
    assert (d.sample_steps, d.sample_shift, d.guidance_scale, d.fps) == (
        fixture["sample_steps"], fixture["sample_shift"], fixture["sample_guide_scale"], fixture["sample_fps"])
    assert d.negative_prompt == fixture["sample_neg_prompt"] and d.num_frames == 80


# ------------------------------------------------------------------------------------------ end to end
def _audio_seconds_in(path) -> float:
    raw = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-map", "0:a:0",
                          "-f", "f32le", "-ac", "1", "-ar", "16000", "-"], capture_output=True, check=True).stdout
    return len(raw) / 4 / 16000


def test_end_to_end_mp4_has_audio_matching_video(tiny_s2v, tmp_path):
    """Tiny S2V, a 1.5 s tone, 2 chained clips of 8 frames: 5 + 8 frames at 16 fps; the mp4's audio stream
    lasts as long as the video (AAC adds at most one 1024-sample frame of padding)."""
    import imageio.v3 as iio

    out = tiny_s2v(np.full((96, 64, 3), 120, np.uint8), (_tone(1.5), 16000), prompt="Two cats boxing on a stage.",
                   height=64, width=64, infer_frames=8, num_clips=2, num_inference_steps=2,
                   generator=torch.Generator().manual_seed(0))
    assert out.frames.shape == (1, 13, 64, 64, 3) and out.num_clips == 2
    path = save_video(out.frames[0], tmp_path / "talk.mp4", out.fps, audio=out.audio)
    frames = np.stack(list(iio.imiter(path)))
    assert frames.shape[0] == 13
    video_seconds = 13 / 16
    assert abs(_audio_seconds_in(path) - video_seconds) <= 1024 / 16000 + 1e-3
    assert not list(tmp_path.glob(".talk*"))  # temporaries are gone


def test_clip_count_follows_audio_and_seed_is_deterministic(tiny_s2v):
    kw = dict(prompt="A dog running fast along the beach at sunset.", height=64, width=64, infer_frames=8,
              num_inference_steps=1, output_type="latent", guidance_scale=1.0)
    image = np.zeros((64, 64, 3), np.uint8)
    # 1.0 s of audio: 49 wav2vec2 frames -> 29 at 30 Hz; a clip of 8 frames at 16 fps spans 15: 2 clips.
    a = tiny_s2v(image, (_tone(1.0), 16000), generator=torch.Generator().manual_seed(3), **kw)
    b = tiny_s2v(image, (_tone(1.0), 16000), generator=torch.Generator().manual_seed(3), num_clips=1, **kw)
    c = tiny_s2v(image, (_tone(1.0), 16000), generator=torch.Generator().manual_seed(4), num_clips=1, **kw)
    assert a.num_clips == 2 and len(a.frames) == 2 and b.num_clips == 1
    assert torch.equal(a.frames[0], b.frames[0])  # same seed, same first clip
    assert not torch.equal(a.frames[0], c.frames[0])


def test_audio_changes_the_video(tiny_s2v):
    kw = dict(prompt="Two cats boxing on a stage.", height=64, width=64, infer_frames=8, num_clips=1,
              num_inference_steps=1, output_type="latent", guidance_scale=1.0)
    image = np.zeros((64, 64, 3), np.uint8)
    noise = [torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(0))]
    a = tiny_s2v(image, (_tone(0.6, freq=220), 16000), latents=noise, **kw).frames[0]
    b = tiny_s2v(image, (_tone(0.6, freq=880), 16000), latents=noise, **kw).frames[0]
    assert (a - b).abs().max() > 1e-4


def test_pose_video_conditions_the_clip(tiny_s2v, tmp_path):
    from diffusers.utils import export_to_video

    pose = [np.full((64, 64, 3), v, np.uint8) for v in np.linspace(0, 255, 12).astype(np.uint8)]
    path = tmp_path / "pose.mp4"
    export_to_video([p / 255.0 for p in pose], str(path), fps=16)
    kw = dict(prompt="Two cats boxing on a stage.", height=64, width=64, infer_frames=8, num_clips=1,
              num_inference_steps=1, output_type="latent", guidance_scale=1.0)
    image = np.zeros((64, 64, 3), np.uint8)
    noise = [torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(0))]
    a = tiny_s2v(image, (_tone(0.6), 16000), latents=noise, **kw).frames[0]
    b = tiny_s2v(image, (_tone(0.6), 16000), latents=noise, pose_video=str(path), **kw).frames[0]
    assert (a - b).abs().max() > 1e-4


def test_save_and_reload_with_diffusers(tiny_s2v, tmp_path):
    tiny_s2v.save_pretrained(tmp_path / "s2v")
    index = json.loads((tmp_path / "s2v" / "model_index.json").read_text())
    assert index["_class_name"] == "Wan22SpeechToVideoPipeline"
    assert index["transformer"] == ["diffusers_wan22", "WanS2VTransformer3DModel"]
    reloaded = DiffusionPipeline.from_pretrained(tmp_path / "s2v")
    assert isinstance(reloaded, Wan22SpeechToVideoPipeline)
    half = DiffusionPipeline.from_pretrained(tmp_path / "s2v", torch_dtype=torch.bfloat16)
    assert half.audio_encoder.dtype == torch.bfloat16
    half(np.zeros((64, 64, 3), np.uint8), (_tone(0.3), 16000), prompt="a cat", height=64, width=64, infer_frames=8,
         num_inference_steps=1, output_type="latent")
    assert half.audio_encoder.dtype == torch.float32 and half.transformer.dtype == torch.bfloat16  # official rule
    kw = dict(prompt="Two cats boxing on a stage.", height=64, width=64, infer_frames=8, num_clips=1,
              num_inference_steps=2, output_type="latent",
              latents=[torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(1))])
    image, audio = np.zeros((64, 64, 3), np.uint8), (_tone(0.6), 16000)
    assert torch.equal(tiny_s2v(image, audio, **kw).frames[0], reloaded(image, audio, **kw).frames[0])


def test_convert_official_s2v_and_reload(official_pipe, tmp_path):
    from diffusers_wan22 import convert_checkpoint

    report = convert_checkpoint(FIXTURE, tmp_path / "s2v", progress=False, verify=True)
    assert report.verified and report.variant == "s2v-14B"
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "s2v")
    for name in ("transformer", "audio_encoder"):
        ours, theirs = getattr(pipe, name).state_dict(), getattr(official_pipe, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k].float(), theirs[k].float()) for k in ours), name
    assert "Wan2.2-S2V-14B" in (tmp_path / "s2v" / "README.md").read_text()


# ------------------------------------------------------------------------------------------ bad input
BAD = [
    (dict(infer_frames=6), ValueError, "infer_frames"),
    (dict(infer_frames=0), ValueError, "infer_frames"),
    (dict(height=60, width=64), ValueError, "height"),
    (dict(width=None), ValueError, "both"),
    (dict(num_clips=0), ValueError, "num_clips"),
    (dict(num_inference_steps=0), ValueError, "num_inference_steps"),
    (dict(guidance_scale=-1.0), ValueError, "guidance_scale"),
    (dict(prompt=["a", "b"]), ValueError, "one string"),
    (dict(prompt=None), ValueError, "prompt"),
    (dict(max_area=100), ValueError, "max_area"),
    (dict(output_type="gif"), ValueError, "output_type"),
    (dict(audio="/no/such/file.wav"), FileNotFoundError, "does not exist"),
    (dict(audio=(np.zeros(0, np.float32), 16000)), ValueError, "empty"),
    (dict(audio=np.zeros(100, np.float32)), ValueError, "sampling rate"),
    (dict(audio=(np.full(1000, np.nan, np.float32), 16000)), ValueError, "NaN"),
    (dict(audio=(np.zeros((2, 2, 2), np.float32), 16000)), ValueError, "shape"),
    (dict(image="not an image"), ValueError, "image"),
    (dict(pose_video="/no/such/pose.mp4"), FileNotFoundError, "pose_video"),
    (dict(latents=[torch.zeros(1, 16, 3, 8, 8)]), ValueError, "latents"),
    (dict(latents="noise"), ValueError, "latents"),
]


@pytest.mark.parametrize("override, error, match", BAD, ids=[m + str(i) for i, (_, _, m) in enumerate(BAD)])
def test_bad_input_is_refused_before_any_forward(tiny_s2v, forward_counter, override, error, match):
    kwargs = dict(image=np.zeros((64, 64, 3), np.uint8), audio=(_tone(0.5), 16000), prompt="Two cats.",
                  height=64, width=64, infer_frames=8, num_clips=1, num_inference_steps=1)
    kwargs.update(override)
    forward_counter.attach(tiny_s2v.transformer, "transformer")
    with pytest.raises(error, match=match):
        tiny_s2v(**kwargs)
    assert forward_counter.calls == []


@pytest.mark.parametrize("mode", ["expert_offload", "group_offload"])
def test_memory_modes_give_identical_latents(mode):
    """The offload chain text_encoder -> audio_encoder -> transformer -> vae (CPU standing in for the device)."""
    kw = dict(prompt="Two cats boxing on a stage.", height=64, width=64, infer_frames=8, num_clips=1,
              num_inference_steps=2, output_type="latent",
              latents=[torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(2))])
    image, audio = np.zeros((64, 64, 3), np.uint8), (_tone(0.4), 16000)
    reference = Wan22SpeechToVideoPipeline(**build_tiny_components("s2v-14B"))(image, audio, **kw).frames[0]
    pipe = Wan22SpeechToVideoPipeline(**build_tiny_components("s2v-14B"))
    pipe.enable_memory_mode(mode, device="cpu")
    assert torch.equal(pipe(image, audio, **kw).frames[0], reference)


def test_bf16_official_load_keeps_wav2vec2_in_float32_and_tracks_the_fp32_run(golden):
    """bf16 weights (as on a GPU): wav2vec2 stays float32 like the official code; the clip's latents stay within 5 %
    of the float32 official run (measured 1.8 %; with wav2vec2 in bf16 it was 18 %)."""
    meta, g = golden
    pipe = Wan22SpeechToVideoPipeline.from_official(FIXTURE, torch_dtype=torch.bfloat16)
    assert pipe.transformer.dtype == torch.bfloat16 and pipe.audio_encoder.dtype == torch.float32
    kwargs = dict(_official_kwargs(meta, "run_unipc"), num_clips=1)
    out = pipe(**kwargs, latents=[g["run_unipc/noise_0"]], output_type="latent")
    assert_close_rel(out.frames[0][0], g["run_unipc/clip0/latents_out"][-1], rel=0.05, what="bf16 clip 0 latents")


def test_saved_video_has_ordinary_file_permissions(tmp_path):
    """Written through a temporary file (atomic), yet readable like any file the user creates (umask applied)."""
    import os

    path = save_video(np.zeros((3, 16, 16, 3), np.float32), tmp_path / "v.mp4", fps=16)
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_batched_cfg_matches_the_sequential_branches(official_pipe, golden):
    """Cond + uncond (negative prompt, silent audio) as one batch of 2, on the official 2-clip run."""
    meta, g = golden
    kwargs = dict(_official_kwargs(meta, "run_unipc"), output_type="latent")
    noise = [g["run_unipc/noise_0"][None], g["run_unipc/noise_1"][None]]
    pipe = Wan22SpeechToVideoPipeline(**official_pipe.components)
    sequential = pipe(**kwargs, latents=noise).frames
    batched = pipe(**kwargs, latents=noise, batched_cfg=True).frames
    for clip in range(2):  # not a parity row (both sides are ours): max|Δ| <= 1e-5 * max|sequential|
        assert (batched[clip] - sequential[clip]).abs().max() <= 1e-5 * sequential[clip].abs().max(), clip


def test_wan_lora_loads_into_the_s2v_transformer_and_caches_are_refused(tmp_path):
    """A LoRA in the official key naming (`diffusion_model.blocks.N.self_attn.q...`) goes through diffusers' Wan
    LoRA loader into the S2V blocks (strength 0 gives back the base output); block caches are refused clearly."""
    from diffusers import FirstBlockCacheConfig
    from safetensors.torch import save_file

    pipe = Wan22SpeechToVideoPipeline(**build_tiny_components("s2v-14B"))
    kw = dict(prompt="Two cats.", height=64, width=64, infer_frames=8, num_clips=1, num_inference_steps=2,
              output_type="latent", latents=[torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(0))])
    image, audio = np.zeros((64, 64, 3), np.uint8), (_tone(0.4), 16000)
    base = pipe(image, audio, **kw).frames[0]
    g = torch.Generator().manual_seed(1)
    lora = {}
    for n in range(2):
        for module, d_out in (("self_attn.q", 24), ("cross_attn.k", 24), ("ffn.0", 32)):
            lora[f"diffusion_model.blocks.{n}.{module}.lora_A.weight"] = torch.randn(4, 24, generator=g) * 0.1
            lora[f"diffusion_model.blocks.{n}.{module}.lora_B.weight"] = torch.randn(d_out, 4, generator=g) * 0.1
    save_file(lora, tmp_path / "lora.safetensors")
    pipe.load_lora_weights(str(tmp_path / "lora.safetensors"), adapter_name="style")
    assert (pipe(image, audio, **kw).frames[0] - base).abs().max() > 1e-3
    pipe.set_adapters("style", 0.0)
    assert torch.allclose(pipe(image, audio, **kw).frames[0], base, atol=1e-6)
    with pytest.raises(NotImplementedError, match="injects audio between"):
        pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.05))
