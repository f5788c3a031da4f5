"""Memory modes (issue 4): per-expert offload, lazy experts + prefetch, per-expert group offload, the planner.

Everything runs on CPU: the "accelerator" is the CPU, so the tests check what can be observed here — identical
latents, which expert is materialised (``meta`` or not) at every expert call, the accelerate hook chain, the
group-offload live set and disk layout, and the planner's arithmetic.
"""

from __future__ import annotations

import os

import pytest
import torch
from accelerate.hooks import CpuOffload
from diffusers.hooks.group_offloading import ModuleGroup

from diffusers_wan22 import (
    GB,
    SafetensorsExpertSource,
    Wan22Pipeline,
    best_mode,
    build_tiny_components,
    estimate_all,
    estimate_memory,
    is_materialised,
    spec_from_config,
    spec_from_pipeline,
)
from diffusers_wan22.core.memory_planner import A14B, MODES

CALL = dict(prompt="Two cats boxing on a stage.", height=32, width=32, num_frames=5, num_inference_steps=8)
EXPERTS = {"high": "high_noise_expert", "low": "low_noise_expert"}


def _latents(pipe, **kw):
    out = pipe(**CALL, output_type="latent", generator=torch.Generator().manual_seed(0), **kw)
    return out.frames, out.experts


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The tiny pipeline (same weights as the `tiny_pipe` fixture) saved once, and its no-offload latents."""
    folder = tmp_path_factory.mktemp("tiny_pipe")
    pipe = Wan22Pipeline(**build_tiny_components("t2v-A14B", seed=0))
    pipe.save_pretrained(folder)
    ref, experts = _latents(pipe)
    assert set(experts) == {"high", "low"}
    return folder, ref


def _lazy(folder, **kw) -> Wan22Pipeline:
    return Wan22Pipeline.from_pretrained(folder, lazy_experts=True, **kw)


# ------------------------------------------------------------------------------------------------ bit-identical modes
@pytest.mark.parametrize("mode", ["expert_offload", "model_offload", "group_offload", "group_offload_disk",
                                  "lazy_experts", "lazy_no_prefetch", "lazy_only"])
def test_every_mode_gives_the_no_offload_latents(mode, saved, tmp_path):
    folder, ref = saved
    if mode.startswith("lazy"):
        pipe = _lazy(folder, prefetch_steps=0 if mode == "lazy_no_prefetch" else 1)
        if mode != "lazy_only":
            pipe.enable_memory_mode("lazy_experts", device="cpu")
    else:
        pipe = Wan22Pipeline(**build_tiny_components("t2v-A14B", seed=0))
        disk = str(tmp_path / "offload") if mode == "group_offload_disk" else None
        pipe.enable_memory_mode(mode.replace("_disk", ""), device="cpu", offload_to_disk_path=disk)
    for _ in range(2):  # the second call runs with the hooks re-applied by `maybe_free_model_hooks`
        latents, _ = _latents(pipe)
        assert torch.equal(latents, ref), f"{mode}: max|diff| {(latents - ref).abs().max().item():.3e}"


# ------------------------------------------------------------------------------------------------ per-expert offload
def test_expert_offload_hook_chain_and_order(tiny_pipe, monkeypatch):
    tiny_pipe.enable_model_cpu_offload(device="cpu")
    hooks = tiny_pipe._all_hooks
    t = tiny_pipe.transformer
    assert [h.model for h in hooks] == [tiny_pipe.text_encoder, t.high_noise_expert, t.low_noise_expert,
                                        tiny_pipe.vae]
    assert [h.hook.prev_module_hook for h in hooks] == [None, hooks[0], hooks[1], hooks[2]]
    assert str(tiny_pipe._offload_device) == "cpu:0" and tiny_pipe._execution_device.type == "cpu"

    names = {id(tiny_pipe.text_encoder): "text_encoder", id(t.high_noise_expert): "high",
             id(t.low_noise_expert): "low", id(tiny_pipe.vae): "vae"}
    seen = []
    original = CpuOffload.pre_forward

    def spy(self, module, *args, **kwargs):
        seen.append(names[id(module)])
        return original(self, module, *args, **kwargs)

    monkeypatch.setattr(CpuOffload, "pre_forward", spy)
    out = tiny_pipe(**CALL, output_type="np", generator=torch.Generator().manual_seed(0))
    order = [n for i, n in enumerate(seen) if i == 0 or seen[i - 1] != n]
    assert order == ["text_encoder", "high", "low", "vae"]
    assert seen.count("high") == 2 * out.experts.count("high")  # cond + uncond per step
    # re-applied after the call (fresh hooks), still per expert
    assert len(tiny_pipe._all_hooks) == 4 and tiny_pipe._all_hooks[1] is not hooks[1]
    tiny_pipe.remove_all_hooks()
    assert not any(hasattr(m, "_hf_hook") for m in (t.high_noise_expert, t.low_noise_expert, tiny_pipe.vae))


# ------------------------------------------------------------------------------------------------ lazy experts
@pytest.mark.parametrize("prefetch_steps", [0, 1, 3])
def test_lazy_only_the_running_expert_is_materialised(saved, prefetch_steps):
    folder, ref = saved
    pipe = _lazy(folder, prefetch_steps=prefetch_steps)
    pipe.enable_model_cpu_offload(device="cpu")
    t = pipe.transformer
    assert not is_materialised(t.high_noise_expert) and not is_materialised(t.low_noise_expert)
    calls = []

    def check(name, other):
        def hook(module, args):
            assert is_materialised(module), f"{name} runs unmaterialised"
            assert not is_materialised(getattr(t, EXPERTS[other])), f"{other} is materialised while {name} runs"
            calls.append(name)
        return hook

    t.high_noise_expert.register_forward_pre_hook(check("high", "low"))
    t.low_noise_expert.register_forward_pre_hook(check("low", "high"))
    latents, experts = _latents(pipe)
    assert torch.equal(latents, ref)
    assert calls == [e for e in experts for _ in range(2)]
    assert dict(pipe.lazy_experts.reads) == {"high": 1, "low": 1}  # each expert read once per call


@pytest.mark.parametrize("boundary_ratio, used, unused", [(0.0, "high", "low"), (1.0, "low", "high")])
def test_lazy_never_reads_an_expert_the_schedule_does_not_use(saved, monkeypatch, boundary_ratio, used, unused):
    folder, _ = saved
    opened = []
    original = SafetensorsExpertSource.iter_tensors
    monkeypatch.setattr(SafetensorsExpertSource, "iter_tensors",
                        lambda self: (opened.append(self.prefix), original(self))[1])
    pipe = _lazy(folder, prefetch_steps=3)
    _, experts = _latents(pipe, boundary_ratio=boundary_ratio)
    assert set(experts) == {used}  # t >= 0 is always high; t >= 1000 never is
    assert opened == [f"{EXPERTS[used]}."]
    assert pipe.lazy_experts.reads[unused] == 0
    assert not is_materialised(pipe.transformer.get_expert(unused))


def test_lazy_partial_prefetch_and_disable(saved):
    folder, ref = saved
    pipe = _lazy(folder, prefetch_steps=2, prefetch_bytes=1)  # reads one tensor ahead, the rest at the switch
    assert torch.equal(_latents(pipe)[0], ref)
    pipe.disable_lazy_experts()
    assert pipe.lazy_experts is None
    assert all(is_materialised(e) for e in pipe.transformer.experts_named())
    assert torch.equal(_latents(pipe)[0], ref)


def test_lazy_expert_from_a_function(saved, tiny_components):
    """An expert source can be any function returning the expert (e.g. an official-checkpoint loader)."""
    folder, ref = saved
    moe = tiny_components["transformer"]
    pipe = _lazy(folder)
    pipe.enable_lazy_experts({"high": lambda: moe.high_noise_expert,
                              "low": SafetensorsExpertSource(folder / "transformer", "low_noise_expert.")})
    assert torch.equal(_latents(pipe)[0], ref)


# ------------------------------------------------------------------------------------------------ group offload
def test_group_offload_one_dir_per_expert_and_one_expert_onloaded(tiny_pipe, tmp_path, monkeypatch):
    t = tiny_pipe.transformer
    owner = {id(m): name for name, attr in EXPERTS.items() for m in getattr(t, attr).modules()}
    onloaded: dict[int, str] = {}  # onloaded group -> its expert
    peak = []

    def expert_of(group):  # block groups lead with a block, the unmatched group with the expert itself
        return owner.get(id(group.onload_leader))

    on, off = ModuleGroup.onload_, ModuleGroup.offload_

    def onload(self):
        if (e := expert_of(self)) is not None:
            onloaded[id(self)] = e
            peak.append(len(set(onloaded.values())))
        return on(self)

    def offload(self):
        onloaded.pop(id(self), None)
        return off(self)

    monkeypatch.setattr(ModuleGroup, "onload_", onload)
    monkeypatch.setattr(ModuleGroup, "offload_", offload)
    tiny_pipe.enable_group_offload("cpu", offload_type="block_level", num_blocks_per_group=1,
                                   offload_to_disk_path=str(tmp_path))
    _latents(tiny_pipe)
    assert peak and max(peak) == 1
    dirs = {d: sorted(os.listdir(tmp_path / "transformer" / d)) for d in EXPERTS.values()}
    assert all(len(files) == 3 for files in dirs.values())  # 2 blocks + the unmatched group, per expert
    assert sorted(os.listdir(tmp_path)) == ["text_encoder", "transformer", "vae"]
    assert sorted(os.listdir(tmp_path / "transformer")) == sorted(EXPERTS.values())  # nothing shared at the top


# ------------------------------------------------------------------------------------------------ planner
def test_planner_a14b_720p_has_a_mode_within_40gb():
    estimates = {e.mode: e for e in estimate_all(A14B, 720, 1280, 81)}
    assert estimates["none"].accelerator_gb > 75  # 2 x 28.6 GB experts + 11.4 GB T5 + activations
    fits = [e for e in estimates.values() if e.accelerator_gb <= 40]
    assert fits and estimates["group_offload"].accelerator_gb <= 40
    assert best_mode(A14B, 720, 1280, 81, 40 * GB).mode == "group_offload"
    for mode in ("model_offload", "expert_offload", "group_offload", "lazy_experts"):
        assert estimates[mode].accelerator_bytes < estimates["none"].accelerator_bytes
    assert estimates["expert_offload"].accelerator_bytes < estimates["model_offload"].accelerator_bytes
    # host RAM: lazy experts hold one expert instead of two
    assert estimates["lazy_experts"].host_bytes < 0.6 * estimates["expert_offload"].host_bytes + 2 * GB
    assert estimates["none"].tokens == 21 * 45 * 80


@pytest.mark.parametrize("mode", MODES)
def test_planner_is_monotonic_in_resolution_and_frames(mode):
    sizes = [(480, 832, 81), (720, 1280, 81), (720, 1280, 121), (1088, 1920, 121)]
    acc = [estimate_memory(A14B, h, w, f, mode=mode).accelerator_bytes for h, w, f in sizes]
    assert acc == sorted(acc)
    cpu = [estimate_memory(A14B, h, w, f, mode=mode, execution="cpu").host_bytes for h, w, f in sizes]
    assert cpu == sorted(cpu)
    assert estimate_memory(A14B, 720, 1280, 81, mode=mode, batched_cfg=True).accelerator_bytes >= acc[1]


def test_planner_counts_on_meta_match_the_real_a14b():
    cfg = dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16,
               out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
               qk_norm="rms_norm_across_heads", eps=1e-6, boundary_ratio=0.875)
    spec = spec_from_config(cfg)
    assert (spec.expert_params, spec.block_params, spec.num_layers, spec.dim) == (
        A14B.expert_params, A14B.block_params, A14B.num_layers, A14B.dim)


def test_pipe_estimate_memory_works_on_released_experts(saved):
    pipe = _lazy(saved[0])
    spec = spec_from_pipeline(pipe)
    assert spec.expert_params == sum(p.numel() for p in pipe.transformer.high_noise_expert.parameters())
    est = pipe.estimate_memory(height=32, width=32, num_frames=5, mode="lazy_experts")
    assert est.host_bytes > 0 and est.tokens == 2 * 2 * 2


def test_cli_plan(capsys):
    from diffusers_wan22.cli import main

    assert main(["plan", "--size", "1280*720", "--frame_num", "81"]) == 0
    out = capsys.readouterr().out
    assert "group_offload" in out and "Fastest mode within 40 GB" in out


@pytest.mark.parametrize("torch_dtype", [None, torch.float32])
def test_lazy_experts_straight_from_an_official_folder(torch_dtype):
    """`from_official(..., lazy_experts=True)`: no expert is read at load time, each is read once from the official
    safetensors (keys renamed on the fly), and the latents equal the eager load's."""
    from conftest import OFFICIAL
    from diffusers_wan22 import Wan22Pipeline

    folder = OFFICIAL / "t2v_a14b"
    kw = dict(prompt="Two cats boxing on a stage.", height=64, width=64, num_frames=5, num_inference_steps=6,
              output_type="latent")
    eager = Wan22Pipeline.from_official(folder, torch_dtype=torch_dtype)
    expected = eager(**kw, generator=torch.Generator().manual_seed(0)).frames
    lazy = Wan22Pipeline.from_official(folder, torch_dtype=torch_dtype, lazy_experts=True)
    assert not any(lazy.lazy_experts.is_materialised(n) for n in ("high", "low"))
    assert {n: p.dtype for n, p in lazy.transformer.named_parameters()} == \
        {n: p.dtype for n, p in eager.transformer.named_parameters()}
    out = lazy(**kw, generator=torch.Generator().manual_seed(0))
    assert out.experts == ["high"] * 4 + ["low"] * 2
    assert torch.equal(out.frames, expected)
    assert dict(lazy.lazy_experts.reads) == {"high": 1, "low": 1}


def test_s2v_planner_counts_the_tokens_the_s2v_transformer_runs():
    """The planner's S2V sequence (video + reference + FramePack motion = 2.5 extra latent frames of tokens) equals
    the sequence the transformer actually builds; `wan22 plan --model s2v-14B` uses it."""
    from dataclasses import replace

    from diffusers_wan22 import WanS2VTransformer3DModel
    from diffusers_wan22.core.memory_planner import S2V_14B, dit_tokens

    model = build_tiny_components("s2v-14B")["transformer"]
    assert isinstance(model, WanS2VTransformer3DModel)
    seen = []
    hook = model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    height = width = 128
    with torch.no_grad():
        model(torch.zeros(1, 16, 2, 16, 16), torch.tensor([500.0]), torch.zeros(1, 512, 32),
              torch.zeros(1, 16, 1, 16, 16), torch.zeros(1, 16, 19, 16, 16), torch.zeros(1, 5, 16, 8))
    hook.remove()
    assert seen == [dit_tokens(replace(S2V_14B), height, width, num_frames=8)] == [288]
    est = {e.mode: e for e in estimate_all(S2V_14B, 704, 1024, 80)}
    assert est["group_offload"].accelerator_gb < est["expert_offload"].accelerator_gb
