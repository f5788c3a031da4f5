"""Recognising Wan 2.2 checkpoint folders and loading official ones into diffusers components."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from diffusers import UniPCMultistepScheduler

from .configs import get_variant

T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
TOKENIZER_DIR = os.path.join("google", "umt5-xxl")
VAE_FILES = {"2.1": "Wan2.1_VAE.pth", "2.2": "Wan2.2_VAE.pth"}
WAV2VEC_DIR = "wav2vec2-large-xlsr-53-english"
EXPERT_DIRS = {"high": "high_noise_model", "low": "low_noise_model"}
OFFICIAL_DIT_CHANNELS = {16: "t2v", 36: "i2v", 48: "ti2v"}


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"Missing {path}.") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def detect_official_variant(ckpt_dir: str | os.PathLike) -> str:
    """The official task name (``t2v-A14B``, ``i2v-A14B``, ``ti2v-5B``, ``s2v-14B``) of an official folder.

    Decided from what is on disk: expert sub-folders and their ``in_dim`` (16 text, 36 image), a root DiT with
    ``model_type`` (``ti2v``/``s2v``). Raises a ValueError saying what was found when nothing matches.
    """
    root = Path(ckpt_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"Checkpoint folder {str(root)!r} does not exist.")
    high = root / EXPERT_DIRS["high"] / "config.json"
    if high.exists():
        in_dim = _read_json(high).get("in_dim")
        kind = OFFICIAL_DIT_CHANNELS.get(in_dim)
        if kind in ("t2v", "i2v"):
            return f"{kind}-A14B"
        raise ValueError(f"{high}: in_dim={in_dim} is neither 16 (t2v-A14B) nor 36 (i2v-A14B).")
    root_cfg = root / "config.json"
    if root_cfg.exists():
        cfg = _read_json(root_cfg)
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


def official_scheduler(variant: str) -> UniPCMultistepScheduler:
    """The official default sampler (UniPC, flow matching) with the variant's shift."""
    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
        flow_shift=float(get_variant(variant).sample_shift),
    )


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"Missing {what}: {path}.")
    return path


def load_official_text_stack(ckpt_dir: str | os.PathLike, torch_dtype: torch.dtype | None = None) -> dict:
    """Tokenizer and UMT5 text encoder from an official folder."""
    from .conversion.official import load_official_t5, load_official_tokenizer

    root = Path(ckpt_dir)
    return dict(
        tokenizer=load_official_tokenizer(_require(root / TOKENIZER_DIR, "tokenizer folder")),
        text_encoder=load_official_t5(_require(root / T5_FILE, "T5 encoder"), torch_dtype=torch_dtype),
    )


def official_expert_sources(ckpt_dir: str | os.PathLike) -> dict:
    """Lazy-expert sources reading the official expert folders in place (keys renamed on the fly)."""
    from .conversion.official import official_dit_key_to_diffusers
    from .offload import SafetensorsExpertSource

    root = Path(ckpt_dir)
    return {name: SafetensorsExpertSource(root / EXPERT_DIRS[name], key_map=official_dit_key_to_diffusers)
            for name in ("high", "low")}


def meta_moe_from_official(ckpt_dir: str | os.PathLike, boundary_ratio: float, torch_dtype: torch.dtype | None = None):
    """The MoE of an official A14B folder with every parameter on ``meta``, in the dtypes eager loading gives
    (``torch_dtype``, or each stored tensor's dtype): what `enable_lazy_experts` fills in one expert at a time."""
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    from .conversion.official import (
        SAFETENSORS_DTYPES, dit_config_from_official, official_dit_key_to_diffusers, read_safetensors_folder,
    )
    from .models.transformer_wan_moe import WanMoETransformer3DModel
    from .offload import retype_meta_parameters

    experts = []
    for name in ("high", "low"):
        folder = _require(Path(ckpt_dir) / EXPERT_DIRS[name], f"{name}-noise expert")
        files = read_safetensors_folder(folder)
        config = dit_config_from_official(_read_json(folder / "config.json"), {k: v[1] for k, v in files.items()})
        with init_empty_weights():
            expert = WanTransformer3DModel(**config)
        stored = {official_dit_key_to_diffusers(k): SAFETENSORS_DTYPES[v[2]] for k, v in files.items()}
        retype_meta_parameters(expert, lambda key, p: torch_dtype or stored.get(key, p.dtype))
        experts.append(expert.eval())
    return WanMoETransformer3DModel.from_experts(*experts, boundary_ratio=boundary_ratio)


def load_official_components(
    ckpt_dir: str | os.PathLike, torch_dtype: torch.dtype | None = None, variant: str | None = None,
    lazy_experts: bool = False,
) -> dict:
    """Every component of a `Wan22Pipeline` (or its image-to-video / speech-to-video sibling) from an official
    folder. ``lazy_experts=True`` builds the A14B experts on ``meta`` (see `meta_moe_from_official`)."""
    from .conversion.official import load_official_transformer, load_official_vae
    from .models.transformer_wan_moe import WanMoETransformer3DModel

    root = Path(ckpt_dir)
    variant = variant or detect_official_variant(root)
    defaults = get_variant(variant)
    from .checkpoint_checks import check_official_folder

    check_official_folder(root, variant)  # every file present and well-formed before the first tensor is read
    vae_path = _require(root / VAE_FILES[defaults.vae_version], f"VAE {defaults.vae_version}")
    if lazy_experts and defaults.boundary_ratio is None:
        raise ValueError(f"lazy_experts applies to the A14B mixtures of experts, not to {variant}.")
    from tqdm.auto import tqdm

    # Loading a 27B checkpoint takes minutes: say which component is being read.
    steps = ["transformer", "text encoder", "VAE"] + (["wav2vec2"] if variant == "s2v-14B" else [])
    with tqdm(total=len(steps), desc=f"loading {variant}", unit="component", disable=None) as bar:  # TTY only
        bar.set_postfix_str(steps[0])
        if lazy_experts:
            transformer = meta_moe_from_official(root, defaults.boundary_ratio, torch_dtype)
        elif defaults.boundary_ratio is not None:
            high, low = (
                load_official_transformer(_require(root / EXPERT_DIRS[k], f"{k}-noise expert"), torch_dtype)
                for k in ("high", "low")
            )
            transformer = WanMoETransformer3DModel.from_experts(high, low, boundary_ratio=defaults.boundary_ratio)
        else:
            transformer = load_official_transformer(root, torch_dtype=torch_dtype)
        components = dict(transformer=transformer, scheduler=official_scheduler(variant))
        for step in steps[1:]:
            bar.update()
            bar.set_postfix_str(step)
            if step == "text encoder":
                components.update(load_official_text_stack(root, torch_dtype))
            elif step == "VAE":
                components["vae"] = load_official_vae(vae_path, torch_dtype=torch_dtype)
            else:
                components.update(load_official_audio_stack(root))  # float32, as the official code runs it
        bar.update()
    return components


def load_official_audio_stack(ckpt_dir: str | os.PathLike, torch_dtype: torch.dtype | None = None) -> dict:
    """The wav2vec2 model (`Wav2Vec2ForCTC`, as the official code loads it) and its feature extractor.

    The official code runs wav2vec2 in float32 whatever the DiT's dtype; so do we unless ``torch_dtype`` is given
    explicitly for it here (`load_official_components` does not pass the pipeline's dtype on).
    """
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    folder = _require(Path(ckpt_dir) / WAV2VEC_DIR, "wav2vec2 audio encoder folder")
    return dict(
        audio_encoder=Wav2Vec2ForCTC.from_pretrained(str(folder), torch_dtype=torch_dtype or torch.float32).eval(),
        audio_processor=Wav2Vec2FeatureExtractor.from_pretrained(str(folder)),
    )


def load_pipeline(model: str | os.PathLike, torch_dtype: torch.dtype | None = None, pipeline_cls=None):
    """A Wan 2.2 pipeline from any source a user hands us.

    * ``"tiny"`` or ``"tiny:<variant>"``: the built-in random-weight demo pipeline (for docs, CI, smoke tests);
    * a folder with ``model_index.json``: a diffusers-format pipeline (``DiffusionPipeline.from_pretrained``);
    * an official checkpoint folder: ``<pipeline_cls>.from_official`` (default `Wan22Pipeline`).
    """
    from .pipelines.pipeline_wan22 import Wan22Pipeline

    pipeline_cls = pipeline_cls or Wan22Pipeline
    text = str(model)
    if text == "tiny" or text.startswith("tiny:"):
        from .demo import build_tiny_components

        variant = text.partition(":")[2] or "t2v-A14B"
        return pipeline_cls(**build_tiny_components(variant))
    path = Path(text)
    if not path.is_dir():
        raise FileNotFoundError(f"Model {text!r} is not a folder (download the checkpoint first) nor 'tiny'.")
    if (path / "model_index.json").exists():
        from diffusers import DiffusionPipeline

        return DiffusionPipeline.from_pretrained(path, torch_dtype=torch_dtype)
    return pipeline_cls.from_official(path, torch_dtype=torch_dtype)


HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "revision", "token", "proxies")


def resolve_pipeline_folder(name_or_path: str | os.PathLike, kwargs: dict) -> tuple[Path, dict]:
    """A local pipeline folder (downloading a Hub repo id if needed) and its ``model_index.json``.

    Hub options are popped from ``kwargs``; the rest is left for ``from_pretrained``.
    """
    path = Path(name_or_path)
    hub = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
    text = str(name_or_path)
    if not path.is_dir():
        if path.exists() or text.count("/") != 1 or text.startswith((".", "/", "~")):
            raise FileNotFoundError(f"{str(name_or_path)!r} is neither a pipeline folder nor a Hub repo id.")
        import huggingface_hub

        path = Path(huggingface_hub.snapshot_download(text, **hub))
    return path, _read_json(path / "model_index.json")


def _tensor_counts(files: list[Path]) -> tuple[int, set[str]]:
    """(parameter count, dtypes) of safetensors / `.pth` files, read from headers / memory maps only."""
    from safetensors import safe_open

    from .conversion.official import SAFETENSORS_DTYPES

    total, dtypes = 0, set()
    for path in files:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    sl = f.get_slice(key)
                    shape = sl.get_shape()
                    total += int(torch.Size(shape).numel())
                    dtypes.add(str(SAFETENSORS_DTYPES[sl.get_dtype()]).replace("torch.", ""))
        else:
            from .conversion.official import load_pth_state_dict

            for tensor in load_pth_state_dict(path).values():
                total += tensor.numel()
                dtypes.add(str(tensor.dtype).replace("torch.", ""))
    return total, dtypes


def _dit_files(folder: Path) -> list[Path]:
    """The DiT weight files of an official folder (its index when sharded: other safetensors may sit beside it)."""
    from .checkpoint_checks import shard_files

    return shard_files(folder)[0]


def describe_folder(folder: str | os.PathLike) -> list[tuple[str, int, set[str]]]:
    """(component, parameter count, stored dtypes) for every weight-bearing part of an official or saved folder,
    without loading any model."""
    root = Path(folder)
    if (root / "model_index.json").exists():
        parts = [(d.name, sorted(d.glob("*.safetensors"))) for d in sorted(root.iterdir()) if d.is_dir()]
    else:
        variant = detect_official_variant(root)
        dits = ([(f"transformer ({EXPERT_DIRS[k]})", _dit_files(root / EXPERT_DIRS[k]))
                 for k in ("high", "low")] if get_variant(variant).boundary_ratio is not None
                else [("transformer", _dit_files(root))])
        parts = dits + [("text_encoder", [root / T5_FILE]),
                        ("vae", [root / VAE_FILES[get_variant(variant).vae_version]])]
        if variant == "s2v-14B":
            parts.append(("audio_encoder", sorted((root / WAV2VEC_DIR).glob("*.safetensors"))))
    rows = []
    for name, files in parts:
        files = [f for f in files if f.exists()]
        if files:
            rows.append((name, *_tensor_counts(files)))
    return rows
