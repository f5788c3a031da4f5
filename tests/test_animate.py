"""Animate-14B vs the official goldens (tiny official-format checkpoint, float32, CPU): input preprocessing, CLIP
features, every DiT call (normal, blank face, relighting LoRA) with its intermediates, motion/face encodings, and
the three official `generate()` runs clip by clip (conditioning, every step, final latents, decoded video); loader
and input refusals.

Tolerance for every parity comparison: max|ours - official| <= 1e-4 * max|official| (`assert_close_rel`), the
decoded videos 2e-3.
"""

from __future__ import annotations

import functools
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler
from safetensors.torch import load_file, save_file

from conftest import OFFICIAL, assert_close_rel
from diffusers_wan22 import Wan22AnimatePipeline
from diffusers_wan22.core.animate import ANIMATE_CLIP_FILE, ANIMATE_PROMPT, RELIGHTING_LORA_FILE, source_folder_files
from diffusers_wan22.loaders.animate import (
    load_official_animate_components,
    load_official_animate_transformer,
    load_relighting_lora,
    read_relighting_lora,
)
from diffusers_wan22.pipelines.pipeline_wan22_animate import plan_clips, reference_image_features
from diffusers_wan22.utils.animate_inputs import check_clip_settings, load_animate_inputs, read_video, unit_range
from goldens import load_golden

FIXTURE = OFFICIAL / "animate_14b"
RUNS = ("run_animate_unipc", "run_replace_lora_unipc", "run_animate_cfg2_dpmpp")
VIDEO_REL = 2e-3


@pytest.fixture(scope="module")
def golden():
    return load_golden(FIXTURE)


@pytest.fixture(scope="module")
def lora_transformer():
    transformer = load_official_animate_transformer(FIXTURE, torch.float32)
    load_relighting_lora(transformer, FIXTURE / RELIGHTING_LORA_FILE)
    return transformer


def _inputs(mode: str):
    return load_animate_inputs(**source_folder_files(FIXTURE / "inputs" / mode, mode == "replace"), mode=mode)


# ------------------------------------------------------------------------------------------------ preprocessing
@pytest.mark.parametrize("mode", ["animate", "replace"])
def test_inputs_match_official_preprocessing(golden, mode):
    """Bit-exact: cv2 letterbox of src_ref.png, decoded frames, channel 0 of the mask, ping-pong padding, clips."""
    meta, g = golden
    inputs = _inputs(mode)
    np.testing.assert_array_equal(inputs.reference, g[f"inputs/{mode}/ref_padded"].numpy())
    np.testing.assert_array_equal(inputs.pose, g[f"inputs/{mode}/pose"].numpy())
    face = g[f"inputs/{mode}/face_lowres"].numpy()
    scale = inputs.face.shape[1] // face.shape[1]
    np.testing.assert_array_equal(inputs.face, face.repeat(scale, 1).repeat(scale, 2))
    if mode == "replace":
        np.testing.assert_array_equal(inputs.background, g["inputs/replace/bg"].numpy())
        np.testing.assert_array_equal(inputs.mask * 255, g["inputs/replace/mask"].numpy())
    run = meta["runs"]["run_replace_lora_unipc" if mode == "replace" else "run_animate_unipc"]
    plan = plan_clips(inputs.num_frames, run["generate_kwargs"]["clip_len"], run["generate_kwargs"]["refert_num"])
    assert plan.indices == run["padded_frame_indices"]
    assert [plan.frames(k) for k in range(plan.num_clips)] == [c["frame_indices"] for c in run["clips"]]


def test_clip_features_match_official(golden, official_pipe):
    _, g = golden
    reference = unit_range(_inputs("animate").reference)
    assert torch.equal(reference, g["clip/ref_pixels"])
    encoder = official_pipe.image_encoder
    seen = []
    handle = encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    try:
        with torch.no_grad():
            features = reference_image_features(encoder, reference)
    finally:
        handle.remove()
    assert_close_rel(seen[0], g["clip/visual_in"], what="CLIP input (bicubic 224 + normalisation)")
    assert_close_rel(features, g["clip/ref_out"], what="CLIP features (all blocks but the last)")


# ------------------------------------------------------------------------------------------------ DiT calls
def _dit_inputs(g, context: torch.Tensor, blank_face: bool = False) -> dict:
    x, y = g["expert/model/x"], g["expert/model/y"]
    face = g["inputs/animate/face_lowres"][g["expert/model/face_frame_indices"]].numpy()
    face = unit_range(face.repeat(8, 1).repeat(8, 2))[None]
    return dict(hidden_states=torch.cat([x, y])[None], timestep=g["expert/model/t"],
                encoder_hidden_states_image=g["clip/ref_out"], pose_hidden_states=g["expert/model/pose_latents"],
                face_pixel_values=face * 0 - 1 if blank_face else face, encoder_hidden_states=context,
                return_dict=False)


@pytest.fixture(scope="module")
def prompt_context(official_pipe):
    """The official prompt's umT5 context padded to 512 tokens (the DiT goldens' `context`)."""
    with torch.no_grad():
        return official_pipe.encode_prompts(ANIMATE_PROMPT, None, False, 1, None, None, 512, torch.device("cpu"))[0]


_DIT_CALLS = {"out": (False, False), "out_blank_face": (True, False), "out_lora": (False, True)}


@pytest.mark.parametrize("name", sorted(_DIT_CALLS))
def test_dit_call_matches_official(golden, official_pipe, lora_transformer, prompt_context, name):
    _, g = golden
    blank, lora = _DIT_CALLS[name]
    model = lora_transformer if lora else official_pipe.transformer
    with torch.no_grad():
        out = model(**_dit_inputs(g, prompt_context, blank))[0][0]
    assert_close_rel(out, g[f"expert/model/{name}"], what=f"DiT {name}")


# official forward-hook module -> ours (same tensors; ours has no `blocks.<i>` wrapper around the face adapter)
_INTERMEDIATES = {
    "patch_embedding": "patch_embedding", "pose_patch_embedding": "pose_patch_embedding",
    "face_encoder": "face_encoder", "time_embedding": "condition_embedder.time_embedder",
    "time_projection": "condition_embedder.time_proj", "text_embedding": "condition_embedder.text_embedder",
    "img_emb": "condition_embedder.image_embedder", "face_adapter.fuser_blocks.0": "face_adapter.0",
    **{f"blocks.{i}": f"blocks.{i}" for i in range(5)}, "head": "proj_out",
}


def test_dit_intermediates_match_official(golden, official_pipe, prompt_context):
    _, g = golden
    model = official_pipe.transformer
    modules = dict(model.named_modules())
    seen, handles = {}, []
    for official, ours in _INTERMEDIATES.items():
        # clone: the pose embedding is added in place to the patch embedding's output afterwards
        handles.append(modules[ours].register_forward_hook(
            lambda m, a, out, key=official: seen.setdefault(key, out.clone())))
    handles.append(model.motion_encoder.register_forward_hook(lambda m, a, out: seen.setdefault("motion", out)))
    try:
        with torch.no_grad():
            model(**_dit_inputs(g, prompt_context))
    finally:
        for h in handles:
            h.remove()
    for official in _INTERMEDIATES:
        expected = g[f"expert/model/intermediate/{official}"]
        actual = seen[official].reshape(expected.shape)
        if official == "patch_embedding":
            # Latent frame 0 only: the golden's frames 1.. hold (patch embedding - pose embedding), neither the value
            # before nor after the official in-place `+= pose` (a recording artefact of the fixture); the sum the
            # blocks see is checked through `blocks.0` onwards.
            actual, expected = actual[:, :, :1], expected[:, :, :1]
        assert_close_rel(actual, expected, what=f"DiT intermediate {official}")
    assert_close_rel(seen["motion"][None], g["expert/model/motion_vec"], what="motion vectors")


# ------------------------------------------------------------------------------------------------ official runs
class DiTRecorder:
    """Records every transformer call of a run: inputs, output, motion vectors and face tokens."""

    def __init__(self, transformer):
        self.calls: list[dict] = []
        self._handles = [
            transformer.register_forward_pre_hook(self._inputs, with_kwargs=True),
            transformer.register_forward_hook(lambda m, a, k, out: self.calls[-1].update(out=out[0].clone()),
                                              with_kwargs=True),
            transformer.motion_encoder.register_forward_hook(
                lambda m, a, out: self.calls[-1].setdefault("motion", []).append(out.clone())),
            transformer.face_encoder.register_forward_hook(lambda m, a, out: self.calls[-1].update(face=out.clone())),
        ]

    def _inputs(self, module, args, kwargs):
        self.calls.append({k: v.clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor)})

    def close(self):
        for h in self._handles:
            h.remove()


@pytest.fixture(scope="module")
def official_pipe():
    return Wan22AnimatePipeline.from_official(FIXTURE, torch_dtype=torch.float32)


def _pipe_for(official_pipe, lora_transformer, meta, run):
    """A pipeline with the run's transformer (relighting LoRA or not) and a fresh scheduler of the run's solver."""
    kw, info = meta["runs"][run]["generate_kwargs"], meta["runs"][run]
    transformer = lora_transformer if info["pipeline_kwargs"]["use_relighting_lora"] else official_pipe.transformer
    scheduler = official_pipe.scheduler
    scheduler = (DPMSolverMultistepScheduler if kw["sample_solver"] == "dpm++" else type(scheduler)).from_config(
        scheduler.config)
    return Wan22AnimatePipeline(**official_pipe.components | dict(transformer=transformer, scheduler=scheduler))


def _official_call(meta, g, run) -> dict:
    """Our arguments for an official `generate()` run: same inputs, settings and per-clip noise."""
    kw = meta["runs"][run]["generate_kwargs"]
    return dict(**source_folder_files(FIXTURE / kw["src_root_path"], kw["replace_flag"]),
                mode="replace" if kw["replace_flag"] else "animate", prompt=kw["input_prompt"],
                negative_prompt=kw["n_prompt"], segment_frame_length=kw["clip_len"],
                prev_segment_conditioning_frames=kw["refert_num"], num_inference_steps=kw["sampling_steps"],
                guidance_scale=kw["guide_scale"],
                latents=[g[f"{run}/noise_{k}"][None] for k in range(meta["runs"][run]["num_clips"])])


def _run(pipe, meta, g, run):
    """One official run through the pipeline; returns (output, DiT calls, latents after every step)."""
    recorder, steps = DiTRecorder(pipe.transformer), []
    pipe.set_progress_bar_config(disable=True)
    try:
        out = pipe(**_official_call(meta, g, run), output_type="pt",
                   callback_on_step_end=lambda p, i, t, kw: steps.append(kw["latents"][0].clone()) or {})
    finally:
        recorder.close()
    return out, recorder.calls, steps


def _check_clip_calls(g, run: str, clip: int, calls: list[dict], guided: bool) -> None:
    """Every DiT call of one clip against the official call (inputs, motion/face encodings, prediction)."""
    per_step = 2 if guided else 1
    for i in range(len(calls) // per_step):
        cond = calls[i * per_step]
        what = f"{run} clip {clip} step {i}"
        assert cond["timestep"].tolist() == g[f"{run}/clip{clip}/model_t"][i].tolist()
        assert_close_rel(cond["hidden_states"][0, :16], g[f"{run}/clip{clip}/latents_in"][i], what=f"{what} latents")
        assert_close_rel(cond["hidden_states"][0, 16:], g[f"{run}/clip{clip}/model_y"], what=f"{what} y")
        assert_close_rel(cond["pose_hidden_states"], g[f"{run}/clip{clip}/model_pose_latents"], what=f"{what} pose")
        assert_close_rel(cond["encoder_hidden_states_image"], g[f"{run}/model_clip_fea"], what=f"{what} clip_fea")
        assert_close_rel(torch.cat(cond["motion"])[None], g[f"{run}/clip{clip}/motion_vec"], what=f"{what} motion")
        assert_close_rel(cond["face"], g[f"{run}/clip{clip}/face_tokens"], what=f"{what} face tokens")
        assert_close_rel(cond["out"][0], g[f"{run}/clip{clip}/noise_pred_cond"][i], what=f"{what} cond")
        if guided:
            uncond = calls[i * per_step + 1]
            assert torch.all(uncond["face_pixel_values"] == -1)
            assert_close_rel(torch.cat(uncond["motion"])[None], g[f"{run}/motion_vec_blank_face"],
                             what=f"{what} blank-face motion")
            assert_close_rel(uncond["face"], g[f"{run}/face_tokens_blank_face"], what=f"{what} blank-face tokens")
            assert_close_rel(uncond["out"][0], g[f"{run}/clip{clip}/noise_pred_uncond"][i], what=f"{what} uncond")


@pytest.mark.parametrize("run", RUNS)
def test_official_run_clip_by_clip(golden, official_pipe, lora_transformer, run):
    """Every DiT call, every step, each clip's final latents and the decoded video of an official run."""
    meta, g = golden
    pipe = _pipe_for(official_pipe, lora_transformer, meta, run)
    out, calls, steps = _run(pipe, meta, g, run)
    info = meta["runs"][run]
    guided = info["generate_kwargs"]["guide_scale"] > 1
    num_steps, refert = info["generate_kwargs"]["sampling_steps"], info["generate_kwargs"]["refert_num"]
    per_clip = num_steps * (2 if guided else 1)
    assert out.num_clips == info["num_clips"] and len(calls) == per_clip * info["num_clips"]
    assert out.timesteps == info["clips"][0]["timesteps"]
    for k in range(info["num_clips"]):
        assert pipe.scheduler.timesteps.tolist() == g[f"{run}/clip{k}/scheduler_timesteps"].tolist()
        assert torch.equal(pipe.scheduler.sigmas.float(), g[f"{run}/clip{k}/scheduler_sigmas"])
        _check_clip_calls(g, run, k, calls[k * per_clip:(k + 1) * per_clip], guided)
        for i in range(num_steps):
            assert_close_rel(steps[k * num_steps + i], g[f"{run}/clip{k}/latents_out"][i],
                             what=f"{run} clip {k} latents after step {i}")
        assert_close_rel(steps[(k + 1) * num_steps - 1][:, 1:], g[f"{run}/vae_decode_in_{k}"],
                         what=f"{run} clip {k} final latents")
    # ours: [B, F, 3, H, W] in [0, 1]; official: [3, F, H, W] in [-1, 1]
    video = out.frames[0].permute(1, 0, 2, 3) * 2 - 1
    clip_len = info["generate_kwargs"]["clip_len"]
    assert_close_rel(video[:, clip_len - refert:clip_len], g[f"{run}/clip1/refer_t_pixel_values"], rel=VIDEO_REL,
                     what=f"{run} frames the second clip starts from")
    assert_close_rel(video, g[f"{run}/video"], rel=VIDEO_REL, what=f"{run} video")


def test_generator_draws_the_official_noise(golden, official_pipe):
    """One CPU generator seeded once, the clips continuing its stream: the official noise of every clip."""
    meta, g = golden
    inputs = _inputs("animate")
    plan = plan_clips(inputs.num_frames, 5, 1)
    shape = official_pipe.clip_latent_shape(plan, inputs.size)
    generator = torch.Generator("cpu").manual_seed(meta["seed"])
    for k in range(plan.num_clips):
        noise = official_pipe.clip_noise(k, None, shape, generator, torch.device("cpu"))
        assert torch.equal(noise[0], g[f"run_animate_unipc/noise_{k}"])


SHORT_FRAMES = 4  # padded to one clip of 5 frames


@functools.lru_cache(maxsize=1)
def _short_inputs() -> dict:
    """The first frames of the animation inputs, as frame lists (read once)."""
    files = source_folder_files(FIXTURE / "inputs/animate", False)
    return dict(image=files["image"], pose_video=list(read_video(files["pose_video"], "pose")[:SHORT_FRAMES]),
                face_video=list(read_video(files["face_video"], "face")[:SHORT_FRAMES]))


def _short_call(**overrides) -> dict:
    """One clip of 5 frames (4 input frames padded), one step: cheap end-to-end calls."""
    noise = torch.randn(1, 16, 3, 10, 8, generator=torch.Generator().manual_seed(3))
    return dict(**_short_inputs(), segment_frame_length=5, num_inference_steps=1, latents=[noise],
                output_type="latent") | overrides


@pytest.fixture(scope="module")
def short_reference(official_pipe):
    """The short call's final latents, without and with guidance (sequential branches)."""
    return {g: official_pipe(**_short_call(guidance_scale=g)).frames[0] for g in (1.0, 2.0)}


def test_save_and_reload_with_diffusers_give_identical_output(official_pipe, short_reference, tmp_path):
    official_pipe.save_pretrained(tmp_path / "animate")
    index = json.loads((tmp_path / "animate" / "model_index.json").read_text())
    assert index["_class_name"] == "Wan22AnimatePipeline"
    assert index["image_encoder"] == ["transformers", "CLIPVisionModel"]
    assert index["transformer"] == ["diffusers", "WanAnimateTransformer3DModel"]
    reloaded = DiffusionPipeline.from_pretrained(tmp_path / "animate")
    assert isinstance(reloaded, Wan22AnimatePipeline) and reloaded.scheduler.config.flow_shift == 5.0
    assert torch.equal(reloaded(**_short_call()).frames[0], short_reference[1.0])


@pytest.mark.parametrize("mode", ["expert_offload", "group_offload"])
def test_memory_modes_give_identical_output(short_reference, mode):
    """The offload chain text_encoder -> image_encoder -> transformer -> vae (CPU standing in for the device)."""
    pipe = Wan22AnimatePipeline.from_official(FIXTURE, dtype=torch.float32)  # diffusers' newer name for torch_dtype
    pipe.enable_memory_mode(mode, device="cpu", vae_tiling=False)
    assert torch.equal(pipe(**_short_call()).frames[0], short_reference[1.0])


def test_batched_cfg_matches_sequential_branches(official_pipe, short_reference):
    batched = official_pipe(**_short_call(guidance_scale=2.0, batched_cfg=True)).frames[0]
    assert_close_rel(batched, short_reference[2.0], rel=1e-5, what="batched CFG")


# ------------------------------------------------------------------------------------------------ refusals
def _frames(n: int, height: int, width: int) -> list[np.ndarray]:
    return [np.full((height, width, 3), 10 * i, dtype=np.uint8) for i in range(n)]


@pytest.mark.parametrize("kwargs, message", [
    (dict(face_video=_frames(8, 64, 64)), "face encoder takes 512x512"),
    (dict(face_video=_frames(7, 512, 512)), "`face_video` has 7 frames but `pose_video` has 8"),
    (dict(pose_video=_frames(8, 72, 64)), "multiples of 16"),
    (dict(pose_video=_frames(1, 80, 64), face_video=_frames(1, 512, 512)), "more than"),
    (dict(mode="replace"), "needs `background_video` and `mask_video`"),
    (dict(mode="replace", background_video=_frames(8, 80, 64), mask_video=_frames(6, 80, 64)),
     "`mask_video` has 6 frames"),
    (dict(mode="replace", background_video=_frames(8, 96, 64), mask_video=_frames(8, 80, 64)),
     "`background_video` is 64x96"),
    (dict(background_video=_frames(8, 80, 64)), "for mode='replace'"),
    (dict(mode="swap"), "`mode` must be"),
    (dict(image=FIXTURE / "missing.png"), "does not exist"),
    (dict(pose_video=42), "`pose_video` must be a video file path or a list of frames"),
])
def test_bad_inputs_are_refused(kwargs, message):
    base = dict(image=FIXTURE / "inputs/animate/src_ref.png", pose_video=_frames(8, 80, 64),
                face_video=_frames(8, 512, 512))
    with pytest.raises((ValueError, FileNotFoundError), match=message.replace("(", r"\(")):
        load_animate_inputs(**(base | kwargs))


@pytest.mark.parametrize("clip_len, refert_num, message", [
    (77, 2, "must be 1 or 5"), (9, 5, "fewer than the 5 conditioning frames"), (76, 1, "4k\\+1"),
])
def test_bad_clip_settings_are_refused(clip_len, refert_num, message):
    with pytest.raises(ValueError, match=message):
        check_clip_settings(clip_len, refert_num)
    check_clip_settings(77, 1)
    check_clip_settings(77, 5)


def test_missing_source_files_are_named(tmp_path):
    shutil.copytree(FIXTURE / "inputs/animate", tmp_path / "src")
    with pytest.raises(FileNotFoundError, match=r"lacks \['src_bg.mp4', 'src_mask.mp4'\]"):
        source_folder_files(tmp_path / "src", replace=True)
    (tmp_path / "src/src_face.mp4").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks \['src_face.mp4'\]"):
        source_folder_files(tmp_path / "src", replace=False)


PIPELINE_BAD = [
    (dict(face_video=_frames(8, 64, 64)), ValueError, "512x512"),
    (dict(face_video=_frames(6, 512, 512)), ValueError, "`face_video` has 6 frames"),
    (dict(prev_segment_conditioning_frames=2), ValueError, "1 or 5"),
    (dict(segment_frame_length=9, prev_segment_conditioning_frames=5), ValueError, "fewer than the 5"),
    (dict(segment_frame_length=76), ValueError, "4k\\+1"),
    (dict(mode="replace"), ValueError, "background_video"),
    (dict(latents=[torch.zeros(1, 16, 4, 10, 8)]), ValueError, r"latents\[0\]"),
    (dict(latents=[torch.zeros(1, 16, 3, 10, 8)] * 2), ValueError, "needs 1 clips"),
    (dict(latents=torch.zeros(1, 16, 3, 10, 8)), ValueError, "one initial-noise tensor per clip"),
    (dict(prompt=["a", "b"]), ValueError, "one string"),
    (dict(guidance_scale=float("nan")), ValueError, "guidance_scale"),
    (dict(num_inference_steps=0), ValueError, "num_inference_steps"),
    (dict(output_type="gif"), ValueError, "output_type"),
    (dict(image="/no/such/ref.png"), FileNotFoundError, "does not exist"),
]


@pytest.mark.parametrize("override, error, match", PIPELINE_BAD, ids=[str(i) for i in range(len(PIPELINE_BAD))])
def test_bad_pipeline_input_refused_before_any_model_runs(official_pipe, forward_counter, override, error, match):
    for name in ("transformer", "image_encoder", "text_encoder"):
        forward_counter.attach(getattr(official_pipe, name), name)
    forward_counter.attach(official_pipe.vae.encoder, "vae encoder")  # `vae.encode` does not call `vae.forward`
    with pytest.raises(error, match=match):
        official_pipe(**_short_call(**override))
    assert forward_counter.calls == []


def _folder_copy(tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(FIXTURE, folder, ignore=shutil.ignore_patterns("golden*", "inputs"))
    return folder


def test_missing_clip_file_refused_before_any_weight_is_read(tmp_path, monkeypatch):
    folder = _folder_copy(tmp_path)
    (folder / ANIMATE_CLIP_FILE).unlink()
    monkeypatch.setattr("diffusers_wan22.loaders.animate.load_official_animate_transformer",
                        lambda *a, **k: pytest.fail("the DiT was read before the folder check"))
    with pytest.raises(FileNotFoundError, match="CLIP image encoder"):
        load_official_animate_components(folder)


def test_relighting_lora_prefixes_and_refusals(tmp_path):
    official = torch.load(FIXTURE / RELIGHTING_LORA_FILE, weights_only=True)["state_dict"]
    transformer = load_official_animate_transformer(FIXTURE, torch.float32)
    # Another release's spelling (peft wrapper prefix, bare dict) lands identically.
    torch.save({f"base_model.model.{k}": v for k, v in official.items()}, tmp_path / "prefixed.ckpt")
    assert read_relighting_lora(tmp_path / "prefixed.ckpt").keys() == official.keys()
    # A tensor that would land nowhere (the face adapter is not adapted) is refused, naming it.
    torch.save({"state_dict": official | {"face_adapter.fuser_blocks.0.linear2.lora_A.weight": torch.zeros(1)}},
               tmp_path / "face.ckpt")
    with pytest.raises(ValueError, match="face_adapter.fuser_blocks.0.linear2.lora_A.weight"):
        load_relighting_lora(transformer, tmp_path / "face.ckpt")
    wrong = dict(official)
    wrong["blocks.0.ffn.0.lora_A.weight"] = torch.zeros(128, 7)
    torch.save({"state_dict": wrong}, tmp_path / "shape.ckpt")
    with pytest.raises(ValueError, match=r"blocks\.0\.ffn\.net\.0\.proj\.lora_A\.weight.*needs"):
        load_relighting_lora(transformer, tmp_path / "shape.ckpt")
    torch.save({"state_dict": official, "code": shutil.copy}, tmp_path / "pickle.ckpt")  # pickled code
    with pytest.raises(ValueError, match="refused"):
        read_relighting_lora(tmp_path / "pickle.ckpt")
    assert not getattr(transformer, "_hf_peft_config_loaded", False)  # the refusals added no partial adapter


def test_dit_of_another_face_size_loads(tmp_path):
    """The face-crop size is read from the motion encoder (here 256: one residual block fewer than 512)."""
    folder = _folder_copy(tmp_path)
    state = {}
    for shard in sorted(folder.glob("diffusion_pytorch_model-*.safetensors")):
        state.update(load_file(shard))
        shard.unlink()
    (folder / "diffusion_pytorch_model.safetensors.index.json").unlink()
    prefix = "motion_encoder.enc.net_app.convs."
    out = {k: v for k, v in state.items() if not k.startswith(prefix)}
    for key, value in state.items():
        if key.startswith(prefix) and not key.startswith(prefix + "1.") and not key.startswith(prefix + "0."):
            index, rest = key[len(prefix):].split(".", 1)
            out[f"{prefix}{int(index) - 1}.{rest}"] = value
    width = state[prefix + "2.conv1.0.weight"].shape[1]  # the new first block's input width
    out[prefix + "0.0.weight"] = torch.randn(width, 3, 1, 1)
    out[prefix + "0.1.bias"] = torch.zeros(1, width, 1, 1)
    save_file(out, folder / "diffusion_pytorch_model.safetensors")
    model = load_official_animate_transformer(folder, torch.float32)
    assert model.config.motion_encoder_size == 256
    with torch.no_grad():
        motion = model.motion_encoder(torch.zeros(2, 3, 256, 256))
    assert motion.shape == (2, model.config.motion_encoder_dim)


# ------------------------------------------------------------------------------------------------ command line
def test_cli_runs_the_pipeline_with_the_official_flags(official_pipe, lora_transformer, tmp_path, monkeypatch,
                                                        capsys):
    """`wan22 generate` maps the official flags (--replace_flag --use_relighting_lora --refert_num, --frame_num as the
    clip length, --sample_steps, --base_seed drawing the noise) onto the pipeline call: the same video, as an mp4."""
    from diffusers_wan22.cli import main
    from diffusers_wan22.commands import generate

    written = []
    real_save = generate.save_video
    monkeypatch.setattr(generate, "save_video", lambda frames, *a, **k: written.append(frames) or real_save(
        frames, *a, **k))
    src, out = FIXTURE / "inputs/replace", tmp_path / "replace.mp4"
    code = main(["generate", "--model", str(FIXTURE), "--src_root_path", str(src), "--replace_flag",
                 "--use_relighting_lora", "--refert_num", "1", "--frame_num", "9", "--sample_steps", "1",
                 "--base_seed", "7", "--dtype", "fp32", "--device", "cpu", "--output", str(out)])
    assert code == 0 and out.is_file() and "1 clips, 8 frames" in capsys.readouterr().out
    pipe = Wan22AnimatePipeline(**official_pipe.components | dict(transformer=lora_transformer))
    expected = pipe(**source_folder_files(src, True), mode="replace", segment_frame_length=9,
                    prev_segment_conditioning_frames=1, num_inference_steps=1,
                    generator=torch.Generator("cpu").manual_seed(7)).frames[0]
    np.testing.assert_array_equal(written[0], expected)


def test_cli_info_names_the_animate_folder(capsys):
    from diffusers_wan22.cli import main

    assert main(["info", str(FIXTURE)]) == 0
    out = capsys.readouterr().out
    assert "official Wan 2.2 animate-14B checkpoint" in out and "image_encoder (CLIP .pth)" in out


@pytest.mark.parametrize("args, message", [
    ([], "needs --src_root_path"),
    (["--src_root_path", "{src}", "--refert_num", "2"], "--refert_num must be 1 or 5"),
    (["--src_root_path", "{src}", "--replace_flag"], "lacks ['src_bg.mp4', 'src_mask.mp4']"),
    (["--src_root_path", "{src}", "--image", "{src}/src_ref.png"], "--image is not used by animate-14B"),
    (["--src_root_path", "{src}", "--size", "1280*720"], "--size is not used by animate-14B"),
])
def test_cli_animate_usage_errors(capsys, args, message):
    from diffusers_wan22.cli import main

    src = str(FIXTURE / "inputs/animate")
    code = main(["generate", "--model", str(FIXTURE), *[a.format(src=src) for a in args]])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("args, message", [
    (["--model", "tiny", "--task", "animate-14B"], "no tiny demo model"),
    (["--model", "tiny", "--prompt", "x", "--replace_flag"], "--replace_flag is for animate-14B only"),
    (["--model", "tiny"], "--prompt TEXT (or --prompts FILE) is required"),
])
def test_cli_animate_flags_elsewhere_are_refused(capsys, args, message):
    from diffusers_wan22.cli import main

    code = main(["generate", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err


# ------------------------------------------------------------------------------------------------ conversion
@pytest.mark.parametrize("layout, pipeline_class", [("wan22", "Wan22AnimatePipeline"),
                                                    ("diffusers", "WanAnimatePipeline")])
def test_convert_both_layouts(official_pipe, tmp_path, layout, pipeline_class):
    """`wan22 convert` streams the split / squeezed tensors; DiffusionPipeline.from_pretrained loads ours or stock
    diffusers' pipeline with the very tensors `from_official` builds."""
    from diffusers_wan22 import convert_checkpoint

    report = convert_checkpoint(FIXTURE, tmp_path / layout, layout=layout, progress=False, verify=layout == "wan22")
    assert report.variant == "animate-14B" and report.verified == (layout == "wan22")
    pipe = DiffusionPipeline.from_pretrained(tmp_path / layout)
    assert type(pipe).__name__ == pipeline_class
    for name in ("transformer", "image_encoder"):
        ours, theirs = getattr(pipe, name).state_dict(), getattr(official_pipe, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
    assert "Wan2.2-Animate-14B" in (tmp_path / layout / "README.md").read_text()


# ------------------------------------------------------------------------------------------------ memory planner
def test_planner_knows_animate(official_pipe, capsys):
    """Built-in spec of the real model (the reference latent frame rides along each clip's 20 latent frames, the CLIP
    tower counts) and a spec counted from a loaded pipeline; `wan22 plan --model animate-14B`."""
    from diffusers_wan22 import SPECS, estimate_memory, spec_from_pipeline
    from diffusers_wan22.cli import main

    spec = SPECS["animate-14b"]
    with_clip = estimate_memory(spec, 720, 1280, 77, mode="none")
    assert with_clip.tokens == (20 + 1) * (720 // 16) * (1280 // 16)
    without = estimate_memory(replace(spec, image_encoder_params=0), 720, 1280, 77, mode="none")
    assert with_clip.host_gb - without.host_gb == pytest.approx(spec.image_encoder_params * 2 / 1e9)
    counted = spec_from_pipeline(official_pipe)
    assert counted.expert_params == sum(p.numel() for p in official_pipe.transformer.parameters())
    assert counted.image_encoder_params == sum(p.numel() for p in official_pipe.image_encoder.parameters())
    assert counted.context_token_frames == 1.0
    assert main(["plan", "--model", "animate-14B", "--frame_num", "77"]) == 0
    assert "group_offload" in capsys.readouterr().out
