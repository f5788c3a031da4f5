"""`Wan22ImageToVideoPipeline`: image + text → video for I2V-A14B (MoE) and TI2V-5B image mode (dense)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

from ..utils.image import i2v_a14b_image, i2v_a14b_size, ti2v_best_output_size, ti2v_image, to_pil
from .pipeline_output import Wan22PipelineOutput
from .pipeline_wan22 import Wan22VideoPipeline, text_branches
from .turbo import Wan22TurboMixin


class Wan22ImageToVideoPipeline(Wan22TurboMixin, Wan22VideoPipeline):
    r"""Wan 2.2 image-to-video, on the shared denoising loop.

    * **I2V-A14B** (MoE transformer, 36 input channels): every step sees the noisy latent plus a 20-channel
      condition — a 4-channel first-frame mask and the VAE latent of [image, black frames].
    * **TI2V-5B** (dense transformer, Wan 2.2 VAE): latent frame 0 is the clean image latent, its tokens get
      timestep 0, and it is re-set after every step.

    Output size follows the official rules when `height`/`width` are not given: the image's aspect ratio within
    `max_area` pixels (I2V: multiples of 16, bicubic stretch; TI2V: best multiples of 32, LANCZOS cover-resize and
    center crop). Other arguments are those of `Wan22Pipeline.__call__`.

    TurboDiffusion's TurboWan2.2-I2V-A14B (`from_turbo`) samples TurboDiffusion's way: see `pipelines/turbo.py`.
    """

    _variants = ("i2v-A14B", "ti2v-5B")

    def output_size(self, image, height: int | None, width: int | None, max_area: int | None) -> tuple[int, int]:
        """(width, height) of the video: explicit values win, else the official rule for this variant."""
        if self.is_turbo:
            return self.turbo_output_size(image, height, width, max_area)
        if (height is None) != (width is None):
            raise ValueError(f"Give both `height` and `width` or neither; got height={height}, width={width}.")
        if height is not None:
            return width, height
        d = self.variant_defaults
        max_area = d.width * d.height if max_area is None else max_area
        if max_area <= 0:
            raise ValueError(f"`max_area` must be a positive pixel count; got {max_area}.")
        if self.is_moe:
            return i2v_a14b_size(image.width, image.height, max_area, self.vae_scale_factor_spatial,
                                 self.transformer_config.patch_size[1])
        return ti2v_best_output_size(image.width, image.height, max_area,
                                     self.vae_scale_factor_spatial * self.transformer_config.patch_size[1])

    def image_condition(self, first_frame: torch.Tensor, num_frames: int, batch: int, device) -> dict:
        """``denoise`` keyword for this variant: I2V's 20-channel ``condition`` or TI2V's ``first_frame_latents``."""
        if self.is_turbo:
            return self.turbo_condition(first_frame, num_frames, batch, device)
        if not self.is_moe:  # TI2V: the clean latent of the image alone is latent frame 0
            z = self.encode_image_latents(first_frame[None, :, None])
            return {"first_frame_latents": z.to(device).expand(batch, -1, -1, -1, -1)}
        _, h, w = first_frame.shape
        video = torch.cat([first_frame[:, None], first_frame.new_zeros(3, num_frames - 1, h, w)], dim=1)
        latent = self.encode_image_latents(video[None]).to(device)
        mask = torch.zeros(1, 4, latent.shape[2], latent.shape[3], latent.shape[4], device=device)
        mask[:, :, 0] = 1  # the first latent frame is given; everything after it is generated
        return {"condition": torch.cat([mask, latent], dim=1).expand(batch, -1, -1, -1, -1)}

    @torch.no_grad()
    def __call__(
        self,
        image,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        max_area: int | None = None,
        num_frames: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_scale_2: float | None = None,
        num_videos_per_prompt: int | None = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str | None = "np",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        max_sequence_length: int = 512,
        boundary_ratio: float | None = None,
        expert_steps: tuple[int, int] | None = None,
        batched_cfg: bool = False,
        callback_on_expert_switch: Callable | None = None,
    ) -> Wan22PipelineOutput | tuple:
        r"""Generate a video that starts from ``image``.

        Args:
            image: PIL image, ``HxWx3`` array or ``3xHxW`` tensor in [0, 1].
            max_area (`int`, *optional*): pixel budget of the output when `height`/`width` are not given
                (the official `--size` area; default 1280*720 for I2V-A14B, 1280*704 for TI2V-5B).
            Other arguments: see `Wan22Pipeline.__call__` (defaults: I2V-A14B 81 frames, 40 steps, shift 5,
            guidance 3.5/3.5, boundary 0.9; TI2V-5B 121 frames, 50 steps, guidance 5.0).
        """
        tensor_inputs = self.resolve_callback_inputs(callback_on_step_end, callback_on_step_end_tensor_inputs)
        num_frames, num_inference_steps, guidance = self.resolve_call_defaults(
            num_frames, num_inference_steps, expert_steps, guidance_scale, guidance_scale_2)

        # 1. Check inputs (image type and size rule first: both are cheap)
        pil = to_pil(image)
        width, height = self.output_size(pil, height, width, max_area)
        self.check_text_call(
            height, width, num_frames, num_inference_steps, boundary_ratio, expert_steps, latents, prompt=prompt,
            negative_prompt=negative_prompt, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            guidance=guidance, num_videos_per_prompt=num_videos_per_prompt, output_type=output_type,
            callback_on_step_end_tensor_inputs=tensor_inputs, max_sequence_length=max_sequence_length)
        device = self.begin_call(guidance, attention_kwargs, batched_cfg)

        # 2. Timesteps, and the expert + guidance of every step
        timesteps, experts, step_scales = self.plan_steps(num_inference_steps, guidance, device, boundary_ratio,
                                                          expert_steps)
        self._do_cfg = any(g > 1.0 for g in step_scales)

        # 3. Encode the prompts
        prompt_embeds, negative_prompt_embeds = self.encode_prompts(
            prompt, negative_prompt, self._do_cfg, num_videos_per_prompt, prompt_embeds, negative_prompt_embeds,
            max_sequence_length, device)

        # 4. Initial noise, and the image condition
        batch = prompt_embeds.shape[0]
        latents = self.initial_latents(batch, num_frames, height, width, generator, latents, device)
        if self.is_turbo:
            first_frame = self.turbo_first_frame(pil, width, height)
        else:
            first_frame = (i2v_a14b_image if self.is_moe else ti2v_image)(pil, width, height)
        condition = self.image_condition(first_frame, num_frames, batch, device)

        # 5. Denoise
        latents = self.denoise(
            latents, timesteps, experts, step_scales, *text_branches(prompt_embeds, negative_prompt_embeds), **condition,
            attention_kwargs=attention_kwargs, callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=tensor_inputs, callback_on_expert_switch=callback_on_expert_switch,
            generator=generator)

        # 6. Decode
        return self.video_output(latents, output_type, return_dict, experts, timesteps)
