"""diffusers-wan22: the Wan 2.2 video models (T2V-A14B, I2V-A14B, TI2V-5B, S2V-14B) inside HuggingFace diffusers.

Everything the README, the examples and the docs use is importable from here. The import is lazy, as diffusers'
own: ``import diffusers_wan22`` loads no torch; a name is imported from its module on first use (so the torch-free
layer, e.g. `diffusers_wan22.core.memory_planner`, stays torch-free).

Our pipelines register themselves with diffusers when they are imported (``from diffusers_wan22 import
Wan22Pipeline``), after which ``DiffusionPipeline.from_pretrained(dir)`` loads folders saved by them. When diffusers
is already imported, ``import diffusers_wan22`` registers them right away.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it (relative to this package)
_EXPORTS: dict[str, str] = {
    # pipelines
    **dict.fromkeys(["Wan22Pipeline", "Wan22ImageToVideoPipeline", "Wan22SpeechToVideoPipeline", "Wan22BasePipeline",
                     "Wan22VideoPipeline", "Wan22AnimatePipeline", "Wan22AnimatePipelineOutput",
                     "Wan22PipelineOutput", "Wan22SpeechToVideoPipelineOutput", "load_pipeline",
                     "build_demo_pipeline", "PIPELINES"], "pipelines"),
    # models
    **dict.fromkeys(["WanMoETransformer3DModel", "WanS2VTransformer3DModel", "TurboWanMoETransformer3DModel",
                     "TurboWanTransformer3DModel"], "models"),
    **dict.fromkeys(["SLAAttnProcessor", "sparse_linear_attention"], "models.attention_sla"),
    # schedulers
    **dict.fromkeys(["set_official_timesteps", "official_scheduler", "official_unshifted_sigmas", "shift_sigmas",
                     "solver_family"], "schedulers.official"),
    **dict.fromkeys(["plan_experts", "expert_split_unshifted_sigmas"], "schedulers.experts"),
    **dict.fromkeys(["RCMScheduler"], "schedulers.scheduling_rcm"),
    # loaders
    **dict.fromkeys(["load_official_components", "load_official_text_stack"], "loaders.official"),
    **dict.fromkeys(["detect_official_variant", "detect_saved_task"], "core.folders"),
    **dict.fromkeys(["load_official_transformer", "load_official_t5", "load_official_vae", "load_official_tokenizer",
                     "load_official_audio_stack"], "loaders.official_models"),
    **dict.fromkeys(["load_official_animate_components", "load_relighting_lora"], "loaders.animate"),
    **dict.fromkeys(["convert_checkpoint", "ConversionReport"], "loaders.conversion"),
    **dict.fromkeys(["describe_folder"], "loaders.folder_info"),
    **dict.fromkeys(["SafetensorsExpertSource", "sources_from_folder", "official_expert_sources"],
                    "loaders.expert_sources"),
    **dict.fromkeys(["build_tiny_components"], "loaders.tiny"),
    **dict.fromkeys(["load_turbo_transformer", "load_turbo_expert", "load_turbo_text_encoder", "load_turbo_vae",
                     "is_turbo_folder"], "loaders.turbo"),
    **dict.fromkeys(["Wan22LoraLoaderMixin"], "loaders.lora"),
    # hooks and quantizers
    **dict.fromkeys(["LazyExperts", "CallableExpertSource", "is_materialised", "release_to_meta"],
                    "hooks.lazy_experts"),
    **dict.fromkeys(["apply_precision", "quantization_state", "parameter_bytes", "logical_numel", "precision_report",
                     "QuantizationUnavailableError"], "hooks.precision"),
    **dict.fromkeys(["load_gguf_expert", "gguf_tensor_shapes", "gguf_quant_types"], "quantizers.gguf"),
    **dict.fromkeys(["W8A8Linear"], "quantizers.w8a8"),
    # utils
    **dict.fromkeys(["save_video"], "utils.video"),
    **dict.fromkeys(["load_audio", "SAMPLING_RATE"], "utils.audio"),
    **dict.fromkeys(["init_distributed", "is_main_process"], "utils.distributed"),
    **dict.fromkeys(["spec_from_pipeline", "spec_from_config", "spec_from_modules"], "utils.memory_specs"),
    # the command line's flags for scripts (torch-free)
    **dict.fromkeys(["parse_example_args"], "commands.examples"),
    **dict.fromkeys(["build_parser"], "commands.parser"),
    **dict.fromkeys(["CliError"], "commands.errors"),
    # torch-free core
    **dict.fromkeys(["VARIANTS", "VariantDefaults", "get_variant", "DEFAULT_NEGATIVE_PROMPT", "S2V_NEGATIVE_PROMPT"],
                    "core.variants"),
    **dict.fromkeys(["HIGH", "LOW", "EXPERTS", "MEMORY_MODES", "PRECISION_POLICIES", "PRECISION_SCOPES"],
                    "core.names"),
    **dict.fromkeys(["estimate_memory", "estimate_all", "best_mode", "plan_table", "precision_fit_table",
                     "MemoryEstimate", "ModelSpec", "POLICY_BYTES", "SPECS", "GB", "A14B", "I2V_A14B", "S2V_14B",
                     "ANIMATE_14B", "expert_weight_bytes", "scoped_params"], "core.memory_planner"),
}
# diffusers' loaders resolve a component's library (model_index.json: ["diffusers_wan22", "<Class>"]) and look for
# these base-class names in it to pick the loading method.
_LOADER_BASES = ("DiffusionPipeline", "ModelMixin", "SchedulerMixin", "ConfigMixin")

__all__ = sorted(_EXPORTS) + list(_LOADER_BASES)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name in _LOADER_BASES:
        value = getattr(importlib.import_module("diffusers"), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if "diffusers" in sys.modules:  # diffusers (and torch) are loaded already: register our pipelines with it now
    importlib.import_module(".pipelines", __name__)

if TYPE_CHECKING:  # for type checkers and IDEs only; at run time names resolve lazily through __getattr__
    from .pipelines import Wan22ImageToVideoPipeline, Wan22Pipeline, Wan22SpeechToVideoPipeline  # noqa: F401
