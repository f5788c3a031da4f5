"""`WanMoETransformer3DModel`: routing, construction, save/load."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import WanTransformer3DModel

from diffusers_wan22 import WanMoETransformer3DModel
from diffusers_wan22.loaders.tiny import tiny_transformer_kwargs


def _random_expert(seed: int) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    model = WanTransformer3DModel(**tiny_transformer_kwargs()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


@pytest.fixture
def moe():
    return WanMoETransformer3DModel.from_experts(_random_expert(1), _random_expert(2), boundary_ratio=0.875)


def _inputs(batch: int = 1):
    g = torch.Generator().manual_seed(0)
    return dict(
        hidden_states=torch.randn(batch, 16, 2, 4, 4, generator=g),
        encoder_hidden_states=torch.randn(batch, 7, 32, generator=g),
    )


def test_expert_for_timestep_follows_the_official_rule(moe):
    assert moe.boundary_timestep == 875.0
    assert moe.expert_for_timestep(999) == "high"
    assert moe.expert_for_timestep(875) == "high"  # t >= boundary -> high-noise expert
    assert moe.expert_for_timestep(874.99) == "low"
    assert moe.expert_for_timestep(0) == "low"


@pytest.mark.parametrize("t, expert", [(900, "high_noise_expert"), (875, "high_noise_expert"), (500, "low_noise_expert")])
def test_forward_routes_to_the_expert_of_the_timestep(moe, t, expert):
    inputs = _inputs()
    timestep = torch.tensor([t])
    out = moe(**inputs, timestep=timestep, return_dict=False)[0]
    ref = getattr(moe, expert)(**inputs, timestep=timestep, return_dict=False)[0]
    other = moe.low_noise_expert if expert == "high_noise_expert" else moe.high_noise_expert
    assert torch.equal(out, ref)
    assert not torch.allclose(out, other(**inputs, timestep=timestep, return_dict=False)[0])


def test_explicit_expert_skips_timestep_inspection(moe):
    inputs = _inputs()
    out = moe(**inputs, timestep=torch.tensor([999]), expert="low", return_dict=False)[0]
    ref = moe.low_noise_expert(**inputs, timestep=torch.tensor([999]), return_dict=False)[0]
    assert torch.equal(out, ref)
    with pytest.raises(ValueError, match="Unknown expert 'middle'"):
        moe(**inputs, timestep=torch.tensor([999]), expert="middle")


def test_batch_straddling_the_boundary_is_an_error(moe):
    with pytest.raises(ValueError, match="both sides of the expert boundary 875"):
        moe(**_inputs(batch=2), timestep=torch.tensor([900, 100]))


def test_boundary_ratio_outside_unit_interval_is_rejected():
    with pytest.raises(ValueError, match=r"boundary_ratio.*\[0, 1\].*1.5"):
        WanMoETransformer3DModel(**tiny_transformer_kwargs(), boundary_ratio=1.5)


def test_from_experts_rejects_different_geometries():
    other = WanTransformer3DModel(**{**tiny_transformer_kwargs(), "num_layers": 3})
    with pytest.raises(ValueError, match="num_layers"):
        WanMoETransformer3DModel.from_experts(_random_expert(1), other)


def test_from_experts_wraps_without_copying(moe):
    assert moe.config.boundary_ratio == 0.875 and moe.config.num_train_timesteps == 1000
    assert not any(p.is_meta for p in moe.parameters())
    assert moe.get_expert("high") is moe.high_noise_expert


def test_save_and_load_as_one_sharded_component(moe, tmp_path):
    moe.save_pretrained(tmp_path, max_shard_size="50KB")
    index = json.loads((tmp_path / "diffusion_pytorch_model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all(s.endswith(".safetensors") for s in shards)
    assert {k.split(".")[0] for k in index["weight_map"]} == {"high_noise_expert", "low_noise_expert"}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == "WanMoETransformer3DModel" and config["boundary_ratio"] == 0.875

    # disable_mmap: CPU kernels may round differently (~1e-6) on mmap-aligned weights; bit-equality needs copies.
    loaded = WanMoETransformer3DModel.from_pretrained(tmp_path, disable_mmap=True).eval()
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), moe.state_dict().values()))
    for t in (950, 300):
        timestep = torch.tensor([t])
        assert torch.equal(loaded(**_inputs(), timestep=timestep)[0], moe(**_inputs(), timestep=timestep)[0])


def test_repeated_blocks_cover_both_experts(moe):
    blocks = [m for m in moe.modules() if type(m).__name__ in moe._repeated_blocks]
    assert len(blocks) == 2 * moe.config.num_layers


def test_config_lists_the_present_experts_and_builds_only_those(tmp_path):
    low_only = WanMoETransformer3DModel.from_experts(None, _random_expert(2))
    assert low_only.config.experts == ["low"] and low_only.loaded_experts == ["low"]
    low_only.save_pretrained(tmp_path)
    loaded = WanMoETransformer3DModel.from_pretrained(tmp_path, disable_mmap=True)
    assert loaded.loaded_experts == ["low"] and loaded.high_noise_expert is None
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), low_only.state_dict().values()))
    # configs written before the field existed (no "experts") build both experts
    config = {k: v for k, v in dict(loaded.config).items() if k != "experts"}
    assert WanMoETransformer3DModel.from_config(config).loaded_experts == ["high", "low"]
    with pytest.raises(ValueError, match=r"`experts` must list 'high' and/or 'low'; got \['middle'\]"):
        WanMoETransformer3DModel(**tiny_transformer_kwargs(), experts=["middle"])
