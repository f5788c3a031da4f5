"""Per-expert LoRA for the Wan 2.2 pipelines, on diffusers' own `WanLoraLoaderMixin`.

diffusers' mixin reads every Wan LoRA key format (diffusers, original/ComfyUI `diffusion_model.*`, musubi
`lora_unet_*`), expands T2V LoRAs for I2V models, handles adapter metadata and hotswapping, and calls the
transformer's `load_lora_adapter` / `set_adapters` / `fuse_lora` / ... . The `WanMoETransformer3DModel` is a plain
diffusers `PeftAdapterMixin` model whose LoRA methods act on one expert or both; this mixin only adds ``expert=``
("high", "low", "both") to the pipeline methods and sets it as the container's target
(`WanMoETransformer3DModel.lora_target`) while diffusers' method runs. That is how the published two-file (high/low)
4-step distillation LoRAs are loaded: ``load_lora_weights(high_file, expert="high")`` and
``load_lora_weights(low_file, expert="low")`` (diffusers' ``load_into_transformer_2=True`` means ``expert="low"``).
"""

from __future__ import annotations

import contextlib

import torch
from diffusers.loaders import WanLoraLoaderMixin

from .._compat import set_fused_lora_names
from ..core.names import EXPERT_ATTRS
from ..models.transformer_wan_moe import WanMoETransformer3DModel, check_expert_choice, tuner_layers


class Wan22LoraLoaderMixin(WanLoraLoaderMixin):
    """diffusers' Wan LoRA loading, with ``expert=`` on the mixture of experts."""

    _lora_loadable_modules = ["transformer"]

    def _is_moe_transformer(self) -> bool:
        return isinstance(self.transformer, WanMoETransformer3DModel)

    def _expert_scope(self, expert: str):
        """A context in which the MoE's LoRA methods act on ``expert``; for a dense transformer only "both"."""
        check_expert_choice(expert)
        if self._is_moe_transformer():
            return self.transformer.lora_target(expert)
        if expert != "both":
            raise ValueError("`expert` only applies to a mixture-of-experts transformer; this one is dense.")
        return contextlib.nullcontext()

    def load_lora_weights(
        self,
        pretrained_model_name_or_path_or_dict: str | dict[str, torch.Tensor],
        adapter_name: str | None = None,
        hotswap: bool = False,
        expert: str = "both",
        **kwargs,
    ) -> None:
        """`WanLoraLoaderMixin.load_lora_weights` into the high-noise expert, the low-noise expert or both
        (``expert=``); ``load_into_transformer_2=True`` (diffusers' Wan 2.2 spelling) means ``expert="low"``.

        Refused on quantized experts and with lazy experts (they re-read plain weights and would drop adapters).
        """
        if kwargs.pop("load_into_transformer_2", False):
            expert = "low"
        with self._expert_scope(expert):
            if self._is_moe_transformer():
                if getattr(self, "lazy_experts", None) is not None:
                    raise ValueError("Lazy experts re-read the saved weights and would drop LoRA adapters: call "
                                     "`disable_lazy_experts()` first (or fuse the LoRA, save, and reload lazily).")
                self.transformer.check_lora_loadable()
            super().load_lora_weights(pretrained_model_name_or_path_or_dict, adapter_name=adapter_name,
                                      hotswap=hotswap, **kwargs)

    def set_adapters(self, adapter_names, adapter_weights=None, expert: str = "both") -> None:
        """Activate adapters with strengths; ``expert=`` limits it to one expert (per-expert strengths)."""
        if expert == "both":
            return super().set_adapters(adapter_names, adapter_weights)
        with self._expert_scope(expert):
            self.transformer.set_adapters(adapter_names, adapter_weights)

    def fuse_lora(self, components=("transformer",), lora_scale: float = 1.0, safe_fusing: bool = False,
                  adapter_names=None, expert: str = "both", **kwargs) -> None:
        """Merge adapters into the weights of the selected expert(s) (`LoraBaseMixin.fuse_lora`)."""
        with self._expert_scope(expert):
            super().fuse_lora(list(components), lora_scale, safe_fusing, adapter_names, **kwargs)

    def unfuse_lora(self, components=("transformer",), expert: str = "both", **kwargs) -> None:
        """Undo `fuse_lora` on the selected expert(s)."""
        if expert == "both":
            return super().unfuse_lora(list(components), **kwargs)
        with self._expert_scope(expert):
            self.transformer.unfuse_lora()
        # diffusers' `fused_loras` bookkeeping: what is still merged somewhere
        merged = {n for layer in tuner_layers(self.transformer) for n in layer.merged_adapters}
        set_fused_lora_names(self, self.fused_loras & merged)

    def unload_lora_weights(self, expert: str = "both") -> None:
        """Remove the adapters of the selected expert(s); a no-op when none is loaded (as in diffusers)."""
        with self._expert_scope(expert):
            super().unload_lora_weights()

    def delete_adapters(self, adapter_names, expert: str = "both") -> None:
        with self._expert_scope(expert):
            super().delete_adapters(adapter_names)

    def disable_lora(self, expert: str = "both") -> None:
        with self._expert_scope(expert):
            super().disable_lora()

    def enable_lora(self, expert: str = "both") -> None:
        with self._expert_scope(expert):
            super().enable_lora()

    def get_list_adapters(self, by_expert: bool = False) -> dict[str, list[str]]:
        """diffusers' ``{"transformer": [names]}``; with ``by_expert=True`` the MoE's adapters per expert
        (``{"high_noise_expert": [...], "low_noise_expert": [...]}``, experts without adapters left out)."""
        if not by_expert:
            return super().get_list_adapters()
        if not self._is_moe_transformer():
            raise ValueError("`by_expert` only applies to a mixture-of-experts transformer; this one is dense.")
        per_expert = {EXPERT_ATTRS[n]: self.transformer.adapters_in(n) for n in self.transformer.loaded_experts}
        return {attr: names for attr, names in per_expert.items() if names}
