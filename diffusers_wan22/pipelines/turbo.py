"""TurboDiffusion's TurboWan2.2-I2V-A14B on `Wan22ImageToVideoPipeline`: loading (`from_turbo`) and its sampling.

A pipeline whose transformer is a `TurboWanMoETransformer3DModel` samples the way TurboDiffusion does:

* 4 rCM steps (`RCMScheduler`, SDE by default), one expert call per step (no classifier-free guidance unless a
  ``guidance_scale`` > 1 is passed), 81 frames; the initial state is ``noise * t_0`` in float64;
* the first frame is TurboDiffusion's: antialiased bilinear resize of the **uint8** image, then
  ``(u8 * float32(1/255) - 0.5) / 0.5``; the size is ``height``/``width`` when given (stretch), the area-keeping
  round-to-16 rule for ``max_area``, else the 720p table entry closest to the image's aspect ratio;
* the condition's VAE latent is normalised in the VAE's dtype (bf16), the umT5 encoder uses eager attention and
  the VAE's RMS norms normalise in bf16, as TurboDiffusion runs them; the final latents are cast to float32 before
  decoding (TurboDiffusion's ``samples = x.float()``).
"""

from __future__ import annotations

import os

import PIL.Image
import torch
from diffusers import AutoencoderKLWan
from diffusers.utils.torch_utils import get_module_execution_device

from ..core.image_sizes import closest_aspect_ratio, turbo_adaptive_size, turbo_fixed_size
from ..core.names import TURBO_MAX_STEPS
from ..loaders.turbo import load_turbo_components, turbo_expert_sources
from ..models.attention_sla import check_sla_selects_blocks
from ..models.transformer_wan_turbo import TurboWanMoETransformer3DModel
from ..models.turbo_numerics import use_native_dtype_vae_norms
from ..schedulers.scheduling_rcm import RCMScheduler
from ..utils.distributed import cp_token_count
from ..utils.turbo_image import pil_to_uint8, turbo_first_frame, turbo_resize_uint8

TURBO_STEPS = TURBO_MAX_STEPS  # TurboDiffusion's --num_steps default: the whole rCM grid
TURBO_FRAMES = 81
TURBO_RESOLUTION = "720p"  # the published experts are the 720P ones


def turbo_latent_stats(vae: AutoencoderKLWan, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, 1/std) in the VAE's dtype, shaped ``[1, C, 1, 1, 1]``; ``1/std`` computed in that dtype."""
    cfg, dtype = vae.config, vae.dtype
    mean = torch.tensor(cfg.latents_mean, dtype=dtype, device=device).view(1, cfg.z_dim, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(cfg.latents_std, dtype=dtype, device=device).view(1, cfg.z_dim, 1, 1, 1)
    return mean, inv_std


@torch.no_grad()
def turbo_image_condition(vae: AutoencoderKLWan, first_frame: torch.Tensor, num_frames: int) -> torch.Tensor:
    """The 20-channel I2V condition ``[1, 20, T, h, w]`` (VAE dtype): 4 mask channels (1 on latent frame 0) and the
    latent of ``[first_frame, num_frames - 1 black frames]`` normalised as ``(mu - mean) * (1/std)`` in the VAE
    dtype (diffusers-style pipelines normalise in float32, up to one bf16 ulp away).

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


def use_turbo_component_numerics(text_encoder, vae) -> None:
    """Eager attention for umT5 and bf16 RMS norms in the VAE (TurboDiffusion's numerics; idempotent)."""
    if text_encoder is not None:
        text_encoder.set_attn_implementation("eager")
    if vae is not None:
        use_native_dtype_vae_norms(vae)


class Wan22TurboMixin:
    """`from_turbo` and the TurboDiffusion sampling behaviour of `Wan22ImageToVideoPipeline` (module docstring)."""

    @classmethod
    def from_turbo(cls, folder: str | os.PathLike, quantized: bool = False, sla_topk: float | None = 0.1,
                   torch_dtype: torch.dtype | None = None, components: str | os.PathLike | None = None,
                   sampler: str = "sde", sigma_max: float = 200.0, lazy_experts: bool = False,
                   dtype: torch.dtype | None = None, **lazy_kwargs):
        """TurboWan2.2-I2V-A14B from TurboDiffusion's published files.

        Args:
            folder: holds ``TurboWan2.2-I2V-A14B-{high,low}-720P[-quant].pth`` (and, without ``components``, the
                official ``models_t5_umt5-xxl-enc-bf16.pth``, ``google/umt5-xxl/`` and ``Wan2.1_VAE.pth``).
            quantized: load the ``-quant`` (W8A8) files.
            sla_topk: SLA's kept fraction of key blocks (TurboDiffusion's default 0.1); ``None``: dense attention.
            torch_dtype: the experts' dtype (``None``: the files'); umT5 and the VAE run in bfloat16 as in
                TurboDiffusion. ``dtype=`` (diffusers' newer name) is accepted too.
            components: the official Wan2.2-I2V-A14B folder to take umT5, tokenizer and VAE from.
            sampler / sigma_max: the `RCMScheduler` settings (TurboDiffusion: ``"sde"``, 200; ``"ode"`` = its
                ``--ode``).
            lazy_experts: read no expert now; each is read from its `.pth` at its first step and released when the
                other runs (``prefetch_steps`` / ``prefetch_bytes`` as in `enable_lazy_experts`).
        """
        torch_dtype = dtype or torch_dtype  # diffusers' newer name, as in `from_official`
        cls.check_variant("i2v-A14B", folder)
        pipe = cls(**load_turbo_components(folder, quantized, sla_topk, torch_dtype, components, sampler, sigma_max,
                                           lazy_experts))
        pipe.lazy_source = turbo_expert_sources(folder, quantized, sla_topk)  # for `enable_lazy_experts` later too
        if lazy_experts:
            pipe.enable_lazy_experts(pipe.lazy_source, **lazy_kwargs)
        return pipe

    def estimate_memory(self, height: int | None = None, width: int | None = None, num_frames: int | None = None,
                        mode: str = "expert_offload", **kwargs):
        """`Wan22MemoryMixin.estimate_memory`; W8A8 Turbo experts are counted at their int8 bytes (``"w8a8"``)."""
        if self.is_turbo and self.transformer.config.w8a8:
            kwargs.setdefault("precision", "w8a8")
        return super().estimate_memory(height, width, num_frames, mode=mode, **kwargs)

    @property
    def is_turbo(self) -> bool:
        """Whether the transformer is a TurboDiffusion (rCM-distilled, SLA) expert pair."""
        return isinstance(getattr(self, "transformer", None), TurboWanMoETransformer3DModel)

    def resolve_call_defaults(self, num_frames, num_inference_steps, expert_steps, guidance_scale, guidance_scale_2):
        """TurboDiffusion's defaults for Turbo experts (81 frames, 4 steps, guidance 1: no CFG)."""
        if not self.is_turbo:
            return super().resolve_call_defaults(num_frames, num_inference_steps, expert_steps, guidance_scale,
                                                 guidance_scale_2)
        guidance_scale = 1.0 if guidance_scale is None else guidance_scale
        guidance_scale_2 = guidance_scale if guidance_scale_2 is None else guidance_scale_2
        return (TURBO_FRAMES if num_frames is None else num_frames,
                TURBO_STEPS if num_inference_steps is None else num_inference_steps,
                (float(guidance_scale), float(guidance_scale_2)))

    def check_text_call(self, height, width, num_frames, num_inference_steps, boundary_ratio, expert_steps, latents,
                        **common) -> None:
        """The shared checks, plus for Turbo experts: the rCM scheduler and step count, no ``expert_steps``, and
        enough video tokens for SLA to keep at least one key block — all before any model runs."""
        if self.is_turbo:
            self._check_turbo_call(height, width, num_frames, num_inference_steps, expert_steps)
        super().check_text_call(height, width, num_frames, num_inference_steps, boundary_ratio, expert_steps, latents,
                                **common)
        if self.is_turbo:
            use_turbo_component_numerics(self.text_encoder, self.vae)

    def _check_turbo_call(self, height, width, num_frames, num_inference_steps, expert_steps) -> None:
        if not isinstance(self.scheduler, RCMScheduler):
            raise ValueError(f"TurboWan2.2 experts are distilled for the rCM sampler; the scheduler is "
                             f"{type(self.scheduler).__name__}. Use RCMScheduler.from_config(pipe.scheduler.config) "
                             "or the scheduler `from_turbo` sets.")
        if isinstance(num_inference_steps, int) and not 1 <= num_inference_steps <= self.scheduler.max_steps:
            raise ValueError(f"`num_inference_steps` must be in [1, {self.scheduler.max_steps}] for the rCM sampler "
                             f"of the Turbo experts; got {num_inference_steps}.")
        if expert_steps is not None:
            raise ValueError("`expert_steps` splits an official sigma grid; the rCM sampler has a fixed grid (pick "
                             "`num_inference_steps` 1-4 and, if needed, `boundary_ratio`).")
        topk = self.transformer.config.sla_topk
        if topk is not None and all(isinstance(v, int) for v in (height, width, num_frames)):
            tokens, _ = cp_token_count(num_frames, height, width, self.vae_scale_factor_temporal,
                                       self.vae_scale_factor_spatial, tuple(self.transformer_config.patch_size))
            check_sla_selects_blocks(tokens, topk, self.transformer.config.sla_block_k)

    def initial_latents(self, batch: int, num_frames: int, height: int, width: int, generator, latents, device):
        """Turbo: the initial float64 state ``noise * t_0`` (``latents``, when given, is the initial noise)."""
        noise = super().initial_latents(batch, num_frames, height, width, generator, latents, device)
        return self.scheduler.scale_initial_noise(noise) if self.is_turbo else noise

    def video_output(self, latents, output_type: str, return_dict: bool, experts: list[str], timesteps):
        """Turbo: the float64 state becomes float32 before decoding, as in TurboDiffusion."""
        if self.is_turbo:
            latents = latents.float()
        return super().video_output(latents, output_type, return_dict, experts, timesteps)

    # ------------------------------------------------------------------ hooks of Wan22ImageToVideoPipeline
    def turbo_output_size(self, image: PIL.Image.Image, height, width, max_area) -> tuple[int, int]:
        """(width, height): explicit values, else the area-keeping rule for ``max_area``, else the 720p table entry
        of the closest aspect ratio (TurboDiffusion's own default is always its ``--aspect_ratio 16:9``)."""
        if (height is None) != (width is None):
            raise ValueError(f"Give both `height` and `width` or neither; got height={height}, width={width}.")
        if height is not None:
            return width, height
        if max_area is not None:
            return turbo_adaptive_size(image.width, image.height, max_area)
        return turbo_fixed_size(TURBO_RESOLUTION, closest_aspect_ratio(image.width, image.height, TURBO_RESOLUTION))

    @staticmethod
    def turbo_first_frame(image: PIL.Image.Image, width: int, height: int) -> torch.Tensor:
        """TurboDiffusion's first frame: uint8 antialiased bilinear resize (stretch), then scaled to [-1, 1]."""
        return turbo_first_frame(turbo_resize_uint8(pil_to_uint8(image), width, height))

    def turbo_condition(self, first_frame: torch.Tensor, num_frames: int, batch: int, device) -> dict:
        """``denoise``'s ``condition``: mask + bf16-normalised VAE latent, one per video."""
        condition = turbo_image_condition(self.vae, first_frame, num_frames).to(device)
        return {"condition": condition.expand(batch, -1, -1, -1, -1)}
