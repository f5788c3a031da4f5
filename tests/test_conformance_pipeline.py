"""diffusers conformance of our pipelines: what diffusers' own pipeline tester expects of any pipeline, checked on
Wan22Pipeline (T2V-A14B), Wan22ImageToVideoPipeline (I2V-A14B, and TI2V-5B image mode) and
Wan22SpeechToVideoPipeline (S2V-14B), on tiny random components.

Covered: save / reload (pickled, ``variant``, sharded), a refused missing variant, dtype moves and ``torch_dtype``
loading, ``components``, ``.to(device)``, model offload (twice, hooks re-applied), the callback contract (exactly
the requested tensors, returned tensors used, ``interrupt``), ``encode_prompt`` in isolation,
``num_videos_per_prompt`` and batched prompts, dict / tuple outputs, attention slicing and backends, and a MoE saved
with one expert. "Same output" means equal up to float32 rounding of an identical computation (``SAME``).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from diffusers.models.attention_dispatch import attention_backend
from PIL import Image

from diffusers_wan22 import (
    Wan22ImageToVideoPipeline,
    Wan22Pipeline,
    Wan22SpeechToVideoPipeline,
    WanMoETransformer3DModel,
    build_tiny_components,
)

SAME = 1e-5  # relative: max|a - b| <= SAME * max|b| (float32 rounding; CPU kernels may sum in another order)
PROMPT = "Two cats boxing on a stage."


def _tone(seconds: float = 0.4, sr: int = 16000) -> tuple[np.ndarray, int]:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32), sr


@dataclass
class Case:
    """One pipeline under test: its class, tiny components and a small call (2 steps)."""

    name: str
    pipeline_class: type
    variant: str
    call: dict
    text_embeds: bool = True  # takes prompt_embeds / num_videos_per_prompt
    steps: int = 2
    extra: Callable[[], dict] = field(default=dict)

    def pipe(self, **overrides):
        components = {**build_tiny_components(self.variant, seed=0), **overrides}
        return self.pipeline_class(**components)

    def inputs(self, **overrides) -> dict:
        kw = dict(prompt=PROMPT, negative_prompt="blurry", num_inference_steps=self.steps, guidance_scale=4.0,
                  generator=torch.Generator().manual_seed(0), output_type="latent", **self.call, **self.extra())
        kw.update(overrides)
        return kw


CASES = [
    Case("t2v-A14B", Wan22Pipeline, "t2v-A14B", dict(height=16, width=16, num_frames=5, expert_steps=(1, 1),
                                                     max_sequence_length=16)),
    Case("i2v-A14B", Wan22ImageToVideoPipeline, "i2v-A14B",
         dict(height=16, width=16, num_frames=5, expert_steps=(1, 1), max_sequence_length=16),
         extra=lambda: {"image": Image.new("RGB", (16, 16), (90, 140, 200))}),
    Case("ti2v-5B", Wan22ImageToVideoPipeline, "ti2v-5B",
         dict(height=32, width=32, num_frames=5, max_sequence_length=16),
         extra=lambda: {"image": Image.new("RGB", (32, 32), (200, 90, 40))}),
    Case("s2v-14B", Wan22SpeechToVideoPipeline, "s2v-14B",
         dict(height=64, width=64, infer_frames=8, num_clips=1, max_sequence_length=16), text_embeds=False,
         extra=lambda: {"image": np.zeros((64, 64, 3), np.uint8), "audio": _tone()}),
]
TEXT_CASES = [c for c in CASES if c.text_embeds]
MOE_CASE = CASES[0]


@functools.cache
def _reference(name: str) -> torch.Tensor:
    """The latents of a fresh pipeline on the case's call, computed once per case."""
    case = next(c for c in CASES if c.name == name)
    return _latents(case.pipe()(**case.inputs()))


def _latents(out):
    """The final latents of a call with ``output_type="latent"`` (S2V: of its one clip)."""
    frames = out.frames if hasattr(out, "frames") else out[0]
    return frames[0] if isinstance(frames, list) else frames


def assert_same(a: torch.Tensor, b: torch.Tensor, what: str = "") -> None:
    diff = (a.float() - b.float()).abs().max().item()
    assert diff <= SAME * b.float().abs().max().item(), f"{what}: max|diff| {diff:.3e}"


@pytest.fixture(params=CASES, ids=lambda c: c.name)
def case(request) -> Case:
    return request.param


@pytest.fixture(params=TEXT_CASES, ids=lambda c: c.name)
def text_case(request) -> Case:
    return request.param


def _model_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "config.json" and not p.name.endswith(".txt"))


# ------------------------------------------------------------------------------------------ save / load
def test_save_reload_pickled_variant_gives_the_same_output(case, tmp_path):
    """``save_pretrained(variant="fp16", safe_serialization=False)`` reaches every model component, ours included;
    ``from_pretrained(variant="fp16")`` reads those files back and the pipeline reproduces its output."""
    pipe = case.pipe()
    pipe.save_pretrained(tmp_path, variant="fp16", safe_serialization=False)
    index = json.loads((tmp_path / "model_index.json").read_text())
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            files = _model_files(tmp_path / name)
            assert name in index and files and all(".fp16." in f for f in files if not f.endswith(".json")), files
    assert all(f.endswith(".bin") for f in _model_files(tmp_path / "transformer"))
    reloaded = case.pipeline_class.from_pretrained(tmp_path, variant="fp16")
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            loaded = dict(reloaded.components[name].named_parameters())
            assert all(torch.equal(p, loaded[n]) for n, p in module.named_parameters() if n in loaded), name
    assert_same(_latents(reloaded(**case.inputs())), _reference(case.name), "reloaded")


def test_missing_variant_is_refused_with_diffusers_message(tmp_path):
    MOE_CASE.pipe().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="You are trying to load the model files of the `variant=fp16`"):
        Wan22Pipeline.from_pretrained(tmp_path, variant="fp16")


def test_sharded_save_of_the_moe_reloads(tmp_path):
    """``max_shard_size`` passed by the pipeline's ``save_pretrained`` shards the MoE component (with ``variant`` and
    ``safe_serialization=False`` too: the three reach it together; diffusers 0.42 reads no sharded pickles back)."""
    pipe = MOE_CASE.pipe()
    pipe.save_pretrained(tmp_path / "pickled", variant="fp16", safe_serialization=False, max_shard_size="30KB")
    files = _model_files(tmp_path / "pickled" / "transformer")
    shards = [f for f in files if f.endswith(".bin")]
    assert len(shards) > 1 and all(f.startswith("diffusion_pytorch_model.fp16-") for f in shards), files
    assert "diffusion_pytorch_model.bin.index.fp16.json" in files
    pipe.save_pretrained(tmp_path, max_shard_size="30KB")
    index = json.loads((tmp_path / "transformer" / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    reloaded = DiffusionPipeline.from_pretrained(tmp_path)
    assert isinstance(reloaded, Wan22Pipeline) and isinstance(reloaded.transformer, WanMoETransformer3DModel)
    assert_same(_latents(reloaded(**MOE_CASE.inputs())), _reference(MOE_CASE.name), "sharded")


def test_torch_dtype_and_dtype_dict_on_loading(tmp_path):
    pipe = MOE_CASE.pipe()
    pipe.save_pretrained(tmp_path)
    half = Wan22Pipeline.from_pretrained(tmp_path, torch_dtype=torch.float16)
    assert {m.dtype for m in half.components.values() if isinstance(m, torch.nn.Module)} == {torch.float16}
    mixed = Wan22Pipeline.from_pretrained(tmp_path, torch_dtype={"transformer": torch.bfloat16,
                                                                 "default": torch.float16})
    assert mixed.transformer.dtype == torch.bfloat16 and mixed.vae.dtype == torch.float16
    assert mixed.text_encoder.dtype == torch.float16
    assert {e.dtype for e in mixed.transformer.experts_named()} == {torch.bfloat16}
    latents = _latents(mixed(**MOE_CASE.inputs()))
    assert latents.dtype == torch.float32 and torch.isfinite(latents).all()


def test_one_expert_moe_saves_reloads_and_refuses_a_schedule_needing_the_other(tmp_path):
    components = build_tiny_components("t2v-A14B", seed=0)
    low_only = WanMoETransformer3DModel.from_experts(None, components["transformer"].low_noise_expert)
    pipe = Wan22Pipeline(**dict(components, transformer=low_only))
    pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "transformer" / "config.json").read_text())["experts"] == ["low"]
    reloaded = Wan22Pipeline.from_pretrained(tmp_path)
    assert reloaded.transformer.loaded_experts == ["low"] and reloaded.transformer.high_noise_expert is None
    assert not any(p.is_meta for p in reloaded.transformer.parameters())
    for p in (pipe, reloaded):  # the same refusal before and after saving, before any step
        with pytest.raises(ValueError, match=r"needs the high-noise expert at steps \[0\].*only \['low'\] is loaded"):
            p(**MOE_CASE.inputs())
    kw = MOE_CASE.inputs(expert_steps=(0, 2))
    assert_same(_latents(reloaded(**kw)), _latents(pipe(**MOE_CASE.inputs(expert_steps=(0, 2)))), "low only")


# ------------------------------------------------------------------------------------------ components, devices, dtypes
def test_components_to_device_and_dtype(case):
    pipe = case.pipe()
    rebuilt = case.pipeline_class(**pipe.components)
    assert set(rebuilt.components) == set(pipe.components)
    pipe.to(torch.device("cpu"))
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    assert {m.device.type for m in modules} == {"cpu"} and pipe.device.type == "cpu"
    pipe.to(dtype=torch.float16)
    assert {m.dtype for m in modules} == {torch.float16}
    if isinstance(pipe.transformer, WanMoETransformer3DModel):
        assert {e.dtype for e in pipe.transformer.experts_named()} == {torch.float16}


def test_model_offload_twice_gives_the_same_output(text_case):
    """``enable_model_cpu_offload`` (CPU standing in for the accelerator); the hooks are re-applied after every
    call, so a second call runs offloaded too and still matches (S2V: `test_s2v.py` memory modes)."""
    pipe = text_case.pipe()
    pipe.enable_model_cpu_offload(device="cpu")
    for _ in range(2):
        assert_same(_latents(pipe(**text_case.inputs())), _reference(text_case.name), "offloaded")


# ------------------------------------------------------------------------------------------ callbacks
def test_callback_gets_exactly_the_requested_tensors_and_its_returns_are_used(case):
    pipe = case.pipe()
    seen = []

    def callback(p, i, t, kwargs):
        seen.append((set(kwargs), p.current_expert))
        if i == p.num_timesteps - 1:  # a returned tensor replaces the pipeline's
            kwargs["latents"] = torch.zeros_like(kwargs["latents"])
        return kwargs

    out = pipe(**case.inputs(callback_on_step_end=callback,
                             callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs))
    assert _latents(out).abs().sum() == 0
    assert [s for s, _ in seen] == [set(pipe._callback_tensor_inputs)] * case.steps
    assert all(e in ("high", "low") for _, e in seen) and pipe.current_expert is None
    seen.clear()
    pipe(**case.inputs(callback_on_step_end=lambda p, i, t, kwargs: seen.append((set(kwargs), None)) or kwargs,
                       callback_on_step_end_tensor_inputs=["latents"]))
    assert [s for s, _ in seen] == [{"latents"}] * case.steps


def test_interrupt_stops_the_denoising(case, forward_counter):
    """A callback setting ``pipe._interrupt`` (diffusers' convention) skips the remaining steps: of the 2 steps
    (1 forward each without guidance) only the first runs."""
    pipe = case.pipe()
    for module in pipe.transformer.experts_named() if hasattr(pipe.transformer, "experts_named") else [pipe.transformer]:
        forward_counter.attach(module, "transformer")

    def stop(p, i, t, kwargs):
        p._interrupt = True
        return kwargs

    pipe(**case.inputs(guidance_scale=1.0, callback_on_step_end=stop))
    assert case.steps == 2 and len(forward_counter.calls) == 1


# ------------------------------------------------------------------------------------------ prompts and batches
def test_encode_prompt_in_isolation_gives_the_same_output(text_case):
    """Embeddings from a pipeline holding only the text stack drive a pipeline without it to the same output."""
    components = build_tiny_components(text_case.variant, seed=0)
    text_only = text_case.pipeline_class(**{k: (v if k in ("text_encoder", "tokenizer") else None)
                                            for k, v in components.items()})
    prompt_embeds, negative_embeds = text_only.encode_prompt(PROMPT, "blurry", do_classifier_free_guidance=True,
                                                             max_sequence_length=16)
    no_text = text_case.pipeline_class(**dict(components, text_encoder=None, tokenizer=None))
    kw = text_case.inputs(prompt=None, negative_prompt=None, prompt_embeds=prompt_embeds,
                          negative_prompt_embeds=negative_embeds)
    assert_same(_latents(no_text(**kw)), _reference(text_case.name), "encode_prompt")


def test_num_videos_per_prompt_and_batched_prompts(text_case):
    pipe = text_case.pipe()
    out = pipe(**text_case.inputs(prompt=[PROMPT, "A dog"], negative_prompt=None, num_videos_per_prompt=2))
    assert _latents(out).shape[0] == 4


def test_batched_prompts_reproduce_the_single_prompt(text_case):
    pipe = text_case.pipe()
    single = _reference(text_case.name)
    generators = [torch.Generator().manual_seed(s) for s in (0, 1)]
    batch = _latents(pipe(**text_case.inputs(prompt=[PROMPT, "A dog"], negative_prompt=["blurry"] * 2,
                                             generator=generators)))
    assert batch.shape[0] == 2
    assert_same(batch[:1], single, "batch[0]")


def test_dict_and_tuple_outputs_match(case):
    as_tuple = case.pipe()(**case.inputs(), return_dict=False)
    assert isinstance(as_tuple, tuple)
    assert_same(_latents(as_tuple), _reference(case.name), "tuple")


# ------------------------------------------------------------------------------------------ attention
def test_attention_slicing_and_backends_on_the_moe_match_native():
    """diffusers' attention slicing and attention backends reach both experts (set on the container, or as a
    context) and leave the output as it was."""
    pipe = MOE_CASE.pipe()
    reference = _reference(MOE_CASE.name)
    pipe.enable_attention_slicing(1)
    assert_same(_latents(pipe(**MOE_CASE.inputs())), reference, "sliced")
    pipe.disable_attention_slicing()
    with attention_backend("_native_math"):
        assert_same(_latents(pipe(**MOE_CASE.inputs())), reference, "context")
    with attention_backend():  # diffusers' set_attention_backend also changes the process-wide default: restore it
        pipe.transformer.set_attention_backend("_native_math")
    backends = {getattr(m.processor, "_attention_backend", None) for m in pipe.transformer.modules()
                if hasattr(m, "processor")}
    assert {getattr(b, "value", b) for b in backends} == {"_native_math"}
    assert_same(_latents(pipe(**MOE_CASE.inputs())), reference, "set_attention_backend")
