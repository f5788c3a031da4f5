"""Test support: write state dicts as GGUF files (Q8_0 / Q5_0 / Q4_0 through the ``gguf`` package, Q4_K with a
small encoder here), so the GGUF expert loader is tested on real files without downloading community checkpoints.
Used by tests/test_quantization.py and docs/make_quantization.py."""

from __future__ import annotations

import os
import re
from typing import Mapping

import gguf
import numpy as np
import torch


def _quantize_q4_k(rows: np.ndarray) -> np.ndarray:
    """Q4_K blocks (llama.cpp layout) of float32 ``rows`` (last dim a multiple of 256), with plain min/max scales.

    Per 256-value super-block: fp16 ``d`` and ``dmin``, eight 6-bit (scale, min) pairs packed into 12 bytes, and
    256 4-bit values; ``x ~= d * sc_j * q - dmin * m_j`` for sub-block ``j`` of 32. (llama.cpp searches the scales
    more carefully; this simple fit is enough to exercise the format.)
    """
    x = rows.astype(np.float32).reshape(-1, 8, 32)
    lo = np.minimum(x.min(axis=-1), 0.0)
    scale = (x.max(axis=-1) - lo) / 15.0
    mins = -lo
    d = (scale.max(axis=-1) / 63.0).astype(np.float16)
    dmin = (mins.max(axis=-1) / 63.0).astype(np.float16)
    d32, dmin32 = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d32 > 0, np.rint(scale / d32), 0).clip(0, 63).astype(np.uint8)
        mq = np.where(dmin32 > 0, np.rint(mins / dmin32), 0).clip(0, 63).astype(np.uint8)
        step = (d32 * sc)[..., None]
        q = np.where(step > 0, np.rint((x + (dmin32 * mq)[..., None]) / step), 0).clip(0, 15).astype(np.uint8)
    packed = np.empty((x.shape[0], 12), dtype=np.uint8)
    packed[:, 0:4] = (sc[:, :4] & 0x3F) | ((sc[:, 4:] >> 4) << 6)
    packed[:, 4:8] = (mq[:, :4] & 0x3F) | ((mq[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (sc[:, 4:] & 0x0F) | ((mq[:, 4:] & 0x0F) << 4)
    q = q.reshape(-1, 4, 2, 32)  # byte group g holds sub-block 2g (low nibble) and 2g+1 (high nibble)
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)
    blocks = np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), packed, qs], axis=1)
    return blocks.reshape(*rows.shape[:-1], rows.shape[-1] // 256 * 144)


_GGUF_KEEP = re.compile(r"(norm|modulation|scale_shift_table|patch_embedding|head\.head|proj_out)")


def write_gguf(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, quant_type: str = "Q8_0",
               min_numel: int = 1024) -> dict[str, str]:
    """Write a state dict (any key naming) to a GGUF file, quantizing the 2-D ``*.weight`` matrices.

    Like the community converters, a matrix is quantized when its last dim is a multiple of the type's block size
    and it has at least ``min_numel`` elements; norms, modulation tables, the patch embedding, the head and 1-D
    tensors stay F32. Returns ``{key: GGML type name}``. Types: ``Q8_0``, ``Q5_0``, ``Q4_0`` (via gguf-py) and
    ``Q4_K`` (`_quantize_q4_k`).
    """
    qtype = gguf.GGMLQuantizationType[quant_type]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    writer = gguf.GGUFWriter(str(path), "wan")
    types = {}
    for key, tensor in state_dict.items():
        array = tensor.detach().float().cpu().numpy()
        quantize = (array.ndim == 2 and key.endswith(".weight") and array.shape[-1] % block == 0
                    and array.size >= min_numel and not _GGUF_KEEP.search(key))
        if quantize:
            data = _quantize_q4_k(array) if quant_type == "Q4_K" else gguf.quants.quantize(array, qtype)
            writer.add_tensor(key, data, raw_dtype=qtype)
            types[key] = quant_type
        else:
            writer.add_tensor(key, array)
            types[key] = "F32"
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return types
