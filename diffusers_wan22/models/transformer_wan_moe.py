"""`WanMoETransformer3DModel`: the Wan 2.2 A14B mixture of two denoising experts as one diffusers model.

Each expert is a stock diffusers `WanTransformer3DModel`; this container only routes a step to one of them by
its timestep (the official rule: the high-noise expert while ``t >= boundary_ratio * num_train_timesteps``,
the low-noise expert after). Keeping both in one `ModelMixin` makes the pair one pipeline component that saves,
loads (sharded safetensors), offloads and takes LoRA like any diffusers model.
"""

from __future__ import annotations

import contextlib
import copy
import re
from typing import Any, Iterator

import torch
from accelerate import init_empty_weights
from diffusers import ModelMixin, WanTransformer3DModel  # noqa: F401  (ModelMixin must be a module-level name)
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin, WanLoraLoaderMixin
from diffusers.models.attention import AttentionMixin
from diffusers.models.cache_utils import CacheMixin

from .._compat import set_peft_adapters_loaded
from ..core.names import EXPERT_ATTRS, EXPERT_CHOICES, HIGH, LOW
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
        experts (`list[str]`, *optional*): the experts this model holds (``["low"]`` for a model saved from
            ``from_experts(None, low)``); ``None`` (configs written before this field existed too) means both.
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
        experts: list[str] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= boundary_ratio <= 1.0:
            raise ValueError(f"`boundary_ratio` must be in [0, 1], got {boundary_ratio}.")
        if experts is not None and (not experts or set(experts) - set(EXPERT_ATTRS)):
            raise ValueError(f"`experts` must list 'high' and/or 'low'; got {experts!r}.")
        expert_kwargs = dict(
            patch_size=patch_size, num_attention_heads=num_attention_heads, attention_head_dim=attention_head_dim,
            in_channels=in_channels, out_channels=out_channels, text_dim=text_dim, freq_dim=freq_dim,
            ffn_dim=ffn_dim, num_layers=num_layers, cross_attn_norm=cross_attn_norm, qk_norm=qk_norm, eps=eps,
            image_dim=image_dim, added_kv_proj_dim=added_kv_proj_dim, rope_max_seq_len=rope_max_seq_len,
            pos_embed_seq_len=pos_embed_seq_len,
        )
        for name, attr in EXPERT_ATTRS.items():  # a model saved with one expert is rebuilt with that one only
            setattr(self, attr, WanTransformer3DModel(**expert_kwargs) if experts is None or name in experts else None)
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
        present = [name for name, e in ((HIGH, high_noise_expert), (LOW, low_noise_expert)) if e is not None]
        with init_empty_weights():  # the placeholder experts built here are replaced right away
            model = cls(**high_cfg, boundary_ratio=boundary_ratio, num_train_timesteps=num_train_timesteps,
                        experts=None if len(present) == 2 else present)
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
        self._record_present_experts()
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
        self._record_present_experts()
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

    def _record_present_experts(self) -> None:
        # the config lists the present experts, so `from_pretrained` builds exactly those (None: both)
        present = self.loaded_experts
        self.register_to_config(experts=None if len(present) == len(EXPERT_ATTRS) else present)

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

    # LoRA. The container is a plain diffusers `PeftAdapterMixin` model: one `peft_config` for both experts, adapter
    # layers injected where the adapter's keys point (`high_noise_expert.blocks.0.attn1.to_q`, ...). An adapter
    # lives in one expert or both; every method below takes ``expert=`` ("high", "low", "both"), and when it is not
    # given the target set by `lora_target` applies (that is how the pipeline's `load_lora_weights(expert=...)`
    # reaches diffusers' own `WanLoraLoaderMixin`, which calls these methods without it).
    _lora_target = "both"

    @contextlib.contextmanager
    def lora_target(self, expert: str) -> Iterator[None]:
        """Within the block, LoRA methods called without ``expert=`` act on ``expert`` ("high", "low" or "both")."""
        previous = self._lora_target
        self._lora_target = check_expert_choice(expert)
        try:
            yield
        finally:
            self._lora_target = previous

    def _lora_scope(self, expert: str | None) -> str:
        scope = check_expert_choice(self._lora_target if expert is None else expert)
        if scope != "both" and self.get_expert(scope) is None:
            raise ValueError(f"The {scope}-noise expert is not loaded (this model holds {self.loaded_experts}).")
        return scope

    def _experts_outside(self, scope: str) -> list[WanTransformer3DModel]:
        return [self.get_expert(n) for n in self.loaded_experts if scope not in (n, "both")]

    def _scope_attrs(self, scope: str) -> tuple[str, ...]:
        return tuple(EXPERT_ATTRS[n] for n in self.loaded_experts if scope in (n, "both"))

    def check_lora_loadable(self, expert: str | None = None) -> None:
        """Refuse LoRA on quantized experts: peft would create the adapter weights in the storage dtype."""
        scope = self._lora_scope(expert)
        quantized = {n: s for n in self.loaded_experts if scope in (n, "both")
                     if (s := quantization_state(self.get_expert(n)))}
        if quantized:
            raise ValueError(f"Load LoRA adapters before `set_expert_precision` / GGUF loading: expert(s) "
                             f"{quantized} are already quantized.")

    def load_lora_adapter(self, pretrained_model_name_or_path_or_dict, prefix: str | None = "transformer",
                          hotswap: bool = False, expert: str | None = None, **kwargs) -> None:
        """`PeftAdapterMixin.load_lora_adapter` into one expert or both (``expert=``, default: both).

        Keys relative to one expert (``transformer.blocks.0...``, what Wan LoRAs hold) are placed under the chosen
        expert(s); keys relative to this container (``transformer.high_noise_expert.blocks.0...``, what
        `save_lora_adapter` / `save_lora_weights` write for it) keep their expert, restricted to the chosen one(s).
        Saved adapter metadata is scoped the same way. The rest is diffusers' own loading.
        """
        scope = self._lora_scope(expert)
        self.check_lora_loadable(scope)
        if not isinstance(pretrained_model_name_or_path_or_dict, dict):
            fetch = {k: kwargs.pop(k) for k in _LORA_FETCH_KWARGS if k in kwargs}
            pretrained_model_name_or_path_or_dict, file_metadata = WanLoraLoaderMixin.lora_state_dict(
                pretrained_model_name_or_path_or_dict, return_lora_metadata=True, **fetch)
            kwargs["metadata"] = kwargs.get("metadata") or file_metadata
        state_dict, relative = route_lora_keys(pretrained_model_name_or_path_or_dict, prefix, self._scope_attrs(scope))
        if kwargs.get("metadata") and (relative or scope != "both"):
            kwargs["metadata"] = route_lora_metadata(kwargs["metadata"], prefix, self._scope_attrs(scope), relative)
        if kwargs.get("adapter_name") is None and not hotswap:  # one free name over both experts
            taken = set(getattr(self, "peft_config", {}) or {})
            kwargs["adapter_name"] = next(f"default_{i}" for i in range(len(taken) + 1) if f"default_{i}" not in taken)
        with adapter_state_kept(self._experts_outside(scope)):
            super().load_lora_adapter(state_dict, prefix=prefix, hotswap=hotswap, **kwargs)

    def add_adapter(self, adapter_config, adapter_name: str = "default", expert: str | None = None) -> None:
        """`PeftAdapterMixin.add_adapter` on one expert or both (``target_modules`` scoped to the expert)."""
        scope = self._lora_scope(expert)
        self.check_lora_loadable(scope)
        if scope != "both":
            adapter_config = copy.deepcopy(adapter_config)
            scoped = route_lora_metadata(adapter_config.to_dict(), None, self._scope_attrs(scope), relative=False)
            adapter_config.target_modules = scoped["target_modules"]
            adapter_config.exclude_modules = scoped.get("exclude_modules")
        with adapter_state_kept(self._experts_outside(scope)):
            super().add_adapter(adapter_config, adapter_name=adapter_name)

    def adapters_in(self, expert: str = "both") -> list[str]:
        """Names of the adapters with layers in ``expert`` (in loading order)."""
        names = set()
        for e in self.experts_named(check_expert_choice(expert)):
            names |= adapter_names_in(e)
        return [n for n in (getattr(self, "peft_config", None) or {}) if n in names]

    def _forget_removed_adapters(self) -> None:
        """Drop from ``peft_config`` the adapters whose last layer was just removed (per-expert delete / unload)."""
        present = adapter_names_in(self)
        config = getattr(self, "peft_config", None) or {}
        for name in [n for n in config if n not in present]:
            config.pop(name)
        if not config and hasattr(self, "peft_config"):
            del self.peft_config
            set_peft_adapters_loaded(self, False)

    def _on_experts(self, method: str, expert: str | None, *args, **kwargs):
        """diffusers' ``PeftAdapterMixin.<method>`` on the container (both experts) or on one expert only."""
        scope = self._lora_scope(expert)
        if scope == "both":
            return getattr(super(), method)(*args, **kwargs)
        result = getattr(self.get_expert(scope), method)(*args, **kwargs)
        self._forget_removed_adapters()
        return result

    def set_adapters(self, adapter_names, weights=None, expert: str | None = None) -> None:
        """Activate adapters with strengths on the selected expert(s) (per-expert strengths: one call per expert)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        scope = self._lora_scope(expert)
        if scope != "both":
            present = self.adapters_in(scope)
            if not present:
                raise ValueError(f"No LoRA adapter is loaded in the {scope!r} expert.")
            if set(names) - set(present):
                raise ValueError(f"Adapter(s) {sorted(set(names) - set(present))} are not loaded in the {scope!r} "
                                 f"expert; it holds {present}.")
        self._on_experts("set_adapters", scope, names, weights)

    def fuse_lora(self, lora_scale: float = 1.0, safe_fusing: bool = False, adapter_names=None,
                  expert: str | None = None) -> None:
        self._on_experts("fuse_lora", expert, lora_scale, safe_fusing=safe_fusing, adapter_names=adapter_names)

    def unfuse_lora(self, expert: str | None = None) -> None:
        self._on_experts("unfuse_lora", expert)

    def unload_lora(self, expert: str | None = None) -> None:
        """Remove the adapter layers of the selected expert(s); nothing to do when none is loaded."""
        self._on_experts("unload_lora", expert)

    def disable_lora(self, expert: str | None = None) -> None:
        self._on_experts("disable_lora", expert)

    def enable_lora(self, expert: str | None = None) -> None:
        self._on_experts("enable_lora", expert)

    def delete_adapters(self, adapter_names, expert: str | None = None) -> None:
        self._on_experts("delete_adapters", expert, adapter_names)

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


# ------------------------------------------------------------------ LoRA routing (keys and adapter configs)
# `load_lora_adapter` arguments that say where to read the file from (the rest goes to diffusers' loading).
_LORA_FETCH_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "subfolder",
                      "weight_name", "use_safetensors")


def check_expert_choice(expert: str) -> str:
    """``expert`` if it is "high", "low" or "both", else a clear error."""
    if expert not in EXPERT_CHOICES:
        raise ValueError(f"`expert` must be one of {EXPERT_CHOICES}; got {expert!r}.")
    return expert


def route_lora_keys(state_dict: dict, prefix: str | None, attrs: tuple[str, ...]) -> tuple[dict, bool]:
    """LoRA keys placed into the experts named by ``attrs`` (attribute names, e.g. ``("low_noise_expert",)``).

    A key relative to one expert (``<prefix>.blocks.0.attn1.to_q.lora_A.weight``) is copied under each chosen
    expert; a key already relative to the container (``<prefix>.high_noise_expert.blocks...``) is kept if its expert
    is chosen. Keys outside ``prefix`` are left for diffusers to filter out. Returns the keys and whether any key
    was expert-relative.
    """
    head = f"{prefix}." if prefix else ""
    routed, relative = {}, False
    for key, value in state_dict.items():
        if not key.startswith(head):
            routed[key] = value
            continue
        rest = key[len(head):]
        owner = rest.split(".", 1)[0]
        if owner in EXPERT_ATTRS.values():
            if owner in attrs:
                routed[key] = value
            continue
        relative = True
        for i, attr in enumerate(attrs):  # own tensors per expert: peft may assign them as parameters
            routed[f"{head}{attr}.{rest}"] = value if i == 0 else value.clone()
    return routed, relative


def _scoped_regex(pattern: str, alternatives: str, relative: bool) -> str:
    # A peft regex is matched in full against module names; scope it to the chosen experts' sub-modules.
    return rf"(?:{alternatives})\.(?:{pattern})" if relative else rf"(?=(?:{alternatives})\.)(?:{pattern})"


def route_lora_metadata(metadata: dict, prefix: str | None, attrs: tuple[str, ...], relative: bool) -> dict:
    """Adapter metadata (LoraConfig fields, under ``<prefix>.`` when ``prefix`` is set) scoped to the experts in
    ``attrs``: ``target_modules`` / ``exclude_modules`` only match modules inside them, and the anchored
    ``rank_pattern`` / ``alpha_pattern`` keys diffusers writes (``^blocks.0...``) get each expert's prefix."""
    head = f"{prefix}." if prefix else ""
    out = dict(metadata)
    alternatives = "|".join(re.escape(a) for a in attrs)
    restricted = set(attrs) != set(EXPERT_ATTRS.values())
    for field in ("target_modules", "exclude_modules"):
        value = out.get(head + field)
        if isinstance(value, str) and value != "all-linear":
            out[head + field] = _scoped_regex(value, alternatives, relative)
        elif value and field == "target_modules" and restricted and not isinstance(value, str):
            # peft's list rule (name equal to, or ending in ".<target>"), limited to the chosen experts
            names = "|".join(re.escape(t) for t in sorted(value))
            out[head + field] = _scoped_regex(rf"(?:.*\.)?(?:{names})", alternatives, relative=False)
    for field in ("rank_pattern", "alpha_pattern"):
        patterns = out.get(head + field)
        if relative and patterns:
            out[head + field] = {(f"^{a}." + p[1:] if p.startswith("^") else p): v
                                 for p, v in patterns.items() for a in attrs}
    return out


def tuner_layers(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The peft adapter layers inside ``module``."""
    from peft.tuners.tuners_utils import BaseTunerLayer  # peft is optional: only LoRA users have it

    return (layer for layer in module.modules() if isinstance(layer, BaseTunerLayer))


def adapter_names_in(module: torch.nn.Module) -> set[str]:
    """Names of the peft adapters that have layers inside ``module``."""
    return {name for layer in tuner_layers(module) for attr in layer.adapter_layer_names
            for name in getattr(layer, attr).keys()}


@contextlib.contextmanager
def adapter_state_kept(modules: list[torch.nn.Module]) -> Iterator[None]:
    """Keep the active and merged adapters of every adapter layer in ``modules`` across the block.

    peft activates a newly injected adapter on every adapter layer of the model it injects into (unmerging fused
    ones); an expert the adapter is not loaded into keeps its state, as two separate diffusers models would.
    """
    saved = [(layer, list(layer.active_adapters), list(layer.merged_adapters))
             for module in modules for layer in tuner_layers(module)]
    try:
        yield
    finally:
        for layer, active, merged in saved:
            layer.set_adapter(active)
            unmerged = [n for n in merged if n not in layer.merged_adapters]
            if unmerged:
                layer.merge(adapter_names=unmerged)
