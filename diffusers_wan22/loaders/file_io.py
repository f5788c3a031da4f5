"""Reading checkpoint files safely: JSON objects, (sharded) safetensors headers, `.pth` state dicts.

Nothing here builds a model. `.pth` files are only ever read with ``torch.load(..., weights_only=True)`` (pickled
code is refused, never run) and memory-mapped; safetensors are opened header-first, so truncated or mismatched
shards are named before a tensor is read.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import torch
from safetensors import safe_open

from ..core.folders import read_json_object
from ..core.names import DIFFUSERS_INDEX


def shard_files(folder: str | os.PathLike, index_name: str = DIFFUSERS_INDEX
                ) -> tuple[list[Path], dict | None]:
    """The weight files of a (sharded) safetensors folder and its index's weight map (``None`` without an index).

    With an index, exactly the shards it lists (other ``*.safetensors`` beside them are not weights), each of which
    must exist; without one, every ``*.safetensors`` in the folder.
    """
    folder = Path(folder)
    index = folder / index_name
    if not index.exists():
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"No safetensors weights in {folder}.")
        return files, None
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"{index}: 'weight_map' must map tensor names to shard file names.")
    files = sorted({folder / name for name in weight_map.values()})
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{index} lists shard(s) {missing}, missing from {folder}.")
    if not files:
        raise FileNotFoundError(f"No safetensors weights in {folder}.")
    return files, weight_map


def safetensors_shards(folder: str | os.PathLike, index_name: str = DIFFUSERS_INDEX
                       ) -> dict[Path, list[str]]:
    """shard → tensor keys of a (sharded) safetensors folder, reading headers only.

    Every shard listed in the index must exist and be a complete safetensors file (truncation, a cut header or
    junk are caught here: safetensors checks that the header covers the file exactly), and every tensor the index
    places in a shard must be in it.
    """
    folder = Path(folder)
    index = folder / index_name
    files, weight_map = shard_files(folder, index_name)
    shards = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                shards[path] = list(f.keys())
        except Exception as e:  # noqa: BLE001 - SafetensorError is not an OSError/ValueError
            raise ValueError(f"{path}: not a complete safetensors file ({e}); it is truncated or corrupt, "
                             "download it again.") from None
    if weight_map is not None:
        for key, name in weight_map.items():
            if key not in shards[folder / name]:
                raise ValueError(f"{index} places tensor {key!r} in {name}, but that shard does not contain it "
                                 "(a shard from another checkpoint or an interrupted download?).")
    return shards



def torch_load_error(path: str | os.PathLike, exc: BaseException) -> Exception:
    """The error to raise when ``torch.load(path, weights_only=True)`` failed with ``exc``."""
    if isinstance(exc, FileNotFoundError):
        return FileNotFoundError(f"Missing {path}.")
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    if isinstance(exc, pickle.UnpicklingError):
        m = re.search(r"unsupported GLOBAL (\S+)|Unsupported global: GLOBAL (\S+)", text)
        what = f"a pickled reference to `{m[1] or m[2]}`" if m else "pickled Python objects"
        return ValueError(
            f"{path}: refused: the file contains {what}, not only tensors, and unpickling it could run arbitrary "
            "code. It was opened with torch.load(weights_only=True), so nothing in it ran. Official Wan 2.2 .pth "
            "files hold only tensors: download this one again from the official source."
        )
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    first = re.split(r"(?<=\.)\s", first)[0][:200]  # torch adds paragraphs of advice; keep the diagnosis
    return ValueError(f"{path}: not a readable PyTorch tensor file ({first}); it may be truncated or corrupt, "
                      "download it again.")


def load_pth_weights_only(path: str | os.PathLike) -> dict:
    """A `.pth` state dict, memory-mapped and with ``weights_only=True`` (pickled code is refused, never run)."""
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for bad or unsafe files
        raise torch_load_error(path, e) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a dict of tensors (a state dict), found {type(state).__name__}.")
    return state


# safetensors header dtype names -> torch dtypes (the converter writes headers with the inverse).
# `--dtype` / `DTYPE_NAMES` -> torch dtype (the command line, the web page and `wan22 convert`).
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


def read_safetensors_folder(folder: str | os.PathLike) -> dict[str, tuple[Path, tuple[int, ...], str]]:
    """key → (file, shape, dtype) for a (sharded) safetensors folder, without loading any tensor."""
    out = {}
    for path in shard_files(folder)[0]:
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    sl = f.get_slice(key)
                    out[key] = (path, tuple(sl.get_shape()), sl.get_dtype())
        except Exception as e:  # noqa: BLE001 - SafetensorError (e.g. a truncated file) is none of OSError/ValueError
            raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    return out
