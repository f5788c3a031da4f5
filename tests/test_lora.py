"""Per-expert LoRA: tiny LoRAs written in-process (diffusers and original `diffusion_model.*` key formats)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

TOL = 1e-6  # "unchanged" means equal up to float32 rounding of an identical computation


def _lora_state_dict(model, prefix: str, names: dict[str, str], rank: int = 2, seed: int = 0) -> dict:
    """Random LoRA A/B pairs for the given attention projections of every block.

    ``names`` maps the diffusers module path inside a block to the key spelling of the target format.
    """
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i, block in enumerate(model.blocks):
        for module_path, key in names.items():
            layer = block.get_submodule(module_path)
            sd[f"{prefix}blocks.{i}.{key}.lora_A.weight"] = torch.randn(rank, layer.in_features, generator=g)
            sd[f"{prefix}blocks.{i}.{key}.lora_B.weight"] = torch.randn(layer.out_features, rank, generator=g)
    return sd


DIFFUSERS_KEYS = {"attn1.to_q": "attn1.to_q", "attn1.to_v": "attn1.to_v", "ffn.net.2": "ffn.net.2"}
ORIGINAL_KEYS = {"attn1.to_q": "self_attn.q", "attn1.to_v": "self_attn.v", "attn2.to_k": "cross_attn.k"}


def _outputs(moe):
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(1, 16, 2, 4, 4, generator=g), torch.randn(1, 7, 32, generator=g)
    return {e: moe.get_expert(e)(hidden_states=x, timestep=torch.tensor([500]), encoder_hidden_states=ctx)[0]
            for e in ("high", "low")}


def _changed(a, b) -> bool:
    return (a - b).abs().max().item() > TOL


def test_lora_into_one_expert_changes_only_that_expert(tiny_pipe):
    base = _outputs(tiny_pipe.transformer)
    sd = _lora_state_dict(tiny_pipe.transformer.high_noise_expert, "transformer.", DIFFUSERS_KEYS)
    tiny_pipe.load_lora_weights(sd, adapter_name="style", expert="high")
    after = _outputs(tiny_pipe.transformer)
    assert _changed(after["high"], base["high"]) and not _changed(after["low"], base["low"])
    assert tiny_pipe.get_list_adapters(by_expert=True) == {"high_noise_expert": ["style"]}


def test_per_expert_strengths(tiny_pipe):
    base = _outputs(tiny_pipe.transformer)
    sd = _lora_state_dict(tiny_pipe.transformer.high_noise_expert, "transformer.", DIFFUSERS_KEYS)
    tiny_pipe.load_lora_weights(sd, adapter_name="style")  # both experts
    both = _outputs(tiny_pipe.transformer)
    assert _changed(both["high"], base["high"]) and _changed(both["low"], base["low"])

    tiny_pipe.set_adapters("style", 0.0, expert="high")  # switch it off on the high-noise expert only
    out = _outputs(tiny_pipe.transformer)
    assert not _changed(out["high"], base["high"]) and not _changed(out["low"], both["low"])

    tiny_pipe.set_adapters(["style"], [0.5], expert="low")
    half = _outputs(tiny_pipe.transformer)
    assert _changed(half["low"], both["low"]) and _changed(half["low"], base["low"])
    assert not _changed(half["high"], base["high"])


def test_two_file_distillation_loras_in_original_format(tiny_pipe, tmp_path):
    """The published high/low LoRA pairs use the original key names (`diffusion_model.blocks.N.self_attn.q`...)."""
    base = _outputs(tiny_pipe.transformer)
    for expert, seed in (("high", 1), ("low", 2)):
        sd = _lora_state_dict(tiny_pipe.transformer.get_expert(expert), "diffusion_model.", ORIGINAL_KEYS, seed=seed)
        save_file(sd, tmp_path / f"lightning_{expert}.safetensors")
        tiny_pipe.load_lora_weights(str(tmp_path), weight_name=f"lightning_{expert}.safetensors",
                                    adapter_name=f"lightning_{expert}", expert=expert)
    assert tiny_pipe.get_list_adapters(by_expert=True) == {"high_noise_expert": ["lightning_high"],
                                             "low_noise_expert": ["lightning_low"]}
    out = _outputs(tiny_pipe.transformer)
    assert _changed(out["high"], base["high"]) and _changed(out["low"], base["low"])
    # And the pipeline runs the 4-step distilled recipe: 2 + 2 steps, no CFG.
    res = tiny_pipe("a cat", height=32, width=32, num_frames=5, expert_steps=(2, 2), guidance_scale=1.0,
                    guidance_scale_2=1.0, output_type="latent")
    assert res.experts == ["high", "high", "low", "low"]


def test_fuse_and_unfuse_on_one_expert(tiny_pipe):
    base = _outputs(tiny_pipe.transformer)
    sd = _lora_state_dict(tiny_pipe.transformer.low_noise_expert, "transformer.", DIFFUSERS_KEYS)
    tiny_pipe.load_lora_weights(sd, adapter_name="style", expert="low")
    active = _outputs(tiny_pipe.transformer)
    tiny_pipe.fuse_lora(expert="low")  # merged into the weights: same output without the LoRA branch
    fused = _outputs(tiny_pipe.transformer)
    assert (fused["low"] - active["low"]).abs().max() < 1e-4 * active["low"].abs().max()
    assert not _changed(fused["high"], base["high"])
    tiny_pipe.unfuse_lora(expert="low")
    tiny_pipe.set_adapters("style", 0.0, expert="low")
    assert (_outputs(tiny_pipe.transformer)["low"] - base["low"]).abs().max() < 1e-4 * base["low"].abs().max()


def test_bad_expert_names_are_rejected(tiny_pipe):
    with pytest.raises(ValueError, match=r"`expert` must be one of \('high', 'low', 'both'\); got 'middle'"):
        tiny_pipe.load_lora_weights({}, expert="middle")
    with pytest.raises(ValueError, match="No LoRA adapter is loaded"):
        tiny_pipe.set_adapters("missing", 1.0, expert="high")
