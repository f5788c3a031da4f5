"""Per-expert precision policies, GGUF experts and the planner's bytes per policy (issue 11).

The accuracy bounds are relative L2 errors of the final latents of the tiny official T2V-A14B run (5 UniPC steps,
4 on the high-noise expert, injected official noise) against the float32 run; docs/make_quantization.py writes the
same measurements for every policy into docs/quantization.md.
"""

from __future__ import annotations

import json
import sys

import gguf
import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, WanTransformer3DModel
from diffusers.quantizers.gguf.utils import GGUFLinear, dequantize_gguf_tensor
from safetensors.torch import load_file

from conftest import OFFICIAL
from diffusers_wan22 import (
    POLICY_BYTES,
    QuantizationUnavailableError,
    Wan22Pipeline,
    WanMoETransformer3DModel,
    load_gguf_expert,
    parameter_bytes,
    precision_fit_table,
    quantization_state,
    spec_from_modules,
)
from diffusers_wan22.core.memory_planner import A14B, expert_weight_bytes, scoped_params
from diffusers_wan22.hooks.precision import select_layers
from gguf_writer import _quantize_q4_k, write_gguf
from goldens import replay_official_run

FIXTURE = OFFICIAL / "t2v_a14b"
FP8_FFN_ONE_EXPERT_BOUND = 3e-2  # measured 5.8e-3 (docs/quantization.md); both experts in bf16: 1.1e-2


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _official_run(pipe: Wan22Pipeline) -> torch.Tensor:
    out = replay_official_run(pipe, FIXTURE)
    assert out.experts == ["high"] * 4 + ["low"]
    return out.frames


@pytest.fixture(scope="module")
def fp32_latents():
    return _official_run(Wan22Pipeline.from_official(FIXTURE, torch_dtype=torch.float32))


def _tiny_run(pipe) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    return pipe("Two cats boxing on a stage.", height=32, width=32, num_frames=5, num_inference_steps=4,
                output_type="latent", generator=torch.Generator().manual_seed(0)).frames


# ------------------------------------------------------------------------------------------------ policies
def test_fp8_ffn_on_one_expert_is_bounded_and_leaves_the_other_expert_bit_identical(fp32_latents):
    pipe = Wan22Pipeline.from_official(FIXTURE, torch_dtype=torch.float32)
    moe = pipe.transformer
    low_before = {k: v.clone() for k, v in moe.low_noise_expert.state_dict().items()}
    high_before = {k: v.clone() for k, v in moe.high_noise_expert.state_dict().items()}

    record = pipe.set_expert_precision(high="fp8", scope="ffn")
    assert record == {"high": {"policy": "fp8", "scope": "ffn", "compute_dtype": "bfloat16", "layers": 4}}

    # Only the chosen expert's weights changed; in it, exactly the FFN linears are stored in fp8.
    low_after = moe.low_noise_expert.state_dict()
    assert low_after.keys() == low_before.keys()
    assert all(low_after[k].dtype == v.dtype and torch.equal(low_after[k], v) for k, v in low_before.items())
    fp8 = {k for k, v in moe.high_noise_expert.state_dict().items() if v.dtype == torch.float8_e4m3fn}
    assert fp8 == {f"blocks.{i}.ffn.{n}.{p}" for i in range(2) for n in ("net.0.proj", "net.2")
                   for p in ("weight", "bias")}
    hooked = {n for n, m in moe.high_noise_expert.named_modules()
              if getattr(m, "_diffusers_hook", None) and m._diffusers_hook.get_hook("layerwise_casting")}
    assert hooked == set(select_layers(moe.high_noise_expert, "ffn")) == {
        f"blocks.{i}.ffn.{n}" for i in range(2) for n in ("net.0.proj", "net.2")}
    # fp8 storage is the fp8 rounding of the original weight
    w = high_before["blocks.0.ffn.net.2.weight"]
    assert torch.equal(moe.high_noise_expert.blocks[0].ffn.net[2].weight,
                       w.to(torch.bfloat16).to(torch.float8_e4m3fn))

    latents = _official_run(pipe)
    err = rel_l2(latents, fp32_latents)
    assert 0 < err <= FP8_FFN_ONE_EXPERT_BOUND, err
    assert moe.high_noise_expert.blocks[0].ffn.net[2].weight.dtype == torch.float8_e4m3fn  # stored again
    report = moe.precision_report()
    assert report["high"]["precision"]["policy"] == "fp8" and report["low"]["precision"] is None
    assert report["high"]["parameter_bytes"] < report["low"]["parameter_bytes"]

    # The same policy given at load time
    again = Wan22Pipeline.from_official(FIXTURE, torch_dtype=torch.float32,
                                        expert_precision={"high": "fp8", "scope": "ffn"})
    assert torch.equal(_official_run(again), latents)


def test_cast_policies_and_mixed_experts(tiny_pipe):
    moe = tiny_pipe.transformer
    tiny_pipe.set_expert_precision(high="fp16", low="bf16")
    assert moe.high_noise_expert.blocks[0].ffn.net[2].weight.dtype == torch.float16
    # fp16 keeps the `_keep_in_fp32_modules` in fp32, like diffusers' from_pretrained(torch_dtype=fp16)
    assert moe.high_noise_expert.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    assert moe.low_noise_expert.condition_embedder.time_embedder.linear_1.weight.dtype == torch.bfloat16
    assert moe.input_dtype == torch.float32 and tiny_pipe.transformer_dtype == torch.float32
    assert torch.isfinite(_tiny_run(tiny_pipe)).all()  # each expert gets inputs in its own dtype


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(high="bf16", scope="ffn"), "only takes scope='all'"),
        (dict(high="fp4"), "Unknown precision policy 'fp4'"),
        (dict(high="fp8", scope="mlp"), "Unknown scope 'mlp'"),
        (dict(high="fp8", compute_dtype=torch.float8_e4m3fn), "`compute_dtype` must be"),
        (dict(high="fp16", compute_dtype=torch.bfloat16), "cannot take compute_dtype"),
        (dict(), "Pass a policy"),
    ],
)
def test_unsupported_combinations_raise_before_anything_changes(tiny_pipe, kwargs, error):
    before = {k: v.clone() for k, v in tiny_pipe.transformer.state_dict().items()}
    with pytest.raises(ValueError, match=error):
        tiny_pipe.set_expert_precision(**kwargs)
    assert all(torch.equal(v, before[k]) for k, v in tiny_pipe.transformer.state_dict().items())


def test_quantized_expert_is_not_requantized_and_dense_and_lazy_refuse(tiny_pipe, tiny_components):
    tiny_pipe.set_expert_precision(high="fp8", scope="attn")
    with pytest.raises(ValueError, match="already quantized \\(layerwise\\)"):
        tiny_pipe.set_expert_precision(high="bf16", low="fp8")
    assert quantization_state(tiny_pipe.transformer.low_noise_expert) is None  # validated before touching `low`
    tiny_pipe.enable_lazy_experts({"high": lambda: None, "low": lambda: None})
    with pytest.raises(ValueError, match="before `enable_lazy_experts`"):
        tiny_pipe.set_expert_precision(low="fp8")
    dense = Wan22Pipeline(**{**tiny_components, "transformer": tiny_components["transformer"].high_noise_expert})
    with pytest.raises(ValueError, match="needs the A14B mixture of experts"):
        dense.set_expert_precision(high="fp8")


def test_lora_before_fp8_works_after_is_refused(tiny_pipe):
    from test_lora import DIFFUSERS_KEYS, _lora_state_dict

    sd = _lora_state_dict(tiny_pipe.transformer.high_noise_expert, "transformer.", DIFFUSERS_KEYS)
    tiny_pipe.load_lora_weights(dict(sd), adapter_name="style", expert="high")
    tiny_pipe.set_expert_precision(high="fp8", scope="ffn")  # the LoRA-wrapped FFN's base layer goes fp8
    assert "blocks.0.ffn.net.2.base_layer" in select_layers(tiny_pipe.transformer.high_noise_expert, "ffn")
    assert torch.isfinite(_tiny_run(tiny_pipe)).all()
    with pytest.raises(ValueError, match="Load LoRA adapters before"):
        tiny_pipe.load_lora_weights(dict(sd), adapter_name="late", expert="high")


def test_torchao_policy_without_torchao_is_a_clear_error(tiny_pipe, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)  # makes `import torchao...` fail like a missing package
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    monkeypatch.setitem(sys.modules, "torchao.utils", None)
    before = tiny_pipe.transformer.high_noise_expert.blocks[0].ffn.net[2].weight.clone()
    with pytest.raises(QuantizationUnavailableError, match="needs torchao.*pip install"):
        tiny_pipe.set_expert_precision(high="int8-weight-only", scope="ffn")
    assert torch.equal(tiny_pipe.transformer.high_noise_expert.blocks[0].ffn.net[2].weight, before)


@pytest.mark.parametrize("policy", ["int8-weight-only", "fp8-weight-only"])
def test_torchao_weight_only_on_one_expert(tiny_pipe, policy):
    ref = _tiny_run(Wan22Pipeline(**tiny_pipe.components))
    low_before = {k: v.clone() for k, v in tiny_pipe.transformer.low_noise_expert.state_dict().items()}
    tiny_pipe.set_expert_precision(high=policy, scope="ffn")
    high = tiny_pipe.transformer.high_noise_expert
    assert quantization_state(high) == "torchao"
    assert type(high.blocks[0].ffn.net[2].weight).__name__ in ("Int8Tensor", "Float8Tensor")
    assert type(high.blocks[0].attn1.to_q.weight) is torch.nn.Parameter
    assert all(torch.equal(v, low_before[k]) for k, v in tiny_pipe.transformer.low_noise_expert.state_dict().items())
    assert 0 < rel_l2(_tiny_run(tiny_pipe), ref) < 5e-2
    with pytest.raises(ValueError, match="cannot save"):
        tiny_pipe.save_pretrained("/nonexistent/never/written")


# ------------------------------------------------------------------------------------------------ save / reload
def test_saved_fp8_pipeline_reloads_with_identical_outputs(tiny_pipe, tmp_path):
    tiny_pipe.set_expert_precision(high="fp8", scope="ffn")
    tiny_pipe.set_expert_precision(low="bf16")
    expected = _tiny_run(tiny_pipe)
    tiny_pipe.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "transformer" / "config.json").read_text())["expert_precision"]
    assert saved["high"]["policy"] == "fp8" and saved["low"]["policy"] == "bf16"

    for kwargs in ({}, {"torch_dtype": torch.float32}):
        pipe = DiffusionPipeline.from_pretrained(tmp_path, **kwargs)
        high, low = pipe.transformer.high_noise_expert, pipe.transformer.low_noise_expert
        # loaded straight into the stored dtypes (no full-precision copy), hooks back on
        assert high.blocks[0].ffn.net[0].proj.weight.dtype == torch.float8_e4m3fn
        assert high.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
        assert low.blocks[0].ffn.net[0].proj.weight.dtype == torch.bfloat16
        assert quantization_state(high) == "layerwise"
        assert torch.equal(_tiny_run(pipe), expected)
    lazy = Wan22Pipeline.from_pretrained(tmp_path, lazy_experts=True, prefetch_steps=0)
    assert torch.equal(_tiny_run(lazy), expected)


# ------------------------------------------------------------------------------------------------ GGUF
def _official_state_dict(expert_dir: str) -> dict[str, torch.Tensor]:
    state = {}
    for f in sorted((FIXTURE / expert_dir).glob("*.safetensors")):
        state.update(load_file(f))
    return state


def test_gguf_experts_from_official_naming_q8_0(tmp_path, fp32_latents):
    """Per-expert Q8_0 files in the official key naming (like the community's), loaded into the MoE model."""
    paths = {}
    for name, folder in (("high", "high_noise_model"), ("low", "low_noise_model")):
        paths[name] = tmp_path / f"wan2.2_t2v_{name}_noise_Q8_0.gguf"
        types = write_gguf(_official_state_dict(folder), paths[name], "Q8_0")
        assert sum(t == "Q8_0" for t in types.values()) == 25  # every block/embedder matrix
    moe = WanMoETransformer3DModel.from_gguf(paths["high"], paths["low"], config=FIXTURE / "high_noise_model",
                                             compute_dtype=torch.float32)
    high = moe.high_noise_expert
    assert quantization_state(high) == "gguf"
    assert isinstance(high.blocks[1].ffn.net[2], GGUFLinear)
    assert moe.config.expert_precision["low"]["types"] == {"F32": 44, "Q8_0": 25}

    # The loaded blocks dequantize to what gguf-py (independent numpy code) decodes from the file. diffusers 0.42.1
    # decodes in float16 (d * q rounded once to fp16), gguf-py in float32 (exact for Q8_0).
    reader = gguf.GGUFReader(str(paths["high"]))
    raw = {t.name: t for t in reader.tensors}
    official = {"blocks.1.ffn.net.2.weight": "blocks.1.ffn.2.weight",
                "blocks.0.attn2.to_k.weight": "blocks.0.cross_attn.k.weight",
                "condition_embedder.text_embedder.linear_1.weight": "text_embedding.0.weight"}
    for ours, theirs in official.items():
        t = raw[theirs]
        ref = gguf.quants.dequantize(t.data, t.tensor_type)
        got = dequantize_gguf_tensor(high.get_parameter(ours))
        assert got.dtype == torch.float16
        assert torch.equal(got, torch.from_numpy(np.ascontiguousarray(ref)).half().reshape(got.shape)), ours

    # A plain expert holding the dequantized weights computes the same forward.
    plain = WanTransformer3DModel.from_config(high.config).eval()
    plain.load_state_dict({k: (dequantize_gguf_tensor(v).float() if hasattr(v, "quant_type") else v)
                           for k, v in high.state_dict().items()})
    x, t, ctx = torch.randn(1, 16, 2, 4, 4), torch.tensor([900.0]), torch.randn(1, 5, 4096)
    with torch.no_grad():
        torch.testing.assert_close(high(x, t, ctx).sample, plain(x, t, ctx).sample, rtol=1e-5, atol=1e-5)
    assert parameter_bytes(high) < 0.4 * parameter_bytes(plain)

    pipe = Wan22Pipeline.from_official(FIXTURE, torch_dtype=torch.float32)
    pipe.transformer = moe
    err = rel_l2(_official_run(pipe), fp32_latents)
    assert 0 < err < 2e-2, err


def test_gguf_q4_k_in_diffusers_naming(tmp_path):
    """Q4_K blocks (written by our encoder, checked against gguf-py's decoder) in diffusers' key naming."""
    rows = np.random.RandomState(0).randn(8, 512).astype(np.float32)
    blocks = _quantize_q4_k(rows)
    assert blocks.shape == (8, 2 * 144)
    decoded = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q4_K)
    assert np.linalg.norm(decoded - rows) / np.linalg.norm(rows) < 0.1

    torch.manual_seed(0)
    expert = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
        text_dim=256, freq_dim=256, ffn_dim=256, num_layers=1, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32).eval()
    types = write_gguf(expert.state_dict(), tmp_path / "expert_Q4_K.gguf", "Q4_K")
    assert {k for k, v in types.items() if v == "Q4_K"} == {
        "blocks.0.ffn.net.2.weight", "condition_embedder.text_embedder.linear_1.weight",
        "condition_embedder.time_embedder.linear_1.weight"}
    moe = WanMoETransformer3DModel.from_experts(expert, None)
    loaded = moe.load_gguf_expert("high", tmp_path / "expert_Q4_K.gguf", compute_dtype=torch.float32)
    assert moe.high_noise_expert is loaded and isinstance(loaded.blocks[0].ffn.net[2], GGUFLinear)
    w = loaded.blocks[0].ffn.net[2].weight
    assert w.quant_type == gguf.GGMLQuantizationType.Q4_K
    reader = {t.name: t for t in gguf.GGUFReader(str(tmp_path / "expert_Q4_K.gguf")).tensors}
    ref = gguf.quants.dequantize(reader["blocks.0.ffn.net.2.weight"].data, gguf.GGMLQuantizationType.Q4_K)
    # fp16 arithmetic in diffusers (d * sc * q - dmin * m, several roundings) vs float32 in gguf-py
    torch.testing.assert_close(dequantize_gguf_tensor(w).float(), torch.from_numpy(np.ascontiguousarray(ref)),
                               rtol=2e-3, atol=2e-4)
    # time_embedder is one of the `_keep_in_fp32_modules`: diffusers dequantizes it at load
    assert loaded.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    with pytest.raises(ValueError, match="cannot save"):
        moe.save_pretrained(tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_gguf_without_quantized_tensors_is_refused(tmp_path, tiny_components):
    expert = tiny_components["transformer"].high_noise_expert
    write_gguf(expert.state_dict(), tmp_path / "f32.gguf", "Q8_0", min_numel=10**9)
    with pytest.raises(ValueError, match="no quantized tensor"):
        load_gguf_expert(tmp_path / "f32.gguf", expert)


# ------------------------------------------------------------------------------------------------ planner
def test_planner_bytes_per_policy_match_gguf_and_the_selection(tiny_components):
    for name, bpp in POLICY_BYTES.items():
        if name.startswith("gguf-"):
            block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name[5:].upper()]]
            assert bpp == size / block, name
    expert = tiny_components["transformer"].high_noise_expert
    spec = spec_from_modules(tiny_components["transformer"])
    for scope in ("all", "ffn", "attn", "ffn+attn"):
        selected = sum(m.weight.numel() for m in select_layers(expert, scope).values())
        assert scoped_params(spec, scope) == selected, scope
    # Real A14B expert: bf16 28.6 GB, fp8 everywhere but the embedders/head 14.5 GB, FFN-only fp8 22.9 GB.
    assert expert_weight_bytes(A14B, "bf16") == A14B.expert_params * 2
    assert round(expert_weight_bytes(A14B, "fp8") / 1e9, 1) == 14.5
    assert round(expert_weight_bytes(A14B, "fp8", "ffn") / 1e9, 1) == 22.9


def test_precision_fit_table_and_cli(capsys):
    from diffusers_wan22.cli import main

    table = precision_fit_table(A14B)
    assert "1280x720x81 <= 24 GB" in table and "fp8 (ffn)" in table and "gguf-q4_k" in table
    assert main(["plan", "--precision_table", "--model", "i2v-A14B"]) == 0
    out = capsys.readouterr().out
    assert "i2v-A14B" in out and "int8-weight-only" in out
    assert main(["plan", "--precision", "fp8,bf16", "--scope", "ffn", "--size", "832*480"]) == 0
    assert "fp8/bf16 (ffn)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["plan", "--precision", "fp7"])
    assert e.value.code == 2
