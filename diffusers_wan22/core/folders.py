"""What a model folder is, from its file names and JSON files only (no torch): an official Wan 2.2 checkpoint of
some variant, or a diffusers pipeline folder. The command line uses this to refuse a wrong task before torch loads."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .animate import ANIMATE_DIT_CLASS
from .names import (
    EXPERT_DIRS,
    EXPERTS,
    HIGH,
    MODEL_INDEX,
    OFFICIAL_DIT_CHANNELS,
    TURBO_EXPERT_FILE,
    TURBO_QUANT_SUFFIX,
    WAV2VEC_DIR,
)

# model_index.json `_class_name` -> task, for saved pipelines whose class says it
PIPELINE_TASKS = {"Wan22ImageToVideoPipeline": "i2v-A14B", "Wan22SpeechToVideoPipeline": "s2v-14B",
                  "WanImageToVideoPipeline": "i2v-A14B", "Wan22AnimatePipeline": "animate-14B",
                  "WanAnimatePipeline": "animate-14B"}


def read_json_object(path: str | os.PathLike) -> dict:
    """A JSON file that must hold an object; errors name the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"Missing {path}.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}).") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, found {type(data).__name__}.")
    return data


def detect_official_variant(ckpt_dir: str | os.PathLike) -> str:
    """The official task name (``t2v-A14B``, ``i2v-A14B``, ``ti2v-5B``, ``s2v-14B``, ``animate-14B``) of an
    official folder.

    Decided from what is on disk: expert sub-folders and their ``in_dim`` (16 text, 36 image), a root DiT with
    ``model_type`` (``ti2v``/``s2v``) or the Animate DiT class. Raises a ValueError saying what was found when
    nothing matches.
    """
    root = Path(ckpt_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"Checkpoint folder {str(root)!r} does not exist.")
    high = root / EXPERT_DIRS[HIGH] / "config.json"
    if high.exists():
        in_dim = read_json_object(high).get("in_dim")
        kind = OFFICIAL_DIT_CHANNELS.get(in_dim)
        if kind in ("t2v", "i2v"):
            return f"{kind}-A14B"
        raise ValueError(f"{high}: in_dim={in_dim} is neither 16 (t2v-A14B) nor 36 (i2v-A14B).")
    root_cfg = root / "config.json"
    if root_cfg.exists():
        cfg = read_json_object(root_cfg)
        if cfg.get("_class_name") == ANIMATE_DIT_CLASS:
            return "animate-14B"
        if cfg.get("model_type") == "s2v" or (root / WAV2VEC_DIR).is_dir():
            return "s2v-14B"
        if cfg.get("model_type") == "ti2v" or cfg.get("in_dim") == 48:
            return "ti2v-5B"
        raise ValueError(f"{root_cfg}: model_type={cfg.get('model_type')!r}, in_dim={cfg.get('in_dim')} is not a "
                         "Wan 2.2 variant this package knows.")
    found = sorted(p.name for p in root.iterdir())[:12]
    raise ValueError(
        f"{str(root)!r} is not an official Wan 2.2 folder: expected 'high_noise_model/' + 'low_noise_model/' "
        f"(A14B) or a root 'config.json' (TI2V-5B / S2V-14B); found {found}."
    )


def detect_saved_task(folder: str | os.PathLike) -> str:
    """The task of a diffusers pipeline folder (ours or the stock Wan 2.2 layout), from its ``model_index.json``.

    Image-to-video classes say it; a text pipeline is T2V-A14B when it holds a mixture of experts (our MoE, or the
    stock ``transformer_2``), else TI2V-5B.
    """
    index = read_json_object(Path(folder) / MODEL_INDEX)
    found = PIPELINE_TASKS.get(index.get("_class_name"))
    if found is not None:
        return found
    moe = (index.get("transformer_2") or [None])[0] or "MoE" in str(index.get("transformer"))
    return "t2v-A14B" if moe else "ti2v-5B"


def turbo_file_name(expert: str, quantized: bool) -> str:
    """The published TurboWan2.2-I2V-A14B file name of an expert (``"high"`` / ``"low"``), plain or ``-quant``."""
    return TURBO_EXPERT_FILE.format(expert=expert, suffix=TURBO_QUANT_SUFFIX if quantized else "")


def turbo_folder_kinds(folder: str | os.PathLike) -> list[bool]:
    """Which complete TurboWan2.2-I2V-A14B expert pairs ``folder`` holds: ``[False]`` plain, ``[True]`` -quant
    (W8A8), ``[False, True]`` both, ``[]`` none (not a Turbo folder)."""
    root = Path(folder)
    return [q for q in (False, True) if all((root / turbo_file_name(e, q)).is_file() for e in EXPERTS)]
