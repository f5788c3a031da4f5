"""Broken and unsafe official checkpoints (issue 10).

Every case starts from a copy of the tiny official T2V-A14B fixture with one thing broken. The official loader
(`Wan22Pipeline.from_official`) and `wan22 convert` must both refuse it with an error that names the file and says
what is wrong, and `wan22 convert` must leave nothing at (or next to) the destination. A `.pth` carrying a pickle
payload must be refused without the payload ever running (a marker file it would write stays absent), and the same
file loaded unsafely does run it, so the payload is live.

A config.json with unknown fields loads, like diffusers' `ConfigMixin`: the unknown fields are ignored with a
warning naming them (known fields with values this package does not implement are errors).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import OFFICIAL
from diffusers_wan22 import Wan22Pipeline, load_official_t5, load_official_vae
from diffusers_wan22.cli import main as cli_main

FIXTURE = OFFICIAL / "t2v_a14b"
T5 = "models_t5_umt5-xxl-enc-bf16.pth"
VAE = "Wan2.1_VAE.pth"
HIGH, LOW = "high_noise_model", "low_noise_model"
SHARD1 = "diffusion_pytorch_model-00001-of-00002.safetensors"
SHARD2 = "diffusion_pytorch_model-00002-of-00002.safetensors"
INDEX = "diffusion_pytorch_model.safetensors.index.json"


@pytest.fixture
def folder(tmp_path) -> Path:
    """A fresh copy of the tiny official T2V-A14B folder (weights, configs, tokenizer; no goldens)."""
    dst = tmp_path / "Wan2.2-T2V-A14B"
    shutil.copytree(FIXTURE, dst, ignore=shutil.ignore_patterns("golden*", "extra_goldens*", "fixture.json"))
    return dst


def convert_must_fail(src: Path, capsys) -> str:
    """`wan22 convert SRC DST` (in-process `cli.main`): exit 2, one error line, nothing written. Returns stderr."""
    dst = src.parent / "converted"
    code = cli_main(["convert", str(src), str(dst)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("wan22: error: ") and err.count("\n") == 1, err
    assert not dst.exists()
    assert sorted(p.name for p in src.parent.iterdir()) == [src.name]  # no temporary sibling left either
    return err


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


# ------------------------------------------------------------------------------------------------ pickle payloads
class Payload:
    """Unpickling this calls ``func`` (exec / os.system) to write ``marker``: what a malicious checkpoint does."""

    def __init__(self, func: str, marker: Path):
        self.func, self.marker = func, str(marker)

    def __reduce__(self):
        if self.func == "exec":
            return exec, (f"open({self.marker!r}, 'w').write('payload ran')",)
        return os.system, (f"echo payload ran > '{self.marker}'",)


@pytest.mark.parametrize("func", ["exec", "os.system"])
@pytest.mark.parametrize("target", [T5, VAE])
def test_pth_with_a_pickle_payload_is_refused_and_never_runs(folder, capsys, target, func):
    marker = folder.parent / "PAYLOAD_RAN"
    path = folder / target
    state = torch.load(path, map_location="cpu", weights_only=True)  # the real tensors, plus the payload
    state["blocks.0.attn.q.weight_extra_state"] = Payload(func, marker)
    torch.save(state, path)
    name = "exec" if func == "exec" else "posix.system"
    message = rf"{re.escape(str(path))}: refused: the file contains a pickled reference to `{name}`.*nothing in it ran"

    with pytest.raises(ValueError, match=message):
        Wan22Pipeline.from_official(folder)
    with pytest.raises(ValueError, match=message):  # the component loaders, called directly, refuse it too
        (load_official_t5 if target == T5 else load_official_vae)(path)
    assert re.search(message, convert_must_fail(folder, capsys))
    assert not marker.exists(), "the pickle payload ran"

    # Control: the payload is live, so its absence above is meaningful.
    torch.load(path, map_location="cpu", weights_only=False)
    assert marker.read_text().strip() == "payload ran"


def test_pickle_payload_through_the_real_wan22_script(folder):
    """The installed `wan22 convert` script: one-line error, exit 2, no traceback, payload never ran, no output."""
    marker = folder.parent / "PAYLOAD_RAN"
    state = torch.load(folder / VAE, map_location="cpu", weights_only=True)
    state["payload"] = Payload("exec", marker)
    torch.save(state, folder / VAE)
    dst = folder.parent / "converted"
    res = subprocess.run(["wan22", "convert", str(folder), str(dst)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.startswith(f"wan22: error: {folder / VAE}: refused: ") and res.stderr.count("\n") == 1
    assert not marker.exists() and not dst.exists()


# ------------------------------------------------------------------------------------------------ broken folders
def _truncate(path: Path, keep: float | int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])


def _swap_in_i2v_shard(f: Path) -> None:
    shutil.copy(OFFICIAL / "i2v_a14b" / HIGH / SHARD2, f / HIGH / SHARD2)


def _grow_tensor(f: Path) -> None:
    tensors = load_file(f / LOW / SHARD2)
    tensors["blocks.1.ffn.0.weight"] = torch.zeros(tensors["blocks.1.ffn.0.weight"].shape[0] + 1,
                                                   tensors["blocks.1.ffn.0.weight"].shape[1])
    save_file(tensors, f / LOW / SHARD2)


def _drop_tensor(f: Path) -> None:  # gone from the shard and from the index: a consistent but incomplete expert
    tensors = load_file(f / LOW / SHARD2)
    tensors.pop("blocks.1.ffn.2.bias")
    save_file(tensors, f / LOW / SHARD2)
    index = json.loads((f / LOW / INDEX).read_text())
    index["weight_map"].pop("blocks.1.ffn.2.bias")
    (f / LOW / INDEX).write_text(json.dumps(index))


def _drop_t5_tensor(f: Path) -> None:
    state = torch.load(f / T5, weights_only=True)
    state.pop("blocks.1.ffn.fc2.weight")
    torch.save(state, f / T5)


# id -> (break the folder, file the error must name (relative), what the error must say, exception type)
BROKEN = {
    "truncated_shard": (lambda f: _truncate(f / HIGH / SHARD2, 0.5), f"{HIGH}/{SHARD2}",
                        "not a complete safetensors file .*file not fully covered.*truncated or corrupt", ValueError),
    "shard_cut_inside_header": (lambda f: _truncate(f / LOW / SHARD1, 5), f"{LOW}/{SHARD1}",
                                "not a complete safetensors file .*header too small", ValueError),
    "empty_shard": (lambda f: _truncate(f / LOW / SHARD2, 0), f"{LOW}/{SHARD2}", "not a complete safetensors file",
                    ValueError),
    "shard_missing_from_index": (lambda f: (f / LOW / SHARD1).unlink(), f"{LOW}/{INDEX}",
                                 f"lists shard\\(s\\) \\['{SHARD1}'\\], missing from", FileNotFoundError),
    "shard_swapped_with_another": (lambda f: shutil.copy(f / HIGH / SHARD2, f / HIGH / SHARD1), f"{HIGH}/{INDEX}",
                                   f"places tensor '.*' in {SHARD1}, but that shard does not contain it", ValueError),
    "i2v_shard_in_t2v_folder": (_swap_in_i2v_shard, f"{HIGH}/{SHARD2}",
                                r"tensor '.*patch_embedding.weight' has shape \(32, 36, 1, 2, 2\), the model expects "
                                r"\(32, 16, 1, 2, 2\).*in_dim 36 is what i2v-A14B transformers take", ValueError),
    "i2v_expert_in_t2v_folder": (lambda f: (shutil.rmtree(f / LOW), shutil.copytree(OFFICIAL / "i2v_a14b" / LOW,
                                                                                     f / LOW)),
                                 f"{LOW}/config.json", r"describe different transformers \(\(high, low\): "
                                 r"\{'in_dim': \(16, 36\)\}\)", ValueError),
    "tensor_with_wrong_shape": (_grow_tensor, f"{LOW}/{SHARD2}",
                                r"tensor '.*blocks.1.ffn.net.0.proj.weight' has shape \(65, 32\), the model expects "
                                r"\(64, 32\)", ValueError),
    "tensor_missing": (_drop_tensor, "", r"1 tensor\(s\) missing, e.g. \['.*blocks.1.ffn.net.2.bias'\]", ValueError),
    "missing_expert_folder": (lambda f: shutil.rmtree(f / LOW), LOW, "Missing low-noise expert folder",
                              FileNotFoundError),
    "missing_tokenizer_folder": (lambda f: shutil.rmtree(f / "google"), "google/umt5-xxl",
                                 "Missing tokenizer folder", FileNotFoundError),
    "empty_tokenizer_folder": (lambda f: [p.unlink() for p in (f / "google" / "umt5-xxl").iterdir()],
                               "google/umt5-xxl", r"has none of \['tokenizer.json', 'spiece.model'\]",
                               FileNotFoundError),
    "missing_vae": (lambda f: (f / VAE).unlink(), VAE, "Missing Wan 2.1 VAE", FileNotFoundError),
    "missing_t5": (lambda f: (f / T5).unlink(), T5, r"Missing T5 text encoder", FileNotFoundError),
    "truncated_t5": (lambda f: _truncate(f / T5, 0.5), T5, "not a readable PyTorch tensor file .*truncated or corrupt",
                     ValueError),
    "vae_file_under_the_t5_name": (lambda f: shutil.copy(f / VAE, f / T5), T5,
                                   r"not an official umt5-xxl encoder state dict: tensor\(s\) .* missing", ValueError),
    "t5_tensor_missing": (_drop_t5_tensor, T5, r"missing.*encoder.block.1.layer.1.DenseReluDense.wo.weight",
                          ValueError),
    "wan22_vae_in_an_a14b_folder": (lambda f: shutil.copy(OFFICIAL / "ti2v_5b" / "Wan2.2_VAE.pth", f / VAE), VAE,
                                    "holds a Wan 2.2 VAE; t2v-A14B needs the Wan 2.1 VAE", ValueError),
    "config_not_json": (lambda f: (f / LOW / "config.json").write_text("{'dim': 32,"), f"{LOW}/config.json",
                        "is not valid JSON", ValueError),
    "config_missing_field": (lambda f: _edit_json(f / HIGH / "config.json", num_heads=None), f"{HIGH}/config.json",
                             r"required field\(s\) \['num_heads'\] missing", ValueError),
    "config_bad_value": (lambda f: _edit_json(f / LOW / "config.json", dim="wide"), f"{LOW}/config.json",
                         "dim='wide' must be a positive integer", ValueError),
    "config_unsupported_value": (lambda f: _edit_json(f / HIGH / "config.json", window_size=[8, 8]),
                                 f"{HIGH}/config.json", r"window_size=\[8, 8\] is not supported", ValueError),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_folder_is_refused_by_name_and_nothing_is_written(folder, capsys, case):
    breaker, culprit, what, exc_type = BROKEN[case]
    breaker(folder)
    named = str(folder / culprit) if culprit else str(folder)
    with pytest.raises(exc_type) as info:
        Wan22Pipeline.from_official(folder)
    for message in (str(info.value), convert_must_fail(folder, capsys)):
        assert named in message and re.search(what, message), message


# ------------------------------------------------------------------------------------------------ unknown config fields
def test_unknown_config_fields_are_ignored_with_a_warning(folder, tmp_path, caplog):
    """Official config.json: loads (same weights), a warning names the file and the fields; `wan22 convert` works."""
    _edit_json(folder / HIGH / "config.json", future_option=True, notes="from a newer release")
    with caplog.at_level(logging.WARNING, logger="diffusers_wan22.loaders.checks"):
        pipe = Wan22Pipeline.from_official(folder)
    warnings = [r.getMessage() for r in caplog.records if "ignoring unknown config field" in r.getMessage()]
    assert warnings and all(str(folder / HIGH / "config.json") in w for w in warnings)
    assert "['future_option', 'notes']" in warnings[0]
    reference = Wan22Pipeline.from_official(FIXTURE).transformer.state_dict()
    ours = pipe.transformer.state_dict()
    assert ours.keys() == reference.keys() and all(torch.equal(ours[k], reference[k]) for k in reference)

    dst = tmp_path / "converted"
    assert cli_main(["convert", str(folder), str(dst)]) == 0
    converted = Wan22Pipeline.from_pretrained(dst)
    assert "future_option" not in converted.transformer.config
    assert torch.equal(converted.transformer.state_dict()["high_noise_expert.proj_out.weight"],
                       reference["high_noise_expert.proj_out.weight"])


def test_unknown_field_in_a_diffusers_component_config_loads_like_stock_diffusers(tiny_pipe, tmp_path, caplog):
    """A saved pipeline whose transformer/config.json has an extra field: diffusers' rule (warn, ignore) applies."""
    tiny_pipe.save_pretrained(tmp_path / "pipe")
    _edit_json(tmp_path / "pipe" / "transformer" / "config.json", future_option=3)
    diffusers_logger = logging.getLogger("diffusers")  # diffusers does not propagate to the root logger
    diffusers_logger.addHandler(caplog.handler)
    try:
        loaded = Wan22Pipeline.from_pretrained(tmp_path / "pipe")
    finally:
        diffusers_logger.removeHandler(caplog.handler)
    assert any("future_option" in r.getMessage() and "will be ignored" in r.getMessage() for r in caplog.records)
    for key, value in tiny_pipe.transformer.config.items():  # built exactly as before (diffusers keeps the extra
        if not key.startswith("_"):                          # field as a hidden config entry, unused)
            assert json.dumps(loaded.transformer.config[key]) == json.dumps(value), key
    ref = tiny_pipe.transformer.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in loaded.transformer.state_dict().items())
