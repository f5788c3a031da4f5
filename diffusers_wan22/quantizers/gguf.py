"""GGUF experts: community per-expert GGUF files read through diffusers' GGUF quantizer.

Community files (``..._high_noise_Q8_0.gguf``, ``..._low_noise_Q4_K_M.gguf``) use the official key naming, others
diffusers' naming; both go through `WanTransformer3DModel.from_single_file(path, config=...,
quantization_config=GGUFQuantizationConfig(...))`, which keeps quantized ``nn.Linear`` weights in their GGUF blocks.
`WanMoETransformer3DModel.from_gguf` / ``load_gguf_expert`` build on `load_gguf_expert` here.
"""

from __future__ import annotations

import inspect
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from diffusers import GGUFQuantizationConfig, WanTransformer3DModel

from ..core.official_keys import dit_config_from_official
from ..hooks.precision import QuantizationUnavailableError, resolve_compute_dtype


def _gguf():
    # `gguf` is an optional dependency (the [quant] extra): imported only when a GGUF file is used.
    try:
        import gguf
    except ImportError:
        raise QuantizationUnavailableError(
            "GGUF experts need the `gguf` package: pip install 'diffusers-wan22[quant]' (gguf >= 0.10)."
        ) from None
    return gguf


def _expert_config_dir(config: Any, tmp: str, gguf_path: str | os.PathLike | None = None) -> str:
    """Write a `WanTransformer3DModel` config.json for `from_single_file` into ``tmp`` and return ``tmp``.

    ``config`` may be a `WanTransformer3DModel` / `WanMoETransformer3DModel` (or its config), a dict of
    `WanTransformer3DModel` arguments, or a folder holding a diffusers ``config.json`` (an expert's, the MoE's
    ``transformer/``) or an official ``config.json`` (``dim``, ``num_heads``, ...; then the GGUF shapes fill in the
    text dim).
    """
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        path = path / "config.json" if path.is_dir() else path
        if not path.exists():
            raise FileNotFoundError(f"No config.json at {path}.")
        config = json.loads(path.read_text())
        if "num_heads" in config and "num_attention_heads" not in config:  # official WanModel config
            if gguf_path is None:
                raise ValueError("An official config.json needs the GGUF file to read the tensor shapes from.")
            config = dit_config_from_official(config, gguf_tensor_shapes(gguf_path))
    elif hasattr(config, "config") and not isinstance(config, Mapping):
        config = config.config
    accepted = set(inspect.signature(WanTransformer3DModel.__init__).parameters) - {"self"}
    kwargs = {k: v for k, v in dict(config).items() if k in accepted}
    kwargs["_class_name"] = WanTransformer3DModel.__name__
    Path(tmp, "config.json").write_text(json.dumps(kwargs, indent=1))
    return tmp


def gguf_tensor_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Logical (PyTorch-order) shape of every tensor in a GGUF file, without reading the data."""
    reader = _gguf().GGUFReader(str(path))
    return {t.name: tuple(int(d) for d in reversed(t.shape.tolist())) for t in reader.tensors}


def gguf_quant_types(path: str | os.PathLike) -> dict[str, int]:
    """How many tensors of each GGML type (``"Q8_0"``, ``"F32"``, ...) a GGUF file holds."""
    counts: dict[str, int] = {}
    for t in _gguf().GGUFReader(str(path)).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return counts


def load_gguf_expert(path: str | os.PathLike, config: Any, compute_dtype: torch.dtype = torch.bfloat16):
    """One `WanTransformer3DModel` expert from a GGUF file, through diffusers' GGUF quantizer.

    Quantized ``nn.Linear`` weights stay in their GGUF blocks (`GGUFLinear`, dequantized per forward into
    ``compute_dtype``); F32/F16 tensors are loaded in ``compute_dtype`` except the ``_keep_in_fp32_modules``.
    Both the official key naming (community files) and diffusers' naming are accepted. ``config``: see
    `_expert_config_dir` (community GGUF files carry no config; diffusers would download one from the Hub).
    """
    _gguf()
    compute_dtype = resolve_compute_dtype(compute_dtype)
    with tempfile.TemporaryDirectory(prefix="wan22_gguf_cfg_") as tmp:
        expert = WanTransformer3DModel.from_single_file(
            str(path), config=_expert_config_dir(config, tmp, path), torch_dtype=compute_dtype,
            quantization_config=GGUFQuantizationConfig(compute_dtype=compute_dtype), local_files_only=True,
        )
    quantized = sum(1 for p in expert.parameters() if hasattr(p, "quant_type"))
    if quantized == 0:
        raise ValueError(f"{path}: no quantized tensor was loaded into a GGUFLinear (only F32/F16 tensors, or keys "
                         "that do not match the Wan transformer).")
    expert._wan22_precision = {"policy": "gguf", "scope": None, "compute_dtype": str(compute_dtype)[6:],
                               "layers": quantized, "file": os.fspath(path), "types": gguf_quant_types(path)}
    return expert.eval()
