"""TurboWan2.2 experts (TurboDiffusion, thu-ml) as diffusers models.

`TurboWanTransformer3DModel` is a stock `WanTransformer3DModel` whose modules are swapped for the ones the Turbo
weights were distilled with:

* self-attention (``attn1``) of every block through `SLAAttnProcessor` (sparse-linear attention with the per-block
  ``proj_l``; ``sla_topk=None`` keeps dense attention);
* block norms norm1 / norm2 / norm3 with TurboDiffusion's padded variance (`PaddedVarianceLayerNorm`);
* the sinusoidal timestep features in float64 (`Float64Timesteps`);
* with ``w8a8=True`` (the ``-quant`` checkpoints), the 8 linears of every block as `W8A8Linear` (int8 weights and
  activations, 128x128 block scales).

Its constructor arguments are all config, so ``save_pretrained`` / ``from_pretrained`` rebuild the same modules.
`TurboWanMoETransformer3DModel` is the high/low-noise pair (a `WanMoETransformer3DModel`, boundary 0.9 for I2V).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import WanTransformer3DModel
from diffusers.configuration_utils import register_to_config

from ..core.names import EXPERT_ATTRS
from ..quantizers.w8a8 import W8A8Linear
from .attention_sla import BLOCK_K, BLOCK_Q, use_sla_attention
from .transformer_wan_moe import WanMoETransformer3DModel
from .turbo_numerics import Float64Timesteps, use_padded_variance_norms

# diffusers names of the 8 block linears TurboDiffusion quantizes (self_attn.{q,k,v,o}, cross_attn.{q,k,v,o},
# ffn.0, ffn.2); `proj_l` stays float.
W8A8_BLOCK_LINEARS = (
    "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
    "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
    "ffn.net.0.proj", "ffn.net.2",
)
TURBO_CONFIG_KEYS = ("sla_topk", "sla_block_q", "sla_block_k", "w8a8", "padded_layer_norm")
# The stock expert's constructor arguments (the Turbo classes take them all, plus their own).
WAN_CONFIG_KEYS = tuple(p for p in inspect.signature(WanTransformer3DModel.__init__).parameters if p != "self")


def _pick(arguments: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The entries of a constructor's ``locals()`` named in ``keys``."""
    return {k: arguments[k] for k in keys}


def _replace_block_linears(transformer: WanTransformer3DModel) -> None:
    """Swap the 8 block linears for empty `W8A8Linear` layers on the same device (meta stays meta)."""
    for block in transformer.blocks:
        for name in W8A8_BLOCK_LINEARS:
            parent_name, _, child = name.rpartition(".")
            parent = block.get_submodule(parent_name)
            linear = getattr(parent, child) if not child.isdigit() else parent[int(child)]
            if isinstance(linear, W8A8Linear):
                continue
            layer = W8A8Linear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                               dtype=linear.weight.dtype, device=linear.weight.device)
            if child.isdigit():
                parent[int(child)] = layer
            else:
                setattr(parent, child, layer)


class TurboWanTransformer3DModel(WanTransformer3DModel):
    r"""A Wan 2.2 DiT with TurboDiffusion's modules (see the module docstring).

    Args:
        sla_topk (`float` or `None`, defaults to 0.1): fraction of key blocks SLA keeps (TurboDiffusion's
            ``--sla_topk``); ``None`` runs dense attention (the ``proj_l`` weights are then not part of the model).
        sla_block_q, sla_block_k (`int`, 128 / 64): SLA block sizes of the Turbo experts.
        w8a8 (`bool`, defaults to False): the block linears are `W8A8Linear` (``-quant`` checkpoints).
        padded_layer_norm (`bool`, defaults to True): TurboDiffusion's padded-variance block norms (its default; its
            ``--default_norm`` flag turns them off).
        Other arguments: see `diffusers.WanTransformer3DModel`.
    """

    # The W8A8 block scales (buffers named `scale`) stay float32 when diffusers loads with a torch_dtype.
    _keep_in_fp32_modules = WanTransformer3DModel._keep_in_fp32_modules + ["scale"]

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, ...] = (1, 2, 2),
        num_attention_heads: int = 40,
        attention_head_dim: int = 128,
        in_channels: int = 36,
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
        sla_topk: float | None = 0.1,
        sla_block_q: int = BLOCK_Q,
        sla_block_k: int = BLOCK_K,
        w8a8: bool = False,
        padded_layer_norm: bool = True,
    ) -> None:
        super().__init__(**_pick(locals(), WAN_CONFIG_KEYS))
        self.condition_embedder.timesteps_proj = Float64Timesteps(freq_dim)
        if padded_layer_norm:
            use_padded_variance_norms(self)
        if w8a8:
            _replace_block_linears(self)
        if sla_topk is not None:
            use_sla_attention(self, sla_topk, sla_block_q, sla_block_k)

    def set_sla_topk(self, topk: float | None = None, kernel: str = "auto") -> None:
        """Change SLA's kept fraction (or its kernel) at run time; ``proj_l`` weights are kept. Dense experts
        (``sla_topk=None``) have no ``proj_l`` and cannot switch to SLA here."""
        if self.config.sla_topk is None:
            raise ValueError("This expert was built with dense attention (sla_topk=None); it has no SLA weights.")
        topk = self.config.sla_topk if topk is None else topk
        use_sla_attention(self, topk, self.config.sla_block_q, self.config.sla_block_k, kernel)
        self.register_to_config(sla_topk=float(topk))

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the blocks compute in (the patch embedding's: W8A8 layers hold int8 weights)."""
        return self.patch_embedding.weight.dtype

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_hidden_states_image: torch.Tensor | None = None, return_dict: bool = True,
                attention_kwargs: dict[str, Any] | None = None):
        """`WanTransformer3DModel.forward`; a 16-bit expert first rounds the timestep to its dtype, as TurboDiffusion
        casts every network input to its compute dtype (995.02 -> 996 in bf16)."""
        if self.compute_dtype in (torch.bfloat16, torch.float16) and timestep.is_floating_point():
            timestep = timestep.to(self.compute_dtype)
        return super().forward(hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image,
                               return_dict=return_dict, attention_kwargs=attention_kwargs)


class TurboWanMoETransformer3DModel(WanMoETransformer3DModel):
    r"""The TurboWan2.2-I2V-A14B high/low-noise pair: a `WanMoETransformer3DModel` of two
    `TurboWanTransformer3DModel` experts (same config; boundary 0.9 for I2V).

    Args: the `WanMoETransformer3DModel` routing arguments, the experts' `TurboWanTransformer3DModel` config.
    """

    _keep_in_fp32_modules = TurboWanTransformer3DModel._keep_in_fp32_modules
    # The parent's per-expert precision records (fp8 / torchao policies) do not apply to Turbo experts.
    ignore_for_config = ["expert_precision"]

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, ...] = (1, 2, 2),
        num_attention_heads: int = 40,
        attention_head_dim: int = 128,
        in_channels: int = 36,
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
        boundary_ratio: float = 0.9,
        num_train_timesteps: int = 1000,
        sla_topk: float | None = 0.1,
        sla_block_q: int = BLOCK_Q,
        sla_block_k: int = BLOCK_K,
        w8a8: bool = False,
        padded_layer_norm: bool = True,
        experts: list[str] | None = None,
    ) -> None:
        expert_kwargs = _pick(locals(), WAN_CONFIG_KEYS + TURBO_CONFIG_KEYS)
        with init_empty_weights():  # the parent's stock experts are placeholders, replaced right below
            super().__init__(**_pick(expert_kwargs, WAN_CONFIG_KEYS), boundary_ratio=boundary_ratio,
                             num_train_timesteps=num_train_timesteps, experts=experts)
        for attr in EXPERT_ATTRS.values():
            if getattr(self, attr) is not None:  # the experts the parent built (both, or those in ``experts``)
                setattr(self, attr, TurboWanTransformer3DModel(**expert_kwargs))

    def check_lora_loadable(self, expert: str | None = None) -> None:
        """Per-expert LoRA as on any `WanMoETransformer3DModel` (``load_lora_adapter``, ``add_adapter``); refused for
        W8A8 experts."""
        if self.config.w8a8:
            raise ValueError(
                "LoRA cannot be loaded into the W8A8 (-quant) Turbo experts: their block linears hold int8 weights "
                "with per-block scales and int8 activations, so a LoRA delta can neither run beside them as a float "
                "linear nor be fused into them without re-quantizing. Load the plain TurboWan2.2 files "
                "(quantized=False) to use LoRA.")
        super().check_lora_loadable(expert)

    def set_sla_topk(self, topk: float | None = None, kernel: str = "auto") -> None:
        """`TurboWanTransformer3DModel.set_sla_topk` on both experts."""
        for expert in self.experts_named():
            expert.set_sla_topk(topk, kernel)
        if topk is not None:
            self.register_to_config(sla_topk=float(topk))
