"""TurboDiffusion's I2V conditioning and decoding numerics around a diffusers `AutoencoderKLWan`.

TurboDiffusion runs the Wan 2.1 VAE entirely in the VAE's dtype (bfloat16): the latent statistics are bf16 tensors,
``1/std`` is computed in bf16, and the normalisation ``(mu - mean) * (1/std)`` (encode) and ``z / (1/std) + mean``
(decode) are bf16 operations. diffusers-style pipelines normalise in float32 instead, which moves the condition by
up to one bf16 ulp. The functions here keep TurboDiffusion's order and dtypes.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan
from diffusers.utils.torch_utils import get_module_execution_device


def turbo_latent_stats(vae: AutoencoderKLWan, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, 1/std) in the VAE's dtype, shaped ``[1, C, 1, 1, 1]``; ``1/std`` computed in that dtype."""
    cfg, dtype = vae.config, vae.dtype
    mean = torch.tensor(cfg.latents_mean, dtype=dtype, device=device).view(1, cfg.z_dim, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(cfg.latents_std, dtype=dtype, device=device).view(1, cfg.z_dim, 1, 1, 1)
    return mean, inv_std


@torch.no_grad()
def turbo_image_condition(vae: AutoencoderKLWan, first_frame: torch.Tensor, num_frames: int) -> torch.Tensor:
    """The 20-channel I2V condition ``[1, 20, T, h, w]`` (VAE dtype): 4 mask channels (1 on latent frame 0) and the
    normalised VAE latent of ``[first_frame, num_frames - 1 black frames]``.

    ``first_frame`` is ``[3, H, W]`` in [-1, 1] (float32, see `turbo_first_frame`); the video is cast to the VAE
    dtype as TurboDiffusion's ``WanVAE.encode`` does.
    """
    if (num_frames - 1) % 4:
        raise ValueError(f"`num_frames` must be 1 more than a multiple of 4 (the VAE's temporal stride); got "
                         f"{num_frames}.")
    device = get_module_execution_device(vae)
    _, height, width = first_frame.shape
    video = torch.cat([first_frame[:, None], first_frame.new_zeros(3, num_frames - 1, height, width)], dim=1)
    mu = vae.encode(video[None].to(device, vae.dtype)).latent_dist.mode()
    mean, inv_std = turbo_latent_stats(vae, device)
    latent = (mu - mean) * inv_std
    mask = torch.zeros(1, 4, *latent.shape[2:], dtype=latent.dtype, device=device)
    mask[:, :, 0] = 1  # latent frame 0 is given by the image, the rest is generated
    return torch.cat([mask, latent], dim=1)


@torch.no_grad()
def turbo_decode(vae: AutoencoderKLWan, latents: torch.Tensor) -> torch.Tensor:
    """Decode normalised latents as TurboDiffusion does (``z / (1/std) + mean`` in the VAE dtype); returns
    ``[B, 3, F, H, W]`` in [-1, 1] (diffusers' decoder clamps, TurboDiffusion clamps when saving)."""
    device = get_module_execution_device(vae)
    mean, inv_std = turbo_latent_stats(vae, device)
    z = latents.to(device, vae.dtype) / inv_std + mean
    return vae.decode(z, return_dict=False)[0]
