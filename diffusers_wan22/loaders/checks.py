"""Checks that turn a broken or unsafe checkpoint into one clear error before weights are read or written.

Used by the official loaders (`loaders/official.py`, `loaders/official_models.py`) and by `wan22 convert`.
Every error names the file and says what is wrong with it; see docs/reliability.md for the list.

* `check_official_folder`: every file an official folder needs is there and well-formed (configs, safetensors
  headers, index vs shards, tokenizer, T5, VAE) — before the first tensor is read.
* `read_official_dit_config`: an official DiT `config.json`, checked field by field. Unknown fields are ignored with
  a warning, as diffusers' `ConfigMixin` does for `from_pretrained`; unsupported values of known fields are errors.
* `check_dit_shapes` / `check_tensors_fit_model`: the checkpoint's tensors against the model its config describes
  (built on the meta device), naming the shard of every missing, extra or mis-shaped tensor.
* `check_t5_state` / `check_vae_state`: a `.pth` state dict holds what the component needs (and the right VAE
  version). Reading files safely (headers, `weights_only` `.pth`) is `loaders/file_io.py`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Iterable, Mapping

from accelerate import init_empty_weights

from ..core.animate import ANIMATE_CLIP_FILE
from ..core.folders import read_json_object
from ..core.names import EXPERT_DIRS, T5_FILE, TOKENIZER_DIR, VAE_FILES, WAV2VEC_DIR
from ..core.official_keys import detect_vae_version
from ..core.variants import get_variant
from .file_io import load_pth_weights_only, safetensors_shards

logger = logging.getLogger(__name__)

# Arguments of the official `WanModel.__init__` (wan/modules/model.py) plus the bookkeeping keys of its config.json.
OFFICIAL_DIT_FIELDS = frozenset({
    "_class_name", "_diffusers_version", "model_type", "patch_size", "text_len", "in_dim", "dim", "ffn_dim",
    "freq_dim", "text_dim", "out_dim", "num_heads", "num_layers", "window_size", "qk_norm", "cross_attn_norm", "eps",
})
# Extra arguments of the official `WanModel_S2V`.
OFFICIAL_S2V_FIELDS = frozenset({
    "adain_mode", "add_last_motion", "audio_dim", "audio_inject_layers", "cond_dim", "enable_adain",
    "enable_framepack", "enable_motioner", "enable_tsm", "framepack_drop_mode", "motion_token_num",
    "num_audio_token", "trainable_token_pos_emb", "zero_init", "zero_timestep", "motioner_dim", "motion_frames",
})
# Extra arguments of the official `WanAnimateModel` (its config.json's `_class_name`).
OFFICIAL_ANIMATE_FIELDS = frozenset({"motion_encoder_dim", "use_context_parallel", "use_img_emb"})
REQUIRED_DIT_FIELDS = ("dim", "num_heads", "num_layers", "ffn_dim", "in_dim", "out_dim")
# Known fields whose other values would change the architecture in ways this package does not implement.
SUPPORTED_DIT_VALUES = {"patch_size": [1, 2, 2], "window_size": [-1, -1], "qk_norm": True, "cross_attn_norm": True}
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")  # either is enough to build the umt5 tokenizer
_IN_DIM_KIND = {16: "t2v-A14B", 36: "i2v-A14B", 48: "ti2v-5B"}


# ------------------------------------------------------------------------------------------------ small files
def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def read_official_dit_config(path: str | os.PathLike) -> dict:
    """The `config.json` of an official DiT folder, checked; returns it unchanged.

    Required: positive integers ``dim``, ``num_heads`` (dividing ``dim``), ``num_layers``, ``ffn_dim``, ``in_dim``,
    ``out_dim``. Known fields with values this package does not implement (``patch_size``, ``window_size``,
    ``qk_norm``, ``cross_attn_norm``) are errors. Unknown fields are ignored with a warning naming them, like
    diffusers does for a component's config.json, so a newer official config still loads.
    """
    path = Path(path)
    cfg = read_json_object(path)
    missing = [k for k in REQUIRED_DIT_FIELDS if k not in cfg]
    if missing:
        raise ValueError(f"{path}: required field(s) {missing} missing; an official Wan 2.2 DiT config.json has "
                         f"{list(REQUIRED_DIT_FIELDS)}.")
    for key in REQUIRED_DIT_FIELDS:
        if not _positive_int(cfg[key]):
            raise ValueError(f"{path}: {key}={cfg[key]!r} must be a positive integer.")
    if cfg["dim"] % cfg["num_heads"]:
        raise ValueError(f"{path}: dim={cfg['dim']} is not divisible by num_heads={cfg['num_heads']}.")
    if "freq_dim" in cfg and not (_positive_int(cfg["freq_dim"]) and cfg["freq_dim"] % 2 == 0):
        raise ValueError(f"{path}: freq_dim={cfg['freq_dim']!r} must be a positive even integer.")
    if "eps" in cfg and not (isinstance(cfg["eps"], (int, float)) and not isinstance(cfg["eps"], bool)
                             and 0 < cfg["eps"] < 1):
        raise ValueError(f"{path}: eps={cfg['eps']!r} must be a number in (0, 1).")
    for key, supported in SUPPORTED_DIT_VALUES.items():
        value = cfg.get(key, supported)
        if (list(value) if isinstance(value, (list, tuple)) else value) != supported:
            raise ValueError(f"{path}: {key}={value!r} is not supported (Wan 2.2 uses {supported!r}).")
    known = OFFICIAL_DIT_FIELDS | (OFFICIAL_S2V_FIELDS if cfg.get("model_type") == "s2v" else frozenset())
    known |= OFFICIAL_ANIMATE_FIELDS if cfg.get("_class_name") == "WanAnimateModel" else frozenset()
    unknown = sorted(k for k in cfg if k not in known)
    if unknown:
        logger.warning("%s: ignoring unknown config field(s) %s (not arguments of the official WanModel); "
                       "the model is built from the known fields and the tensor shapes.", path, unknown)
    return cfg


def check_tokenizer_folder(folder: str | os.PathLike) -> None:
    """The official `google/umt5-xxl/` tokenizer folder exists and holds a tokenizer file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Missing tokenizer folder {folder} (the official google/umt5-xxl tokenizer).")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        found = sorted(p.name for p in folder.iterdir())[:12]
        raise FileNotFoundError(f"Tokenizer folder {folder} has none of {list(TOKENIZER_FILES)}; found {found}.")


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"Missing {what}: {path}.")


# ------------------------------------------------------------------------------------------------ whole folder
def check_dit_folder(folder: Path, what: str) -> dict:
    """An official DiT folder: present, a valid config.json, complete shards consistent with their index.

    Returns the config."""
    if not folder.is_dir():
        raise FileNotFoundError(f"Missing {what} folder: {folder}.")
    cfg = read_official_dit_config(folder / "config.json")
    safetensors_shards(folder)
    return cfg


def check_official_folder(root: str | os.PathLike, variant: str) -> None:
    """Everything an official ``variant`` folder needs is present and well-formed, before any tensor is read.

    Checks the DiT folder(s) (`check_dit_folder`), the tokenizer folder, the T5 `.pth` (`check_t5_state`) and the
    VAE `.pth` of the variant's VAE version (`check_vae_state`). Raises FileNotFoundError / ValueError naming the
    file.
    """
    root = Path(root)
    defaults = get_variant(variant)
    if defaults.boundary_ratio is not None:
        high, low = (check_dit_folder(root / EXPERT_DIRS[k], f"{k}-noise expert") for k in ("high", "low"))
        differ = {k: (high[k], low[k]) for k in REQUIRED_DIT_FIELDS if high[k] != low[k]}
        if differ:
            raise ValueError(f"{root / EXPERT_DIRS['high'] / 'config.json'} and {root / EXPERT_DIRS['low']}/config.json "
                             f"describe different transformers ((high, low): {differ}); both experts must come from "
                             "the same checkpoint (e.g. not an i2v expert in a t2v folder).")
    else:
        check_dit_folder(root, "DiT")
    if variant == "s2v-14B":
        _require_file(root / WAV2VEC_DIR / "config.json", "wav2vec2 audio encoder config")
    if variant == "animate-14B":
        _require_file(root / ANIMATE_CLIP_FILE, "CLIP image encoder (open-clip XLM-RoBERTa ViT-H/14)")
    check_tokenizer_folder(root / TOKENIZER_DIR)
    # Memory-mapped, so only the pickled index is read; a file with pickled code is refused here, before minutes of
    # transformer loading, and a VAE of the wrong version is caught before it meets the transformer.
    _require_file(root / T5_FILE, "T5 text encoder (umt5-xxl)")
    check_t5_state(load_pth_weights_only(root / T5_FILE), root / T5_FILE)
    vae_path = root / VAE_FILES[defaults.vae_version]
    _require_file(vae_path, f"Wan {defaults.vae_version} VAE")
    check_vae_state(load_pth_weights_only(vae_path), vae_path, defaults.vae_version, variant)


# ------------------------------------------------------------------------------------------------ tensors vs model
def check_tensors_fit_model(model, tensors: Mapping[str, tuple[tuple[int, ...], str]], source: str,
                            tied: Iterable[str] = ()) -> None:
    """``tensors`` (model key → (shape, where it comes from)) are exactly what ``model`` (on meta) holds.

    ``where`` names the file (and the source key); ``source`` names the component for missing tensors.
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(tensors) - set(tied))
    if missing:
        raise ValueError(f"{source}: {len(missing)} tensor(s) missing, e.g. {missing[:3]} (incomplete or "
                         "mismatched checkpoint).")
    for key, (shape, where) in tensors.items():
        if key not in expected:
            raise ValueError(f"{where}: tensor {key!r} has no place in the model {source} describes.")
        if tuple(shape) != expected[key]:
            hint = ""
            if key.endswith("patch_embedding.weight") and len(shape) > 1 and shape[1] in _IN_DIM_KIND:
                hint = (f"; in_dim {shape[1]} is what {_IN_DIM_KIND[shape[1]]} transformers take, the config says "
                        f"in_dim {expected[key][1]}")
            raise ValueError(f"{where}: tensor {key!r} has shape {tuple(shape)}, the model expects "
                             f"{expected[key]} ({source}){hint}.")


def check_dit_shapes(model_cls, config: dict, files: Mapping[str, tuple[Path, tuple[int, ...], str]],
                     map_key: Callable[[str], str], config_path: str | os.PathLike) -> None:
    """An official DiT's tensors (official key → (file, shape, dtype), from `read_safetensors_folder`) fit the
    ``model_cls(**config)`` they will be loaded into (built on meta), before any tensor is read."""
    with init_empty_weights():
        model = model_cls(**config)
    mapped = {}
    for key, (path, shape, _) in files.items():
        try:
            mapped[map_key(key)] = (shape, f"{path} [{key}]")
        except KeyError as e:
            raise ValueError(f"{path}: {e.args[0]}.") from None
    check_tensors_fit_model(model, mapped, f"as configured by {config_path}")


# ------------------------------------------------------------------------------------------------ .pth contents
_T5_REQUIRED = ("token_embedding.weight", "norm.weight", "blocks.0.pos_embedding.embedding.weight",
                "blocks.0.attn.q.weight", "blocks.0.ffn.fc1.weight")
_VAE_REQUIRED = ("encoder.conv1.weight", "conv2.weight", "decoder.head.2.weight")


def _require_keys(state: Mapping, required: Iterable[str], path, what: str) -> None:
    missing = [k for k in required if k not in state]
    if missing:
        found = sorted(state)[:3]
        raise ValueError(f"{path}: not {what}: tensor(s) {missing} missing (the file holds {len(state)} tensors, "
                         f"e.g. {found}).")


def check_t5_state(state: Mapping, path) -> None:
    """``state`` (official key → tensor) looks like the official umt5-xxl encoder `.pth`."""
    _require_keys(state, _T5_REQUIRED, path, "an official umt5-xxl encoder state dict")


def check_vae_state(state: Mapping, path, version: str | None = None, variant: str | None = None) -> None:
    """``state`` looks like an official Wan VAE `.pth` (of ``version`` "2.1"/"2.2" when given)."""
    _require_keys(state, _VAE_REQUIRED, path, "an official Wan VAE state dict")
    found = detect_vae_version({k: tuple(v.shape) for k, v in state.items()})
    if version is not None and found != version:
        needed = f"{variant} needs" if variant else "expected"
        raise ValueError(f"{path}: holds a Wan {found} VAE; {needed} the Wan {version} VAE.")
