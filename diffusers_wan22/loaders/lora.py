"""Per-expert LoRA for the Wan 2.2 pipelines.

diffusers' `WanLoraLoaderMixin` already reads every Wan LoRA key format (diffusers, original/ComfyUI
`diffusion_model.*`, musubi `lora_unet_*`); what it cannot do is put a LoRA into one expert of a
`WanMoETransformer3DModel`. This mixin keeps its state-dict reading and routes the weights by expert, which is how
the published two-file (high/low) 4-step distillation LoRAs are meant to be used.
"""

from __future__ import annotations

import torch
from diffusers.loaders import WanLoraLoaderMixin

from .._compat import LOW_CPU_MEM_USAGE_DEFAULT_LORA, peft_adapters_loaded
from ..core.names import EXPERT_ATTRS, EXPERT_CHOICES

def _check_expert(expert: str) -> str:
    if expert not in EXPERT_CHOICES:
        raise ValueError(f"`expert` must be one of {EXPERT_CHOICES}; got {expert!r}.")
    return expert


class Wan22LoraLoaderMixin(WanLoraLoaderMixin):
    """`load_lora_weights(..., expert=)`, `set_adapters(..., expert=)`, `fuse_lora(..., expert=)` for the MoE."""

    _lora_loadable_modules = ["transformer"]

    def _is_moe_transformer(self) -> bool:
        return hasattr(self.transformer, "experts_named")

    def load_lora_weights(
        self,
        pretrained_model_name_or_path_or_dict: str | dict[str, torch.Tensor],
        adapter_name: str | None = None,
        hotswap: bool = False,
        expert: str = "both",
        **kwargs,
    ) -> None:
        """Load a Wan LoRA into the high-noise expert, the low-noise expert or both (``expert=``).

        ``load_into_transformer_2=True`` (diffusers' Wan 2.2 spelling) means ``expert="low"``.
        """
        if kwargs.pop("load_into_transformer_2", False):
            expert = "low"
        _check_expert(expert)
        if not self._is_moe_transformer():
            if expert != "both":
                raise ValueError("`expert` only applies to a mixture-of-experts transformer; this one is dense.")
            return super().load_lora_weights(pretrained_model_name_or_path_or_dict, adapter_name, hotswap, **kwargs)
        low_cpu_mem_usage = kwargs.pop("low_cpu_mem_usage", LOW_CPU_MEM_USAGE_DEFAULT_LORA)
        if isinstance(pretrained_model_name_or_path_or_dict, dict):
            pretrained_model_name_or_path_or_dict = dict(pretrained_model_name_or_path_or_dict)
        state_dict, metadata = self.lora_state_dict(pretrained_model_name_or_path_or_dict, return_lora_metadata=True,
                                                    **kwargs)
        bad = [k for k in state_dict if "lora" not in k][:3]
        if bad:
            raise ValueError(f"Not a LoRA checkpoint: keys such as {bad} contain no 'lora'.")
        if adapter_name is None:  # one name for both experts, so set_adapters can address them together
            taken = set(self.transformer.peft_config)
            adapter_name = next(f"default_{i}" for i in range(len(taken) + 1) if f"default_{i}" not in taken)
        self.transformer.load_lora_adapter(
            state_dict, expert=expert, adapter_name=adapter_name, metadata=metadata, _pipeline=self,
            low_cpu_mem_usage=low_cpu_mem_usage, hotswap=hotswap,
        )

    def set_adapters(self, adapter_names, adapter_weights=None, expert: str = "both") -> None:
        """Activate adapters with strengths; ``expert=`` limits it to one expert (per-expert strengths)."""
        _check_expert(expert)
        if not self._is_moe_transformer():
            return super().set_adapters(adapter_names, adapter_weights)
        self.transformer.set_adapters(adapter_names, adapter_weights, expert=expert)

    def fuse_lora(self, components=("transformer",), lora_scale: float = 1.0, safe_fusing: bool = False,
                  adapter_names=None, expert: str = "both", **kwargs) -> None:
        _check_expert(expert)
        if not self._is_moe_transformer():
            return super().fuse_lora(list(components), lora_scale, safe_fusing, adapter_names, **kwargs)
        self.transformer.fuse_lora(lora_scale, safe_fusing=safe_fusing, adapter_names=adapter_names, expert=expert)

    def unfuse_lora(self, components=("transformer",), expert: str = "both", **kwargs) -> None:
        _check_expert(expert)
        if not self._is_moe_transformer():
            return super().unfuse_lora(list(components), **kwargs)
        self.transformer.unfuse_lora(expert=expert)

    def get_list_adapters(self) -> dict[str, list[str]]:
        """Adapters per expert (``{"high_noise_expert": [...], "low_noise_expert": [...]}``) for the MoE."""
        if not self._is_moe_transformer():
            return super().get_list_adapters()
        return {name: list(getattr(self.transformer, name).peft_config)
                for name in EXPERT_ATTRS.values()
                if peft_adapters_loaded(getattr(self.transformer, name))}
