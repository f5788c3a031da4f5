"""`WanMoETransformer3DModel`: the Wan 2.2 A14B mixture of two denoising experts as one diffusers model.

Each expert is a stock diffusers `WanTransformer3DModel`; this container only routes a step to one of them by
its timestep (the official rule: the high-noise expert while ``t >= boundary_ratio * num_train_timesteps``,
the low-noise expert after). Keeping both in one `ModelMixin` makes the pair one pipeline component that saves,
loads (sharded safetensors), offloads and takes LoRA like any diffusers model.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import ModelMixin, WanTransformer3DModel  # noqa: F401  (ModelMixin must be a module-level name)
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import AttentionMixin
from diffusers.models.cache_utils import CacheMixin

from .._compat import peft_adapters_loaded
from ..core.names import EXPERT_ATTRS, HIGH, LOW
from ..core.variants import boundary_timestep
from ..hooks.precision import (
    apply_stored_precision,
    check_serializable,
    precision_report,
    quantization_state,
    set_expert_precision,
)
from ..quantizers.gguf import load_gguf_expert


class WanMoETransformer3DModel(ModelMixin, ConfigMixin, PeftAdapterMixin, CacheMixin, AttentionMixin):
    r"""Two `WanTransformer3DModel` experts routed by timestep (Wan 2.2 T2V-A14B / I2V-A14B).

    The constructor arguments are the experts' shared `WanTransformer3DModel` configuration plus the routing
    parameters, so `from_pretrained` can build both experts before loading their weights.

    Args:
        boundary_ratio (`float`): switch point as a fraction of `num_train_timesteps` (T2V 0.875, I2V 0.900).
        num_train_timesteps (`int`): the training timestep count the boundary is scaled by (1000).
        expert_precision (`dict`, *optional*): per-expert precision records written by `set_expert_precision`
            (``{"high": {"policy": "fp8", "scope": "ffn", ...}, "low": None}``); `from_pretrained` re-applies them.
        Other arguments: see `diffusers.WanTransformer3DModel`.
    """

    _supports_gradient_checkpointing = True
    _skip_layerwise_casting_patterns = WanTransformer3DModel._skip_layerwise_casting_patterns
    _no_split_modules = WanTransformer3DModel._no_split_modules
    _keep_in_fp32_modules = WanTransformer3DModel._keep_in_fp32_modules
    _keys_to_ignore_on_load_unexpected = WanTransformer3DModel._keys_to_ignore_on_load_unexpected
    _repeated_blocks = WanTransformer3DModel._repeated_blocks
    # Group offloading treats each expert as its own set of blocks, so at most one expert is onloaded.
    _group_offload_block_modules = list(EXPERT_ATTRS.values())

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, ...] = (1, 2, 2),
        num_attention_heads: int = 40,
        attention_head_dim: int = 128,
        in_channels: int = 16,
        out_channels: int = 16,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 13824,
        num_layers: int = 40,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
        image_dim: int | None = None,
        added_kv_proj_dim: int | None = None,
        rope_max_seq_len: int = 1024,
        pos_embed_seq_len: int | None = None,
        boundary_ratio: float = 0.875,
        num_train_timesteps: int = 1000,
        expert_precision: dict | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= boundary_ratio <= 1.0:
            raise ValueError(f"`boundary_ratio` must be in [0, 1], got {boundary_ratio}.")
        expert_kwargs = dict(
            patch_size=patch_size, num_attention_heads=num_attention_heads, attention_head_dim=attention_head_dim,
            in_channels=in_channels, out_channels=out_channels, text_dim=text_dim, freq_dim=freq_dim,
            ffn_dim=ffn_dim, num_layers=num_layers, cross_attn_norm=cross_attn_norm, qk_norm=qk_norm, eps=eps,
            image_dim=image_dim, added_kv_proj_dim=added_kv_proj_dim, rope_max_seq_len=rope_max_seq_len,
            pos_embed_seq_len=pos_embed_seq_len,
        )
        self.high_noise_expert = WanTransformer3DModel(**expert_kwargs)
        self.low_noise_expert = WanTransformer3DModel(**expert_kwargs)
        if expert_precision:  # saved per-expert precision: build the experts in their stored dtypes (+ fp8 hooks)
            apply_stored_precision(self, restorable_only=True)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_experts(
        cls,
        high_noise_expert: WanTransformer3DModel | None,
        low_noise_expert: WanTransformer3DModel | None,
        boundary_ratio: float = 0.875,
        num_train_timesteps: int = 1000,
    ) -> "WanMoETransformer3DModel":
        """Wrap two existing experts (no weights are copied or allocated).

        One expert may be ``None`` (partial loading): the pipeline then runs any schedule that stays on the
        present expert and refuses, before the first step, a schedule that would need the missing one.
        """
        if high_noise_expert is None and low_noise_expert is None:
            raise ValueError("At least one expert is needed.")
        high_cfg = _public_config(high_noise_expert or low_noise_expert)
        low_cfg = _public_config(low_noise_expert or high_noise_expert)
        if high_cfg != low_cfg:
            diff = {k: (high_cfg.get(k), low_cfg.get(k)) for k in high_cfg.keys() | low_cfg.keys()
                    if high_cfg.get(k) != low_cfg.get(k)}
            raise ValueError(f"The two experts must share one configuration; they differ in (high, low): {diff}.")
        with init_empty_weights():  # the placeholder experts built here are replaced right away
            model = cls(**high_cfg, boundary_ratio=boundary_ratio, num_train_timesteps=num_train_timesteps)
        model.high_noise_expert = high_noise_expert
        model.low_noise_expert = low_noise_expert
        records = {name: getattr(e, "_wan22_precision", None) for name, e in
                   ((HIGH, high_noise_expert), (LOW, low_noise_expert)) if e is not None}
        if any(records.values()):  # experts quantized before wrapping keep their record
            model.register_to_config(expert_precision=records)
        return model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "WanMoETransformer3DModel":
        """`ModelMixin.from_pretrained` that keeps the saved per-expert precision (``expert_precision``).

        The experts are built in their stored dtypes with their fp8 hooks (see `__init__`), so the saved fp8 / bf16
        tensors load without a full-precision copy; a ``torch_dtype`` cast is undone afterwards.
        """
        model = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if model.config.get("expert_precision"):
            apply_stored_precision(model)
        return model

    def save_pretrained(self, save_directory, is_main_process: bool = True, save_function=None,
                        safe_serialization: bool = True, variant: str | None = None,
                        max_shard_size: int | str = "10GB", push_to_hub: bool = False, use_flashpack: bool = False,
                        **kwargs) -> None:
        """`ModelMixin.save_pretrained` (same arguments, listed so that a pipeline's `save_pretrained` passes
        ``variant`` / ``safe_serialization`` / ``max_shard_size`` on); refuses experts whose weights diffusers cannot
        write (torchao, GGUF) before anything is written."""
        check_serializable(self)
        super().save_pretrained(save_directory, is_main_process=is_main_process, save_function=save_function,
                                safe_serialization=safe_serialization, variant=variant, max_shard_size=max_shard_size,
                                push_to_hub=push_to_hub, use_flashpack=use_flashpack, **kwargs)

    @classmethod
    def from_gguf(cls, high, low, config, compute_dtype: torch.dtype = torch.bfloat16,
                  boundary_ratio: float = 0.875) -> "WanMoETransformer3DModel":
        """Both experts from per-expert GGUF files (either may be ``None``: partial loading), through diffusers' GGUF
        quantizer (`diffusers_wan22.quantizers.gguf.load_gguf_expert`). ``config``: the experts' configuration (a
        model, a config dict, or a folder holding a diffusers or official ``config.json``)."""
        experts = {name: load_gguf_expert(path, config, compute_dtype) if path is not None else None
                   for name, path in ((HIGH, high), (LOW, low))}
        # `from_experts` records each expert's precision (policy "gguf") in the config
        return cls.from_experts(experts[HIGH], experts[LOW], boundary_ratio=boundary_ratio)

    # ------------------------------------------------------------------ precision
    def set_expert_precision(self, high: str | None = None, low: str | None = None, scope: str = "all",
                             compute_dtype: torch.dtype | str | None = None) -> dict:
        """Per-expert precision policy (``"bf16"``, ``"fp8"``, ``"int8-weight-only"``, ...; ``scope`` ``"all"``,
        ``"ffn"``, ``"attn"``, ``"ffn+attn"``). See `diffusers_wan22.hooks.precision`."""
        return set_expert_precision(self, high=high, low=low, scope=scope, compute_dtype=compute_dtype)

    def load_gguf_expert(self, name: str, path, compute_dtype: torch.dtype | None = None) -> WanTransformer3DModel:
        """Replace expert ``name`` with a GGUF file (same config as the expert it replaces).

        Do this before enabling offload / lazy experts: hooks on the replaced expert are not carried over.
        """
        current = self.get_expert(name)
        reference = current if current is not None else self.experts_named()[0]
        dtype = compute_dtype or (current.dtype if current is not None else torch.bfloat16)
        expert = load_gguf_expert(path, reference, dtype)
        setattr(self, EXPERT_ATTRS[name], expert)
        records = dict(self.config.get("expert_precision") or {})
        records[name] = expert._wan22_precision
        self.register_to_config(expert_precision=records)
        return expert

    def precision_report(self) -> dict:
        """Per expert: precision record, parameter bytes as stored, parameter count, compute dtype."""
        return precision_report(self)

    @property
    def input_dtype(self) -> torch.dtype:
        """The widest compute dtype of the loaded experts: what the pipeline feeds in (each expert casts down)."""
        dtypes = {e.dtype for e in self.experts_named()}
        return dtypes.pop() if len(dtypes) == 1 else torch.float32

    # ------------------------------------------------------------------ routing
    @property
    def boundary_timestep(self) -> float:
        """Timestep at and above which the high-noise expert runs."""
        return boundary_timestep(self.config.boundary_ratio, self.config.num_train_timesteps)

    def expert_for_timestep(self, timestep: float | int) -> str:
        """``"high"`` or ``"low"``: the expert the official rule picks for ``timestep``."""
        return HIGH if float(timestep) >= self.boundary_timestep else LOW

    def get_expert(self, name: str) -> WanTransformer3DModel | None:
        """The expert module called ``name`` (``"high"`` or ``"low"``); ``None`` if it was not loaded."""
        if name not in EXPERT_ATTRS:
            raise ValueError(f"Unknown expert {name!r}; expected 'high' or 'low'.")
        return getattr(self, EXPERT_ATTRS[name])

    @property
    def loaded_experts(self) -> list[str]:
        """Names of the experts present (both, unless built with `from_experts(..., None)`)."""
        return [name for name in EXPERT_ATTRS if self.get_expert(name) is not None]

    def _expert_for_batch(self, timestep: torch.Tensor) -> str:
        # Only used when the caller did not decide the expert up front; this reads the timesteps on the host.
        is_high = (timestep.detach().float() >= self.boundary_timestep).flatten().cpu()
        if bool(is_high.all()):
            return HIGH
        if not bool(is_high.any()):
            return LOW
        raise ValueError(
            f"The batch's timesteps {timestep.flatten().tolist()} fall on both sides of the expert boundary "
            f"{self.boundary_timestep:g}; run the high-noise (t >= boundary) and low-noise samples in separate calls."
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor | None = None,
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        expert: str | None = None,
    ):
        """Run the expert that owns ``timestep`` (same arguments and output as `WanTransformer3DModel.forward`).

        Pass ``expert="high"``/``"low"`` when it is already known (pipelines plan it before the loop), which skips
        reading ``timestep`` on the host. For per-token timesteps, the largest one decides.
        """
        if expert is None:
            t = timestep.amax(dim=-1) if timestep.ndim > 1 else timestep
            expert = self._expert_for_batch(t)
        model = self.get_expert(expert)
        if model is None:
            raise ValueError(f"The {expert}-noise expert is needed for timestep {timestep.flatten().tolist()} but "
                             "was not loaded.")
        dtype = model.dtype  # experts may compute in different dtypes (per-expert precision)
        if hidden_states.dtype != dtype:
            hidden_states = hidden_states.to(dtype)
        if encoder_hidden_states.dtype != dtype:
            encoder_hidden_states = encoder_hidden_states.to(dtype)
        if encoder_hidden_states_image is not None and encoder_hidden_states_image.dtype != dtype:
            encoder_hidden_states_image = encoder_hidden_states_image.to(dtype)
        return model(
            hidden_states=hidden_states,
            timestep=timestep,
            encoder_hidden_states=encoder_hidden_states,
            encoder_hidden_states_image=encoder_hidden_states_image,
            return_dict=return_dict,
            attention_kwargs=attention_kwargs,
        )


    # ------------------------------------------------------------------ per-expert adapters, caches, backends
    def experts_named(self, expert: str = "both") -> list[WanTransformer3DModel]:
        """The experts selected by ``expert`` (``"high"``, ``"low"`` or ``"both"``)."""
        names = list(EXPERT_ATTRS) if expert == "both" else [expert]
        return [e for e in (self.get_expert(n) for n in names) if e is not None]

    @property
    def peft_config(self) -> dict:
        """Adapters of both experts by name (what diffusers' pipeline LoRA helpers look up)."""
        merged = {}
        for e in self.experts_named():
            merged.update(getattr(e, "peft_config", {}) or {})
        return merged

    def _experts_with_adapters(self, expert: str = "both") -> list[WanTransformer3DModel]:
        experts = [e for e in self.experts_named(expert) if peft_adapters_loaded(e)]
        if not experts:
            raise ValueError(f"No LoRA adapter is loaded in the {expert!r} expert(s).")
        return experts

    def load_lora_adapter(self, pretrained_model_name_or_path_or_dict, expert: str = "both", **kwargs) -> None:
        """`PeftAdapterMixin.load_lora_adapter` into one expert or both (keys are relative to an expert)."""
        state_dict = pretrained_model_name_or_path_or_dict
        quantized = {n: s for n in ((HIGH, LOW) if expert == "both" else (expert,))
                     if self.get_expert(n) is not None and (s := quantization_state(self.get_expert(n)))}
        if quantized:  # peft would create the adapter weights in the storage dtype (fp8 / int8 / GGUF blocks)
            raise ValueError(f"Load LoRA adapters before `set_expert_precision` / GGUF loading: expert(s) "
                             f"{quantized} are already quantized.")
        for e in self.experts_named(expert):
            e.load_lora_adapter(dict(state_dict) if isinstance(state_dict, dict) else state_dict, **kwargs)

    def set_adapters(self, adapter_names, weights=None, expert: str = "both") -> None:
        """Activate adapters with strengths on the selected expert(s); each expert only sees its own adapters."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        weights = weights if isinstance(weights, list) else [weights] * len(names)
        missing = set(names) - set().union(*(e.peft_config for e in self._experts_with_adapters(expert)))
        if missing:
            raise ValueError(f"Adapter(s) {sorted(missing)} are not loaded in the {expert!r} expert(s).")
        for e in self._experts_with_adapters(expert):
            own = [(n, w) for n, w in zip(names, weights) if n in e.peft_config]
            if own:
                e.set_adapters([n for n, _ in own], [1.0 if w is None else w for _, w in own])

    def fuse_lora(self, lora_scale: float = 1.0, safe_fusing: bool = False, adapter_names=None, expert: str = "both"):
        for e in self._experts_with_adapters(expert):
            own = None if adapter_names is None else [n for n in adapter_names if n in e.peft_config]
            e.fuse_lora(lora_scale, safe_fusing=safe_fusing, adapter_names=own)

    def unfuse_lora(self, expert: str = "both") -> None:
        for e in self._experts_with_adapters(expert):
            e.unfuse_lora()

    def unload_lora(self, expert: str = "both") -> None:
        for e in self._experts_with_adapters(expert):
            e.unload_lora()

    def disable_lora(self, expert: str = "both") -> None:
        for e in self._experts_with_adapters(expert):
            e.disable_lora()

    def enable_lora(self, expert: str = "both") -> None:
        for e in self._experts_with_adapters(expert):
            e.enable_lora()

    def delete_adapters(self, adapter_names, expert: str = "both") -> None:
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        for e in self._experts_with_adapters(expert):
            own = [n for n in names if n in e.peft_config]
            if own:
                e.delete_adapters(own)

    def active_adapters(self) -> list[str]:
        return sorted({n for e in self.experts_named() if peft_adapters_loaded(e)
                       for n in e.active_adapters()})

    def enable_cache(self, config=None, expert: str = "both", *, high=None, low=None) -> None:
        """diffusers caches per expert: ``enable_cache(cfg)`` for both, or ``enable_cache(high=cfg_h, low=cfg_l)``.

        A cache hook's block patterns are relative to the module it wraps, so each expert gets its own hooks and
        state; the pipeline also resets the outgoing expert's state at the switch.
        """
        per_expert = {HIGH: high, LOW: low} if config is None else {
            e: config for e in ((HIGH, LOW) if expert == "both" else (expert,))}
        for name, cfg in per_expert.items():
            if cfg is not None:
                self.get_expert(name).enable_cache(cfg)

    def disable_cache(self) -> None:
        for e in self.experts_named():
            if e.is_cache_enabled:
                e.disable_cache()

    @property
    def is_cache_enabled(self) -> bool:
        return any(e.is_cache_enabled for e in self.experts_named())

    def set_attention_backend(self, backend: str, expert: str = "both") -> None:
        """diffusers attention backend (``"native"``, ``"flash"``, ``"sage"``, ...) for one expert or both."""
        for e in self.experts_named(expert):
            e.set_attention_backend(backend)


def _public_config(model: ModelMixin) -> dict[str, Any]:
    """A model's constructor config without diffusers' private bookkeeping keys."""
    return {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
