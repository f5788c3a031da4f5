"""Expert-aware generation: batched CFG, the switch callback, caches reset at the switch, partial loading,
compiling and attention backends per expert."""

from __future__ import annotations

import pytest
import torch
from diffusers.hooks import FirstBlockCacheConfig
from diffusers.models.attention_dispatch import attention_backend

from diffusers_wan22 import Wan22Pipeline, WanMoETransformer3DModel

CALL = dict(prompt="Two cats boxing on a stage.", height=32, width=32, num_frames=5, num_inference_steps=8,
            output_type="latent")


def _run(pipe, **kw):
    return pipe(**dict(CALL, generator=torch.Generator().manual_seed(0), **kw))


def test_batched_cfg_equals_two_calls(tiny_pipe, forward_counter):
    forward_counter.attach(tiny_pipe.transformer.high_noise_expert, "high")
    forward_counter.attach(tiny_pipe.transformer.low_noise_expert, "low")
    plain = _run(tiny_pipe)
    calls_plain = len(forward_counter.calls)
    forward_counter.calls.clear()
    batched = _run(tiny_pipe, batched_cfg=True)
    assert len(forward_counter.calls) * 2 == calls_plain == 16
    # Not bit-exact on CPU: a batch-2 GEMM may sum in another order than two batch-1 GEMMs (float32 rounding).
    diff = (batched.frames - plain.frames).abs().max().item()
    assert diff <= 1e-5 * plain.frames.abs().max().item(), diff


def test_switch_callback_fires_once_at_the_switch(tiny_pipe):
    seen = []
    out = _run(tiny_pipe, callback_on_expert_switch=lambda p, i, t, old, new: seen.append((i, int(t), old, new)))
    k = out.experts.index("low")
    assert seen == [(k, int(out.timesteps[k]), "high", "low")]


def test_cache_per_expert_is_reset_at_the_switch(tiny_pipe, monkeypatch):
    moe = tiny_pipe.transformer
    moe.enable_cache(high=FirstBlockCacheConfig(threshold=0.2), low=FirstBlockCacheConfig(threshold=0.2))
    assert moe.high_noise_expert.is_cache_enabled and moe.low_noise_expert.is_cache_enabled
    resets = []
    original = type(moe.high_noise_expert)._reset_stateful_cache

    def spy(self, recurse=True):
        resets.append(self)
        return original(self, recurse)

    monkeypatch.setattr(type(moe.high_noise_expert), "_reset_stateful_cache", spy)
    seen = []
    out = _run(tiny_pipe, callback_on_step_end=lambda p, i, t, kw: seen.append(len(resets)) or {})
    k = out.experts.index("low")
    # The high-noise expert's cache state is dropped when the low-noise expert takes over, not before.
    assert seen[k - 1] == 0 and seen[k] == 1 and resets[0] is moe.high_noise_expert
    moe.disable_cache()
    assert not moe.is_cache_enabled


def test_one_expert_only(tiny_components):
    moe = tiny_components["transformer"]
    high_only = WanMoETransformer3DModel.from_experts(moe.high_noise_expert, None, boundary_ratio=0.875)
    pipe = Wan22Pipeline(**dict(tiny_components, transformer=high_only))
    assert high_only.loaded_experts == ["high"]
    with pytest.raises(ValueError, match=r"needs the low-noise expert at steps \[6, 7\].*only \['high'\] is loaded"):
        _run(pipe)
    out = _run(pipe, boundary_ratio=0.0)  # every t >= 0: the whole schedule stays on the high-noise expert
    assert out.experts == ["high"] * 8
    low_only = WanMoETransformer3DModel.from_experts(None, moe.low_noise_expert)
    out = _run(Wan22Pipeline(**dict(tiny_components, transformer=low_only)), num_inference_steps=None,
               expert_steps=(0, 3))
    assert out.experts == ["low"] * 3


def test_attention_backend_per_expert(tiny_pipe):
    ref = _run(tiny_pipe).frames
    with attention_backend():  # diffusers' set_attention_backend also sets the process-wide default: restore it
        tiny_pipe.transformer.set_attention_backend("_native_math", expert="low")
    procs = {n: m.processor._attention_backend for n, m in tiny_pipe.transformer.named_modules()
             if hasattr(m, "processor") and hasattr(m.processor, "_attention_backend")}
    assert {getattr(v, "value", v) for k, v in procs.items() if k.startswith("low")} == {"_native_math"}
    assert {v for k, v in procs.items() if k.startswith("high")} == {None}
    assert (_run(tiny_pipe).frames - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_compile_repeated_blocks_compiles_both_experts(tiny_pipe):
    ref = _run(tiny_pipe, num_inference_steps=4).frames
    tiny_pipe.transformer.compile_repeated_blocks(backend="aot_eager", fullgraph=True)
    compiled = [n for n, m in tiny_pipe.transformer.named_modules() if hasattr(m, "_compiled_call_impl")
                and m._compiled_call_impl is not None]
    assert {n.split(".")[0] for n in compiled} == {"high_noise_expert", "low_noise_expert"}
    out = _run(tiny_pipe, num_inference_steps=4).frames
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()
