"""diffusers conformance of `WanMoETransformer3DModel` as a model and as a LoRA target, in the spirit of diffusers'
model and LoRA testers: save / load with variants and shards, dtypes, gradient checkpointing, group offload, and
peft LoRA on the container and per expert (add_adapter, set_adapters, delete_adapters, fuse / unfuse, disable /
enable, unload, save_lora_adapter / save_lora_weights round trips, metadata, hotswap, T2V -> I2V expansion, the
"no LoRA keys" log), plus the pipeline's ``expert=`` routing and what stays refused (lazy / quantized experts).

Tolerances: "unchanged" = equal up to float32 rounding of an identical computation (``TOL`` absolute on outputs of
magnitude ~1-5); "fused = active" = 1e-4 relative (merging B @ A into W rounds differently than applying it).
"""

from __future__ import annotations

import logging as std_logging

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.utils import logging
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file

from conftest import random_lora
from diffusers_wan22 import Wan22ImageToVideoPipeline, Wan22Pipeline, WanMoETransformer3DModel, build_tiny_components
from diffusers_wan22.loaders.tiny import tiny_transformer_kwargs

TOL = 1e-6
FUSED = 1e-4
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _config(rank: int = 4, alpha: int = 4, **kw) -> LoraConfig:
    # init_lora_weights=False: B is random too, so an adapter changes the output from the start
    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=TARGETS, init_lora_weights=False, **kw)


def _moe(seed: int = 0, **config) -> WanMoETransformer3DModel:
    torch.manual_seed(seed)
    experts = [WanTransformer3DModel(**{**tiny_transformer_kwargs(), **config}) for _ in range(2)]
    with torch.no_grad():  # fresh Wan transformers output zeros (zero-initialised head): give every weight signal
        for p in (p for e in experts for p in e.parameters()):
            p.normal_(0, 0.2)
    return WanMoETransformer3DModel.from_experts(*experts, boundary_ratio=0.875).eval()


def _inputs(timestep: int) -> dict:
    g = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(1, 16, 2, 4, 4, generator=g), timestep=torch.tensor([timestep]),
                encoder_hidden_states=torch.randn(1, 7, 32, generator=g), return_dict=False)


@torch.no_grad()
def _out(moe) -> dict[str, torch.Tensor]:
    """Each expert's output (the container routes t=950 to the high-noise expert, t=300 to the low-noise one)."""
    return {"high": moe(**_inputs(950))[0], "low": moe(**_inputs(300))[0]}


def _changed(a, b) -> bool:
    return (a - b).abs().max().item() > TOL


def _lora_layers(module) -> list[str]:
    return [n for n, m in module.named_modules() if isinstance(m, BaseTunerLayer)]


def _where(moe) -> dict[str, set]:
    """Which expert holds layers of which adapter."""
    return {e: set(moe.adapters_in(e)) for e in ("high", "low")}


class _Records(std_logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def moe():
    return _moe()


# ------------------------------------------------------------------------------------------ model
def test_save_load_variant_sharded_and_pickled(moe, tmp_path):
    """``variant`` + ``max_shard_size`` (safetensors shards) and ``variant`` + ``safe_serialization=False`` (one
    pickle; diffusers 0.42 reads no sharded pickles) both reload to the same weights and outputs."""
    base = _out(moe)
    for folder, kwargs, suffix in ((tmp_path / "shards", dict(max_shard_size="30KB"), ".safetensors"),
                                   (tmp_path / "pickle", dict(safe_serialization=False), ".bin")):
        moe.save_pretrained(folder, variant="fp16", **kwargs)
        weights = [p.name for p in folder.iterdir() if p.name.endswith(suffix)]
        assert weights and all(".fp16" in f for f in weights), weights
        assert (len(weights) > 1) == ("max_shard_size" in kwargs)
        with pytest.raises(OSError, match="no file named"):  # the variant must be asked for
            WanMoETransformer3DModel.from_pretrained(folder)
        loaded = WanMoETransformer3DModel.from_pretrained(folder, variant="fp16").eval()
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), moe.state_dict().values()))
        out = _out(loaded)
        assert not any(_changed(out[e], base[e]) for e in base)


def test_torch_dtype_on_loading_keeps_the_fp32_modules(moe, tmp_path):
    moe.save_pretrained(tmp_path)
    loaded = WanMoETransformer3DModel.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    keep = tuple(WanMoETransformer3DModel._keep_in_fp32_modules or ())
    for name, p in loaded.named_parameters():
        expected = torch.float32 if any(k in name.split(".") for k in keep) else torch.bfloat16
        assert p.dtype == expected, name


def test_gradient_checkpointing_reaches_both_experts_and_keeps_the_gradients(moe):
    def grads(model):
        model.zero_grad()
        for t in (950, 300):
            model(**{**_inputs(t), "hidden_states": _inputs(t)["hidden_states"].requires_grad_()})[0].pow(2).mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    moe.train()
    plain = grads(moe)
    assert not moe.is_gradient_checkpointing
    moe.enable_gradient_checkpointing()
    assert moe.is_gradient_checkpointing and all(e.gradient_checkpointing for e in moe.experts_named())
    checkpointed = grads(moe)
    assert plain.keys() == checkpointed.keys() and {n.split(".")[0] for n in plain} == {"high_noise_expert",
                                                                                        "low_noise_expert"}
    assert all(torch.allclose(plain[n], checkpointed[n], atol=1e-6) for n in plain)
    moe.disable_gradient_checkpointing()
    assert not moe.is_gradient_checkpointing


def test_group_offload_of_the_model_gives_the_same_output(moe):
    base = _out(moe)
    moe.enable_group_offload(torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1)
    out = _out(moe)
    assert not any(_changed(out[e], base[e]) for e in base)


# ------------------------------------------------------------------------------------------ LoRA on the model
def test_add_adapter_on_the_container_and_per_expert(moe):
    base = _out(moe)
    moe.add_adapter(_config(), adapter_name="both")
    assert isinstance(moe.peft_config, dict) and list(moe.peft_config) == ["both"]
    assert _where(moe) == {"high": {"both"}, "low": {"both"}}
    both = _out(moe)
    assert _changed(both["high"], base["high"]) and _changed(both["low"], base["low"])

    moe.add_adapter(_config(rank=2), adapter_name="lo", expert="low")
    assert _where(moe) == {"high": {"both"}, "low": {"both", "lo"}} and list(moe.peft_config) == ["both", "lo"]
    after = _out(moe)
    assert not _changed(after["high"], both["high"])  # the high-noise expert keeps its active adapter
    assert moe.low_noise_expert.blocks[0].attn1.to_q.active_adapters == ["lo"]  # diffusers: the new one is active


def test_set_adapters_per_expert_strengths(moe):
    base = _out(moe)
    moe.add_adapter(_config(), adapter_name="style")
    full = _out(moe)
    moe.set_adapters("style", 0.0, expert="high")
    out = _out(moe)
    assert not _changed(out["high"], base["high"]) and not _changed(out["low"], full["low"])
    moe.set_adapters(["style"], [0.5])  # both experts
    half = _out(moe)
    assert all(_changed(half[e], base[e]) and _changed(half[e], full[e]) for e in base)
    with pytest.raises(ValueError, match=r"Adapter\(s\) \['other'\] are not loaded in the 'low' expert"):
        moe.set_adapters("other", 1.0, expert="low")
    with pytest.raises(ValueError, match="`expert` must be one of"):
        moe.set_adapters("style", 1.0, expert="middle")


def test_fuse_unfuse_disable_enable_per_expert(moe):
    base = _out(moe)
    moe.add_adapter(_config(), adapter_name="style")
    active = _out(moe)
    moe.fuse_lora(expert="low")
    fused = _out(moe)
    assert (fused["low"] - active["low"]).abs().max() <= FUSED * active["low"].abs().max()
    assert all(m.merged for m in moe.low_noise_expert.modules() if isinstance(m, BaseTunerLayer))
    assert not any(m.merged for m in moe.high_noise_expert.modules() if isinstance(m, BaseTunerLayer))
    moe.unfuse_lora(expert="low")
    assert not any(m.merged for m in moe.modules() if isinstance(m, BaseTunerLayer))
    moe.disable_lora(expert="high")
    out = _out(moe)
    assert not _changed(out["high"], base["high"]) and (out["low"] - active["low"]).abs().max() <= FUSED * 5
    moe.enable_lora(expert="high")
    assert not _changed(_out(moe)["high"], active["high"])
    moe.fuse_lora()  # both, diffusers' own
    assert all(m.merged for m in moe.modules() if isinstance(m, BaseTunerLayer))
    moe.unfuse_lora()


def test_delete_and_unload_per_expert_and_both(moe):
    base = _out(moe)
    moe.add_adapter(_config(), adapter_name="a")
    moe.add_adapter(_config(rank=2), adapter_name="b")
    moe.delete_adapters("a", expert="high")
    assert _where(moe) == {"high": {"b"}, "low": {"a", "b"}} and list(moe.peft_config) == ["a", "b"]
    moe.delete_adapters(["a"], expert="low")  # its last layers: the config goes too
    assert list(moe.peft_config) == ["b"]
    moe.unload_lora(expert="low")
    assert _where(moe) == {"high": {"b"}, "low": set()} and not _changed(_out(moe)["low"], base["low"])
    moe.unload_lora()
    assert not _lora_layers(moe) and not hasattr(moe, "peft_config")
    moe.unload_lora()  # nothing loaded: nothing to do, as in diffusers
    out = _out(moe)
    assert not any(_changed(out[e], base[e]) for e in base)
    moe.add_adapter(_config(), adapter_name="again")  # unload -> add works
    assert _where(moe) == {"high": {"again"}, "low": {"again"}}


def test_save_lora_adapter_round_trip_and_into_one_expert(moe, tmp_path):
    """`save_lora_adapter` writes container keys and the adapter config; loading them back reproduces both experts;
    loading them with ``expert="high"`` takes the high-noise part only."""
    moe.add_adapter(_config(rank=4, alpha=8), adapter_name="style")
    config = moe.peft_config["style"].to_dict()
    with_lora = _out(moe)
    moe.save_lora_adapter(tmp_path, adapter_name="style")
    saved = load_file(tmp_path / "pytorch_lora_weights.safetensors")
    assert {k.split(".")[0] for k in saved} == {"high_noise_expert", "low_noise_expert"}
    moe.unload_lora()
    base = _out(moe)
    moe.load_lora_adapter(tmp_path, prefix=None, use_safetensors=True, adapter_name="style")
    assert moe.peft_config["style"].to_dict() == config
    out = _out(moe)
    assert not any(_changed(out[e], with_lora[e]) for e in out)
    moe.unload_lora()
    moe.load_lora_adapter(tmp_path, prefix=None, adapter_name="hi", expert="high", low_cpu_mem_usage=True)
    assert _where(moe) == {"high": {"hi"}, "low": set()}
    out = _out(moe)
    assert not _changed(out["high"], with_lora["high"]) and not _changed(out["low"], base["low"])


def test_expert_relative_lora_with_metadata_goes_into_the_chosen_expert_only(tmp_path):
    """A LoRA trained on one Wan transformer (keys without an expert prefix) whose metadata targets short module
    names: the metadata is scoped, so peft creates layers in the chosen expert only."""
    dense = WanTransformer3DModel(**tiny_transformer_kwargs())
    dense.add_adapter(_config(rank=2, alpha=4, rank_pattern={"^blocks.0.attn1.to_q": 3}), adapter_name="x")
    dense.save_lora_adapter(tmp_path, adapter_name="x")
    moe = _moe()
    base = _out(moe)
    moe.load_lora_adapter(tmp_path, prefix=None, adapter_name="x", expert="low")
    assert _where(moe) == {"high": set(), "low": {"x"}}
    assert moe.low_noise_expert.blocks[0].attn1.to_q.r["x"] == 3 and moe.low_noise_expert.blocks[1].attn1.to_q.r["x"] == 2
    sd = get_peft_model_state_dict(moe, adapter_name="x")
    original = load_file(tmp_path / "pytorch_lora_weights.safetensors")
    assert {k.removeprefix("low_noise_expert.") for k in sd} == set(original)
    assert all(torch.equal(sd[f"low_noise_expert.{k}"], v) for k, v in original.items())
    out = _out(moe)
    assert not _changed(out["high"], base["high"]) and _changed(out["low"], base["low"])


def test_no_lora_keys_log_names_the_moe(moe):
    records = _Records()
    logger = logging.get_logger("diffusers.loaders.peft")  # diffusers' loggers do not propagate to caplog
    logger.addHandler(records)
    try:
        moe.load_lora_adapter({"lora_foo": torch.tensor(2.0)}, adapter_name="none")
    finally:
        logger.removeHandler(records)
    assert any(m.startswith("No LoRA keys associated to WanMoETransformer3DModel") for m in records.messages)
    assert not _lora_layers(moe)


# ------------------------------------------------------------------------------------------ LoRA through the pipeline
def _expert_lora(expert: WanTransformer3DModel, prefix: str, seed: int, rank: int = 2) -> dict:
    """Random LoRA A/B for the q/v self-attention and k cross-attention of every block, keys relative to one
    transformer."""
    return random_lora(expert, ("attn1.to_q", "attn1.to_v", "attn2.to_k"), prefix, seed, rank)


@pytest.fixture
def pipe():
    return Wan22Pipeline(**build_tiny_components("t2v-A14B", seed=0))


def test_unload_lora_weights_without_lora_is_a_no_op(pipe):
    pipe.unload_lora_weights()
    pipe.unload_lora_weights(expert="low")
    dense = Wan22Pipeline(**build_tiny_components("ti2v-5B", seed=0))
    dense.unload_lora_weights()
    assert pipe.get_list_adapters() == {} and dense.get_list_adapters() == {}


def test_load_into_transformer_2_means_the_low_noise_expert(pipe):
    sd = _expert_lora(pipe.transformer.low_noise_expert, "transformer.", seed=3)
    pipe.load_lora_weights(sd, adapter_name="lo", load_into_transformer_2=True)
    assert pipe.get_list_adapters() == {"transformer": ["lo"]}
    assert pipe.get_list_adapters(by_expert=True) == {"low_noise_expert": ["lo"]}


def test_save_lora_weights_and_load_lora_weights_round_trip(pipe, tmp_path):
    """Two per-expert adapters saved with diffusers' `save_lora_weights` (container keys + metadata) load back
    into the same experts, with the same output."""
    high = _expert_lora(pipe.transformer.high_noise_expert, "transformer.", seed=1)
    low = _expert_lora(pipe.transformer.low_noise_expert, "transformer.", seed=2)
    pipe.load_lora_weights(high, adapter_name="hi", expert="high")
    pipe.load_lora_weights(low, adapter_name="lo", expert="low")
    pipe.set_adapters(["hi", "lo"], [0.7, 1.3])
    reference = _out(pipe.transformer)
    for name in ("hi", "lo"):
        Wan22Pipeline.save_lora_weights(
            tmp_path / name, transformer_lora_layers=get_peft_model_state_dict(pipe.transformer, adapter_name=name),
            transformer_lora_adapter_metadata=pipe.transformer.peft_config[name].to_dict())
    fresh = Wan22Pipeline(**build_tiny_components("t2v-A14B", seed=0))
    for name in ("hi", "lo"):
        fresh.load_lora_weights(tmp_path / name, adapter_name=name)
    assert fresh.get_list_adapters(by_expert=True) == {"high_noise_expert": ["hi"], "low_noise_expert": ["lo"]}
    fresh.set_adapters(["hi", "lo"], [0.7, 1.3])
    out = _out(fresh.transformer)
    assert not any(_changed(out[e], reference[e]) for e in out)


def test_hotswap_replaces_the_weights_in_place(pipe):
    first = _expert_lora(pipe.transformer.high_noise_expert, "transformer.", seed=1)
    second = _expert_lora(pipe.transformer.high_noise_expert, "transformer.", seed=2)
    pipe.load_lora_weights(first, adapter_name="x", expert="high")
    layer = pipe.transformer.high_noise_expert.blocks[0].attn1.to_q
    weight = layer.lora_A["x"].weight
    pipe.load_lora_weights(second, adapter_name="x", expert="high", hotswap=True)
    assert layer.lora_A["x"].weight is weight and torch.equal(weight, second["transformer.blocks.0.attn1.to_q.lora_A.weight"])
    fresh = Wan22Pipeline(**build_tiny_components("t2v-A14B", seed=0))
    fresh.load_lora_weights(second, adapter_name="x", expert="high")
    assert not _changed(_out(pipe.transformer)["high"], _out(fresh.transformer)["high"])


def test_t2v_lora_is_expanded_for_an_i2v_moe_with_image_projections():
    """diffusers' own `_maybe_expand_t2v_lora_for_i2v` runs: the image K/V projections get zero LoRA weights."""
    moe = _moe(image_dim=16, added_kv_proj_dim=24)
    components = build_tiny_components("i2v-A14B", seed=0)
    pipe = Wan22ImageToVideoPipeline(**dict(components, transformer=moe))
    pipe.load_lora_weights(_expert_lora(moe.high_noise_expert, "transformer.", seed=1), adapter_name="t2v",
                           expert="high")
    add_k = moe.high_noise_expert.blocks[0].attn2.add_k_proj
    assert isinstance(add_k, BaseTunerLayer) and torch.count_nonzero(add_k.lora_B["t2v"].weight) == 0
    assert not _lora_layers(moe.low_noise_expert)


def test_lora_with_expert_offload_gives_the_same_output(pipe):
    kw = dict(prompt="Two cats boxing on a stage.", height=16, width=16, num_frames=5, expert_steps=(1, 1),
              max_sequence_length=16, output_type="latent")
    sd = _expert_lora(pipe.transformer.low_noise_expert, "transformer.", seed=4)
    pipe.load_lora_weights(sd, adapter_name="lo", expert="low")
    reference = pipe(**kw, generator=torch.Generator().manual_seed(0)).frames
    offloaded = Wan22Pipeline(**build_tiny_components("t2v-A14B", seed=0))
    offloaded.enable_model_cpu_offload(device="cpu")
    offloaded.load_lora_weights(sd, adapter_name="lo", expert="low")  # diffusers lifts and re-applies the hooks
    out = offloaded(**kw, generator=torch.Generator().manual_seed(0)).frames
    assert (out - reference).abs().max() <= 1e-5 * reference.abs().max()


def test_pipeline_fuse_and_unfuse_per_expert_keep_diffusers_bookkeeping(pipe):
    pipe.load_lora_weights(_expert_lora(pipe.transformer.high_noise_expert, "transformer.", 1), adapter_name="hi",
                           expert="high")
    pipe.load_lora_weights(_expert_lora(pipe.transformer.low_noise_expert, "transformer.", 2), adapter_name="lo",
                           expert="low")
    pipe.fuse_lora(expert="low", adapter_names=["lo"])
    assert pipe.fused_loras == {"lo"} and pipe.num_fused_loras == 1
    pipe.fuse_lora(expert="high", adapter_names=["hi"])
    assert pipe.fused_loras == {"hi", "lo"}
    pipe.unfuse_lora(expert="high")
    assert pipe.fused_loras == {"lo"}
    pipe.unfuse_lora()
    assert pipe.num_fused_loras == 0
    pipe.delete_adapters("hi", expert="high")
    assert pipe.get_list_adapters() == {"transformer": ["lo"]}
    pipe.unload_lora_weights(expert="low")
    assert pipe.get_list_adapters() == {}


def test_lora_and_lazy_experts_stay_refused_both_ways(tmp_path):
    pipe = Wan22Pipeline(**build_tiny_components("t2v-A14B", seed=0))
    pipe.save_pretrained(tmp_path)
    sd = _expert_lora(pipe.transformer.high_noise_expert, "transformer.", seed=1)
    pipe.load_lora_weights(sd, adapter_name="x")
    with pytest.raises(ValueError, match="would drop LoRA adapters"):
        pipe.enable_lazy_experts(tmp_path)
    lazy = Wan22Pipeline.from_pretrained(tmp_path, lazy_experts=True)
    with pytest.raises(ValueError, match="Lazy experts re-read the saved weights"):
        lazy.load_lora_weights(sd, adapter_name="x")
    assert not _lora_layers(lazy.transformer)


def test_dense_pipeline_refuses_an_expert():
    dense = Wan22Pipeline(**build_tiny_components("ti2v-5B", seed=0))
    with pytest.raises(ValueError, match="only applies to a mixture-of-experts transformer"):
        dense.load_lora_weights({}, expert="high")
    with pytest.raises(ValueError, match="only applies to a mixture-of-experts transformer"):
        dense.get_list_adapters(by_expert=True)
