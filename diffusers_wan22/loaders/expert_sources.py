"""Where lazy experts are read from: saved pipeline folders and official expert folders, read in place.

`SafetensorsExpertSource` reads one expert's tensors from a (sharded) safetensors folder one at a time (mmap-backed,
so a prefetch can warm the OS page cache first); `meta_moe_from_folder` / `meta_moe_from_official` build the MoE on
the ``meta`` device in the dtypes an eager load would give, for `hooks.lazy_experts.LazyExperts` to fill.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterator

import torch
from accelerate import init_empty_weights
from diffusers import WanTransformer3DModel
from safetensors import safe_open

from ..core.folders import read_json_object
from ..core.names import DIFFUSERS_WEIGHTS, EXPERT_ATTRS, EXPERT_DIRS, EXPERTS
from ..core.official_keys import dit_config_from_official, official_dit_key_to_diffusers
from ..hooks.lazy_experts import retype_meta_parameters
from ..hooks.precision import apply_stored_precision
from ..models.transformer_wan_moe import WanMoETransformer3DModel
from ..models.transformer_wan_turbo import TurboWanMoETransformer3DModel
from .file_io import SAFETENSORS_DTYPES, read_safetensors_folder

__all__ = ["SafetensorsExpertSource", "meta_moe_from_folder", "meta_moe_from_official", "official_expert_sources",
           "sources_from_folder"]


class SafetensorsExpertSource:
    """An expert stored in a diffusers model folder (single or sharded safetensors) under ``prefix``.

    ``SafetensorsExpertSource(folder / "transformer", "high_noise_expert.")`` reads the keys of our saved MoE;
    ``prefix=""`` reads a whole stock `WanTransformer3DModel` folder; ``key_map`` renames keys (e.g.
    `official_dit_key_to_diffusers` to read an official expert folder as is). Tensors are read one at a time
    (``safe_open``), so a read can stop and resume (partial prefetch).
    """

    def __init__(self, folder: str | os.PathLike, prefix: str = "", key_map: Callable[[str], str] | None = None):
        self.folder, self.prefix, self.key_map = Path(folder), prefix, key_map
        index = self.folder / f"{DIFFUSERS_WEIGHTS}.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
        elif (self.folder / DIFFUSERS_WEIGHTS).exists():
            with safe_open(self.folder / DIFFUSERS_WEIGHTS, framework="pt") as f:
                weight_map = {k: DIFFUSERS_WEIGHTS for k in f.keys()}
        else:
            raise FileNotFoundError(f"No {DIFFUSERS_WEIGHTS} (or its .index.json) in {self.folder}.")
        self.files: dict[str, list[str]] = {}  # file -> keys of this expert, in file order
        for key, file in weight_map.items():
            if key.startswith(prefix):
                self.files.setdefault(file, []).append(key)
        if not self.files:
            raise ValueError(f"No tensor named {prefix!r}* in {self.folder}.")

    def __repr__(self) -> str:
        return f"SafetensorsExpertSource({str(self.folder)!r}, {self.prefix!r})"

    def byte_ranges(self) -> list[tuple[Path, int, int]]:
        """(file, start, end) of this expert's tensor data, from the safetensors headers."""
        ranges = []
        for file, keys in self.files.items():
            path = self.folder / file
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(n))
            ranges += [(path, 8 + n + header[k]["data_offsets"][0], 8 + n + header[k]["data_offsets"][1])
                       for k in keys]
        return ranges

    def warm(self, limit: int | None = None, chunk: int = 64 << 20) -> int:
        """Read this expert's bytes into the OS page cache (not into the process: a 64 MB buffer is reused).

        `iter_tensors` maps the files (safetensors mmap), so the tensors' pages are only read when first used;
        after `warm` that first use is served from memory. Returns the bytes read (at most ``limit``).
        """
        done, buf = 0, bytearray(chunk)
        for path, start, end in self.byte_ranges():
            with open(path, "rb", buffering=0) as f:
                f.seek(start)
                while start < end and (limit is None or done < limit):
                    n = f.readinto(memoryview(buf)[: min(chunk, end - start)])
                    if not n:
                        break
                    start, done = start + n, done + n
        return done

    def iter_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        for file, keys in self.files.items():
            with safe_open(self.folder / file, framework="pt") as f:
                for key in keys:
                    name = key[len(self.prefix):]
                    yield (self.key_map(name) if self.key_map else name), f.get_tensor(key)


def sources_from_folder(folder: str | os.PathLike, experts: tuple[str, ...] | list[str] = EXPERTS
                        ) -> dict[str, SafetensorsExpertSource]:
    """Expert sources of a folder written by `Wan22Pipeline.save_pretrained` (the pipeline or its ``transformer/``),
    for the ``experts`` it holds (both, or the one of a model saved with one expert)."""
    folder = Path(folder)
    if (folder / "transformer").is_dir():
        folder = folder / "transformer"
    return {name: SafetensorsExpertSource(folder, f"{EXPERT_ATTRS[name]}.") for name in experts}


def has_plain_safetensors(folder: str | os.PathLike) -> bool:
    """True when a model folder holds ``diffusion_pytorch_model.safetensors`` (or its index) without a variant
    suffix: what `SafetensorsExpertSource` reads (not ``.bin`` or ``.fp16.`` files)."""
    folder = Path(folder)
    return (folder / DIFFUSERS_WEIGHTS).exists() or (folder / f"{DIFFUSERS_WEIGHTS}.index.json").exists()


def meta_moe_from_folder(folder: str | os.PathLike, torch_dtype: torch.dtype | None = None) -> WanMoETransformer3DModel:
    """A `WanMoETransformer3DModel` built from ``folder/config.json`` with every parameter on ``meta``.

    Parameter dtypes follow diffusers' loading rule, so a lazily read expert matches `from_pretrained`: floating
    parameters in ``torch_dtype``, except the ``_keep_in_fp32_modules`` which stay float32. Without ``torch_dtype``
    the dtypes of the checkpoint are kept (read from the safetensors header).
    """
    config = WanMoETransformer3DModel.load_config(folder)
    classes = {c.__name__: c for c in (WanMoETransformer3DModel, TurboWanMoETransformer3DModel)}
    if config.get("_class_name") not in (None, *classes):
        raise ValueError(f"{folder} holds a {config.get('_class_name')}, not a WanMoETransformer3DModel; lazy "
                         "experts need a folder written by Wan22Pipeline.save_pretrained.")
    cls = classes.get(config.get("_class_name"), WanMoETransformer3DModel)
    with init_empty_weights():
        model = cls.from_config(config)
    keep = tuple(cls._keep_in_fp32_modules or ())
    stored = _stored_dtypes(folder) if torch_dtype is None else {}
    retype_meta_parameters(model, lambda name, p: stored.get(name, p.dtype) if torch_dtype is None else (
        torch.float32 if any(m in name.split(".") for m in keep) else torch_dtype))
    if config.get("expert_precision"):  # saved per-expert precision: same dtypes and fp8 hooks as from_pretrained
        apply_stored_precision(model)
    return model.eval()


def _stored_dtypes(folder: str | os.PathLike) -> dict[str, torch.dtype]:
    dtypes = {}
    for attr in EXPERT_ATTRS.values():
        src = SafetensorsExpertSource(folder, f"{attr}.")
        for file, keys in src.files.items():
            with safe_open(Path(folder) / file, framework="pt", device="cpu") as f:
                for key in keys:
                    dtypes[key] = f.get_slice(key).get_dtype()
    return {k: SAFETENSORS_DTYPES.get(v, torch.float32) for k, v in dtypes.items()}


def official_expert_sources(ckpt_dir: str | os.PathLike) -> dict[str, SafetensorsExpertSource]:
    """Lazy-expert sources reading the official expert folders in place (keys renamed on the fly)."""
    root = Path(ckpt_dir)
    return {name: SafetensorsExpertSource(root / EXPERT_DIRS[name], key_map=official_dit_key_to_diffusers)
            for name in EXPERTS}


def meta_moe_from_official(ckpt_dir: str | os.PathLike, boundary_ratio: float,
                           torch_dtype: torch.dtype | None = None) -> WanMoETransformer3DModel:
    """The MoE of an official A14B folder with every parameter on ``meta``, in the dtypes eager loading gives
    (``torch_dtype``, or each stored tensor's dtype): what `enable_lazy_experts` fills in one expert at a time."""
    experts = []
    for name in EXPERTS:
        folder = Path(ckpt_dir) / EXPERT_DIRS[name]
        files = read_safetensors_folder(folder)
        config = dit_config_from_official(read_json_object(folder / "config.json"),
                                          {k: v[1] for k, v in files.items()})
        with init_empty_weights():
            expert = WanTransformer3DModel(**config)
        stored = {official_dit_key_to_diffusers(k): SAFETENSORS_DTYPES[v[2]] for k, v in files.items()}
        retype_meta_parameters(expert, lambda key, p: torch_dtype or stored.get(key, p.dtype))
        experts.append(expert.eval())
    return WanMoETransformer3DModel.from_experts(*experts, boundary_ratio=boundary_ratio)
