"""TurboDiffusion's numerics that differ from diffusers' Wan modules, as drop-in replacements.

* **Padded-variance block LayerNorm** ("FastLayerNorm"). TurboDiffusion replaces every LayerNorm inside the DiT
  blocks (not the output head's) with a Triton kernel that loads each row into ``N2 = next_power_of_2(dim)`` lanes,
  the padded lanes holding 0, and sums ``(x - mean)^2`` over all ``N2`` lanes before dividing by ``dim``. Each padded
  lane adds ``mean^2``, so the variance it uses is ``var + (N2 - dim) / dim * mean^2`` (``0.6 * mean^2`` for Wan's
  dim 5120). The Turbo weights were distilled under it: a textbook LayerNorm changes every block's output.
* **Float64 sinusoidal timestep embedding**, as TurboDiffusion (and the official Wan code) compute it; diffusers'
  `Timesteps` computes the angles in float32 (``t * freq`` with t ~ 1000 loses ~1e-4 rad).
* **Native-dtype VAE RMS norm**: TurboDiffusion runs the Wan 2.1 VAE in bfloat16 with ``F.normalize`` on the bf16
  tensor; diffusers' `WanRMS_norm` upcasts 16-bit inputs to float32 first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm
from diffusers.models.normalization import FP32LayerNorm


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= ``n`` (Triton's ``next_power_of_2``)."""
    return 1 << (int(n) - 1).bit_length()


# ----------------------------------------------------------------------------------------------- DiT block norms
class PaddedVarianceLayerNorm(FP32LayerNorm):
    """`FP32LayerNorm` with TurboDiffusion's padded-lane variance (see the module docstring); float32 math, output
    in the input dtype. Same parameters and state dict as the LayerNorm it replaces."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs.float()
        dim = x.shape[-1]
        mean = x.mean(dim=-1, keepdim=True)
        centered = x - mean
        padded_lanes = next_power_of_2(dim) - dim
        var = (centered.square().sum(dim=-1, keepdim=True) + padded_lanes * mean.square()) / dim
        out = centered * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            out = out * self.weight.float()
        if self.bias is not None:
            out = out + self.bias.float()
        return out.to(inputs.dtype)

    @classmethod
    def from_layer_norm(cls, norm: torch.nn.LayerNorm) -> "PaddedVarianceLayerNorm":
        """The padded-variance version of ``norm``, sharing its weight and bias tensors (no copy)."""
        new = cls(norm.normalized_shape, eps=norm.eps, elementwise_affine=norm.weight is not None,
                  bias=norm.bias is not None, device="meta")
        new.weight, new.bias = norm.weight, norm.bias
        return new


def use_padded_variance_norms(transformer: torch.nn.Module) -> int:
    """Give every Wan block's norm1 / norm2 / norm3 TurboDiffusion's padded variance (the output head's norm stays a
    plain LayerNorm, as in TurboDiffusion). Returns how many norms were replaced; idempotent."""
    count = 0
    for block in transformer.blocks:
        for name in ("norm1", "norm2", "norm3"):
            norm = getattr(block, name)
            if isinstance(norm, torch.nn.LayerNorm) and not isinstance(norm, PaddedVarianceLayerNorm):
                setattr(block, name, PaddedVarianceLayerNorm.from_layer_norm(norm))
                count += 1
    return count


# ----------------------------------------------------------------------------------------------- timestep embedding
class Float64Timesteps(torch.nn.Module):
    """Wan's sinusoidal timestep features ``[cos(t w), sin(t w)]``, ``w_i = 10000^(-i / half)``, computed in float64
    and returned as float32 (a drop-in for the transformer's ``condition_embedder.timesteps_proj``)."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        if num_channels % 2:
            raise ValueError(f"`num_channels` must be even, got {num_channels}.")
        self.num_channels = num_channels

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        position = timesteps.to(torch.float64)
        freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=position.device).div(half))
        angles = torch.outer(position, freqs)
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).float()


# ----------------------------------------------------------------------------------------------- VAE norm
class NativeDtypeRMSNorm(WanRMS_norm):
    """`WanRMS_norm` that normalises in the input dtype (bf16 stays bf16), as TurboDiffusion's bf16 Wan 2.1 VAE does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normalized = F.normalize(x, dim=1 if self.channel_first else -1)
        return normalized * self.scale * self.gamma + self.bias


def use_native_dtype_vae_norms(vae: torch.nn.Module) -> int:
    """Make every RMS norm of a diffusers `AutoencoderKLWan` normalise in its input dtype (in place, same weights).
    Returns how many norms changed."""
    count = 0
    for module in vae.modules():
        if type(module) is WanRMS_norm:
            module.__class__ = NativeDtypeRMSNorm  # same attributes and parameters: only `forward` differs
            count += 1
    return count
