"""Each official component, loaded from the official files, vs the official code's outputs (float32, CPU).

Tolerance everywhere: max|ours - official| <= 1e-4 * max|official| (`assert_close_rel`).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import OFFICIAL, assert_close_rel
from diffusers_wan22 import load_official_t5, load_official_transformer, load_official_vae
from diffusers_wan22.core.official_keys import (
    official_dit_key_to_diffusers,
    official_t5_key_to_diffusers,
    official_vae_key_to_diffusers,
)

TEXT_LEN = 512


def _golden(variant: str):
    meta = json.loads((OFFICIAL / variant / "golden.json").read_text())
    return meta, load_file(OFFICIAL / variant / "golden.safetensors")


def _pad_context(context: torch.Tensor) -> torch.Tensor:
    """The official DiT zero-pads each prompt embedding to text_len and attends to all rows (no mask)."""
    return F.pad(context, (0, 0, 0, TEXT_LEN - context.shape[0]))[None]


EXPERTS = [("t2v_a14b", "high_noise_model"), ("t2v_a14b", "low_noise_model"),
           ("i2v_a14b", "high_noise_model"), ("i2v_a14b", "low_noise_model"), ("ti2v_5b", None)]
# golden name of each forward: the A14B experts by folder; TI2V with one timestep and with per-token timesteps
FORWARDS = [(v, e, e) for v, e in EXPERTS[:4]] + [("ti2v_5b", None, "model"), ("ti2v_5b", None, "model_tokenwise_t")]


@pytest.mark.parametrize("variant, expert, name", FORWARDS)
def test_expert_forward(variant, expert, name):
    meta, g = _golden(variant)
    folder = OFFICIAL / variant / expert if expert else OFFICIAL / variant
    model = load_official_transformer(folder, torch.float32)
    x = g[f"expert/{name}/x"]
    y = g.get(f"expert/{name}/y")
    if y is not None:  # i2v: the condition is concatenated on channels, as in the official forward
        x = torch.cat([x, y])
    t = g[f"expert/{name}/t"]
    context = _pad_context(g["t5/prompt/context"])
    with torch.no_grad():
        out = model(hidden_states=x[None], timestep=t if t.ndim == 2 else t.expand(1), encoder_hidden_states=context,
                    return_dict=False)[0][0]
    assert_close_rel(out, g[f"expert/{name}/out"], what=f"{variant} {name} forward")


def test_t5_encoder_on_fixed_ids():
    _, g = _golden("t2v_a14b")  # every fixture ships the same T5 bytes; the golden is stored once
    model = load_official_t5(OFFICIAL / "t2v_a14b" / "models_t5_umt5-xxl-enc-bf16.pth", torch.float32)
    with torch.no_grad():
        out = model(g["t5/fixed_ids"], attention_mask=g["t5/fixed_mask"]).last_hidden_state
    assert_close_rel(out, g["t5/fixed_out"], what="T5 on fixed ids (padded positions included)")


def test_tokenizer_and_prompt_context_match_the_official_text_path():
    """The pipeline's own prompt path (diffusers' cleaning, 512 padding, trim) gives the official context."""
    from diffusers_wan22 import Wan22Pipeline

    meta, g = _golden("t2v_a14b")
    pipe = Wan22Pipeline.from_official(OFFICIAL / "t2v_a14b", torch_dtype=torch.float32)
    for name in ("prompt", "negative_prompt", "messy"):
        text = meta["meta"]["prompts"][name]["text"]
        n = meta["meta"]["prompts"][name]["num_tokens"]
        ids = pipe.tokenizer([pipe_clean(text)], padding="max_length", max_length=TEXT_LEN, truncation=True,
                             add_special_tokens=True, return_tensors="pt").input_ids[0]
        assert ids[:n].tolist() == g[f"t5/{name}/ids"].tolist(), name
        assert (ids[n:] == 0).all()
        if f"t5/{name}/context" in g:
            embeds = pipe.encode_prompt(text, do_classifier_free_guidance=False, max_sequence_length=TEXT_LEN)[0][0]
            assert_close_rel(embeds[:n], g[f"t5/{name}/context"], what=f"{name} context")
            assert (embeds[n:] == 0).all()  # zero padding to text_len, as the official DiT input


def pipe_clean(text: str) -> str:
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    return prompt_clean(text)


@pytest.mark.parametrize("variant", ["t2v_a14b", "ti2v_5b"])
def test_vae_encode_and_decode(variant):
    _, g = _golden(variant)
    vae_file = "Wan2.1_VAE.pth" if variant == "t2v_a14b" else "Wan2.2_VAE.pth"
    vae = load_official_vae(OFFICIAL / variant / vae_file, torch.float32)
    cfg = vae.config
    mean = torch.tensor(cfg.latents_mean).view(-1, 1, 1, 1)
    std = torch.tensor(cfg.latents_std).view(-1, 1, 1, 1)
    with torch.no_grad():
        mu = vae.encode(g["vae/video"][None]).latent_dist.mean[0]
        assert_close_rel(mu, g["vae/raw_mu"], what=f"{variant} VAE raw posterior mean")
        assert_close_rel((mu - mean) / std, g["vae/encode"], what=f"{variant} VAE normalised encode")
        decoded = vae.decode(g["vae/encode"][None] * std + mean).sample[0]
        assert_close_rel(decoded, g["vae/decode_of_encode"], what=f"{variant} VAE decode (clamped)")
        decoded = vae.decode(g["vae/random_latent"][None] * std + mean).sample[0]
        assert_close_rel(decoded, g["vae/decode_of_random"], what=f"{variant} VAE decode of a random latent")


def test_every_official_key_maps_and_unknown_keys_are_named():
    from diffusers_wan22.loaders.file_io import read_safetensors_folder

    for variant, expert in EXPERTS:
        folder = OFFICIAL / variant / expert if expert else OFFICIAL / variant
        mapped = {official_dit_key_to_diffusers(k) for k in read_safetensors_folder(folder)}
        assert len(mapped) == len(read_safetensors_folder(folder))  # no two keys collapse onto one
    with pytest.raises(KeyError, match="blocks.0.self_attn.k_img.weight"):
        official_dit_key_to_diffusers("blocks.0.self_attn.k_img.weight")
    with pytest.raises(KeyError, match="blocks.0.attn.rel"):
        official_t5_key_to_diffusers("blocks.0.attn.rel.weight")
    with pytest.raises(KeyError, match="encoder.bogus"):
        official_vae_key_to_diffusers("encoder.bogus.weight", "2.1")


def test_wrong_shape_and_wrong_variant_are_clear_errors(tmp_path):
    """An i2v expert (in_dim 36) dressed up as t2v, and a shape-edited tensor, are refused by name."""
    import shutil

    from safetensors.torch import save_file

    src = OFFICIAL / "t2v_a14b" / "high_noise_model"
    dst = tmp_path / "expert"
    shutil.copytree(src, dst)
    shard = next(f for f in sorted(dst.glob("*.safetensors")) if any(k.endswith("ffn.0.weight") for k in load_file(f)))
    tensors = load_file(shard)
    key = next(k for k in tensors if k.endswith("ffn.0.weight"))
    tensors[key] = torch.zeros(tensors[key].shape[0] + 1, tensors[key].shape[1])
    save_file(tensors, str(shard))
    with pytest.raises(ValueError, match=r"tensor 'blocks\.\d+\.ffn\.net\.0\.proj\.weight' has shape"):
        load_official_transformer(dst)
    config = json.loads((dst / "config.json").read_text())
    shutil.rmtree(dst)
    shutil.copytree(OFFICIAL / "i2v_a14b" / "high_noise_model", dst)
    (dst / "config.json").write_text(json.dumps(config))  # claims in_dim 16
    with pytest.raises(ValueError, match=r"patch_embedding.weight' has shape \(32, 36, 1, 2, 2\)"):
        load_official_transformer(dst)
