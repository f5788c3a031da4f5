"""`Wan22Pipeline`: Wan 2.2 text-to-video (T2V-A14B mixture of experts, or the dense TI2V-5B in text mode)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from transformers import AutoTokenizer, UMT5EncoderModel

from ..hooks.precision import check_serializable
from ..loaders.lora import Wan22LoraLoaderMixin
from ..models.transformer_wan_moe import WanMoETransformer3DModel
from .checks import check_fits_in_memory, check_moe_inputs, check_video_size, prompt_batch
from .pipeline_output import Wan22PipelineOutput
from .pipeline_utils import Wan22BasePipeline

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers.utils import export_to_video
        >>> from diffusers_wan22 import Wan22Pipeline

        >>> pipe = Wan22Pipeline.from_official("./Wan2.2-T2V-A14B", torch_dtype=torch.bfloat16)
        >>> pipe.enable_model_cpu_offload()  # one expert on the GPU at a time
        >>> out = pipe("Two cats boxing on a stage.", height=480, width=832)
        >>> export_to_video(out.frames[0], "cats.mp4", fps=16)
        >>> out.experts  # ['high', ..., 'high', 'low', ..., 'low']
        ```
"""


def text_branches(prompt_embeds, negative_prompt_embeds) -> tuple[dict, dict | None]:
    """The transformer keyword arguments of the conditional / unconditional branch of a text-conditioned call."""
    uncond = None if negative_prompt_embeds is None else {"encoder_hidden_states": negative_prompt_embeds}
    return {"encoder_hidden_states": prompt_embeds}, uncond


class Wan22VideoPipeline(Wan22LoraLoaderMixin, Wan22BasePipeline):
    """What the text- and image-to-video pipelines share on top of `Wan22BasePipeline`: their components, the A14B
    mixture of experts (per-expert precision, checked saving, ``expert_steps`` / ``boundary_ratio``) or the dense
    TI2V-5B, their call defaults and checks."""

    def __init__(
        self,
        tokenizer: AutoTokenizer,
        text_encoder: UMT5EncoderModel,
        transformer: WanMoETransformer3DModel | WanTransformer3DModel,
        vae: AutoencoderKLWan,
        scheduler,
    ):
        super().__init__()
        self.register_wan_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
                                  scheduler=scheduler)

    def resolve_call_defaults(self, num_frames, num_inference_steps, expert_steps, guidance_scale, guidance_scale_2):
        """(num_frames, num_inference_steps, (high, low) guidance) with the variant's official defaults filled in."""
        d = self.variant_defaults
        num_frames = d.num_frames if num_frames is None else num_frames
        if num_inference_steps is None:
            num_inference_steps = sum(expert_steps) if expert_steps is not None else d.sample_steps
        return num_frames, num_inference_steps, self.resolve_guidance(guidance_scale, guidance_scale_2)

    def video_output(self, latents, output_type: str, return_dict: bool, experts: list[str], timesteps):
        """Decode (unless ``output_type="latent"``), release offload hooks, and wrap the result."""
        video = self.decode_latents(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (video,)
        return Wan22PipelineOutput(frames=video, experts=experts, timesteps=[float(t) for t in timesteps.tolist()])

    def check_text_call(self, height, width, num_frames, num_inference_steps, boundary_ratio, expert_steps, latents,
                        **common) -> None:
        """Every check of a text-to-video (or image-to-video) call, before any model runs."""
        self.check_inputs(num_inference_steps=num_inference_steps, **common)
        check_video_size(self, height, width, num_frames)
        check_moe_inputs(self, num_inference_steps, boundary_ratio, expert_steps)
        if latents is not None and (not isinstance(latents, torch.Tensor) or latents.ndim != 5):
            raise ValueError("`latents` must be a 5-D tensor [B, C, F, H, W]; got "
                             f"{getattr(latents, 'shape', type(latents).__name__)}.")
        self._check_parallel_inputs(height, width, num_frames)  # context parallel: tokens split evenly
        batch = prompt_batch(common.get("prompt"), common.get("prompt_embeds"), common["num_videos_per_prompt"])
        check_fits_in_memory(self, self._execution_device, height, width, num_frames, batch)

    def set_expert_precision(self, high: str | None = None, low: str | None = None, scope: str = "all",
                             compute_dtype: torch.dtype | str | None = None) -> dict:
        """Store / compute each A14B expert in its own precision (``None`` leaves an expert unchanged).

        Policies: ``"fp32"``, ``"bf16"``, ``"fp16"`` (cast), ``"fp8"`` (fp8 storage, ``compute_dtype`` compute via
        diffusers layerwise casting), ``"int8-weight-only"`` / ``"fp8-weight-only"`` (torchao). ``scope`` limits a
        quantizing policy to ``"ffn"``, ``"attn"`` or ``"ffn+attn"`` of the blocks. Unsupported combinations raise.
        Apply it before enabling lazy experts. See `diffusers_wan22.hooks.precision` and docs/quantization.md.

        Example: ``pipe.set_expert_precision(high="fp8", low="fp8", scope="ffn")``.
        """
        if not self.is_moe:
            raise ValueError("`set_expert_precision` needs the A14B mixture of experts; for a dense transformer use "
                             "`diffusers_wan22.apply_precision(pipe.transformer, policy, scope)`.")
        if self.lazy_experts is not None:
            raise ValueError("Lazy experts are enabled: they re-read the saved weights, so set the precision before "
                             "`enable_lazy_experts` (or save the quantized pipeline and load it with lazy_experts).")
        return self.transformer.set_expert_precision(high=high, low=low, scope=scope, compute_dtype=compute_dtype)

    def save_pretrained(self, save_directory, safe_serialization: bool = True, variant: str | None = None,
                        max_shard_size: int | str | None = None, push_to_hub: bool = False,
                        use_flashpack: bool = False, **kwargs):
        """`DiffusionPipeline.save_pretrained`; checks first that every expert can be written (not torchao/GGUF),
        so a refused save leaves no partial folder behind."""
        if self.is_moe:
            check_serializable(self.transformer)
        return super().save_pretrained(save_directory, safe_serialization=safe_serialization, variant=variant,
                                       max_shard_size=max_shard_size, push_to_hub=push_to_hub,
                                       use_flashpack=use_flashpack, **kwargs)


class Wan22Pipeline(Wan22VideoPipeline):
    r"""Wan 2.2 text-to-video with the A14B mixture of experts (or a dense Wan 2.2 transformer).

    It accepts the same `__call__` arguments as diffusers' `WanPipeline` (`guidance_scale` drives the high-noise
    expert, `guidance_scale_2` the low-noise expert), but samples exactly like the official code: the official
    timestep grid for UniPC / DPM-Solver++ / Euler, the expert chosen per step from the timestep the scheduler
    produces, official defaults (size, frames, steps, guidance, negative prompt). The output also lists the expert
    that ran at each step.

    Components:
        tokenizer (`AutoTokenizer`): the umt5-xxl tokenizer.
        text_encoder (`UMT5EncoderModel`): the umt5-xxl encoder.
        transformer (`WanMoETransformer3DModel` or `WanTransformer3DModel`): the denoiser.
        vae (`AutoencoderKLWan`): Wan 2.1 VAE (A14B) or Wan 2.2 VAE (TI2V-5B).
        scheduler: a flow-matching scheduler (`UniPCMultistepScheduler` by default).
    """

    _variants = ("t2v-A14B", "ti2v-5B")

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
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
        r"""Generate a video from a text prompt.

        Arguments are those of diffusers' `WanPipeline.__call__`; ``None`` means the loaded variant's official default
        (T2V-A14B: 1280x720, 81 frames, 40 steps, guidance 4.0 high / 3.0 low; TI2V-5B: 1280x704, 121 frames, 50
        steps, 5.0) and the official negative prompt. `guidance_scale` drives the high-noise expert, `guidance_scale_2`
        the low-noise one (default: `guidance_scale`); a step runs CFG when its scale > 1. `latents`: initial noise
        `[B, C, F_lat, H/8, W/8]`. `callback_on_step_end`: diffusers' contract (`pipe.current_expert` names the expert).

        Args:
            boundary_ratio: override the transformer's expert switch point (0..1).
            expert_steps: ``(n_high, n_low)`` steps per expert (e.g. ``(2, 2)`` for 4-step distilled LoRAs): the sigma
                grid is split at the boundary; `num_inference_steps` defaults to their sum.
            batched_cfg: run the conditional and unconditional branches as one batch of 2.
            callback_on_expert_switch: ``fn(pipe, step, timestep, old, new)`` once at the switch.

        Returns:
            `Wan22PipelineOutput` with `.frames`, `.experts` (expert per step) and `.timesteps`, or `(frames,)`.
        """
        tensor_inputs = self.resolve_callback_inputs(callback_on_step_end, callback_on_step_end_tensor_inputs)
        d = self.variant_defaults
        height, width = (d.height if height is None else height), (d.width if width is None else width)
        num_frames, num_inference_steps, guidance = self.resolve_call_defaults(
            num_frames, num_inference_steps, expert_steps, guidance_scale, guidance_scale_2)

        # 1. Check inputs (before any heavy work)
        self.check_text_call(
            height, width, num_frames, num_inference_steps, boundary_ratio, expert_steps, latents, prompt=prompt,
            negative_prompt=negative_prompt, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            guidance=guidance, num_videos_per_prompt=num_videos_per_prompt, output_type=output_type,
            callback_on_step_end_tensor_inputs=tensor_inputs, max_sequence_length=max_sequence_length)
        device = self.begin_call(guidance, attention_kwargs, batched_cfg)

        # 2. Timesteps, and the expert + guidance of every step (refuses a schedule needing a missing expert)
        timesteps, experts, step_scales = self.plan_steps(num_inference_steps, guidance, device, boundary_ratio,
                                                          expert_steps)
        self._do_cfg = any(g > 1.0 for g in step_scales)  # the negative prompt is encoded only if a step uses it

        # 3. Encode the prompts
        prompt_embeds, negative_prompt_embeds = self.encode_prompts(
            prompt, negative_prompt, self._do_cfg, num_videos_per_prompt, prompt_embeds, negative_prompt_embeds,
            max_sequence_length, device)

        # 4. Initial noise
        batch = prompt_embeds.shape[0]
        latents = self.initial_latents(batch, num_frames, height, width, generator, latents, device)

        # 5. Denoise
        latents = self.denoise(
            latents, timesteps, experts, step_scales, *text_branches(prompt_embeds, negative_prompt_embeds),
            attention_kwargs=attention_kwargs, callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=tensor_inputs, callback_on_expert_switch=callback_on_expert_switch)

        # 6. Decode
        return self.video_output(latents, output_type, return_dict, experts, timesteps)
