"""`Wan22Pipeline`: Wan 2.2 text-to-video (T2V-A14B mixture of experts, or the dense TI2V-5B in text mode)."""

from __future__ import annotations

import os
from typing import Any, Callable

import torch
from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.pipeline_utils import DiffusionPipeline  # noqa: F401  (loader base-class lookup)
from diffusers.utils.torch_utils import get_module_execution_device
from diffusers.video_processor import VideoProcessor
from transformers import AutoTokenizer, UMT5EncoderModel

from ..configs import VARIANTS, VariantDefaults
from ..lora import Wan22LoraLoaderMixin
from ..models.transformer_wan_moe import WanMoETransformer3DModel
from ..offload import Wan22OffloadMixin
from ..parallel import Wan22ParallelMixin
from ..scheduling import (
    HIGH,
    boundary_timestep,
    expert_split_unshifted_sigmas,
    plan_experts,
    set_official_timesteps,
    solver_family,
)
from .pipeline_output import Wan22PipelineOutput

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


class Wan22Pipeline(Wan22OffloadMixin, Wan22ParallelMixin, Wan22LoraLoaderMixin, WanPipeline):
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

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _optional_components: list[str] = []

    def __init__(
        self,
        tokenizer: AutoTokenizer,
        text_encoder: UMT5EncoderModel,
        transformer: WanMoETransformer3DModel | WanTransformer3DModel,
        vae: AutoencoderKLWan,
        scheduler,
    ):
        DiffusionPipeline.__init__(self)
        # `vae` and `text_encoder` come first: `_execution_device` looks at components in this order.
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, scheduler=scheduler
        )
        self.vae_scale_factor_temporal = self.vae.config.scale_factor_temporal if vae is not None else 4
        self.vae_scale_factor_spatial = self.vae.config.scale_factor_spatial if vae is not None else 8
        self.video_processor = VideoProcessor(vae_scale_factor=self.vae_scale_factor_spatial)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_official(cls, ckpt_dir: str | os.PathLike, torch_dtype: torch.dtype | None = None, **kwargs):
        """Build the pipeline straight from an official Wan 2.2 checkpoint folder (as downloaded).

        Reads `high_noise_model/` + `low_noise_model/` (A14B) or the root DiT (TI2V-5B), the official T5 `.pth`,
        the VAE `.pth` and `google/umt5-xxl/`; the scheduler is UniPC with the variant's official shift.
        ``expert_precision={"high": ..., "low": ..., "scope": ...}`` applies `set_expert_precision` after loading.
        ``lazy_experts=True`` (with ``prefetch_steps`` / ``prefetch_bytes``) reads no expert now: each is read from
        the official folder at its first step and released when the other runs (host RAM holds one expert).
        """
        from ..loading import load_official_components

        expert_precision = kwargs.pop("expert_precision", None)
        lazy = kwargs.pop("lazy_experts", False)
        lazy_kwargs = {k: kwargs.pop(k) for k in ("prefetch_steps", "prefetch_bytes") if k in kwargs}
        pipe = cls(**load_official_components(ckpt_dir, torch_dtype=torch_dtype, lazy_experts=lazy, **kwargs))
        if lazy:  # the experts stay on meta; each is read from the official folder at its first step
            from ..loading import official_expert_sources

            pipe.enable_lazy_experts(official_expert_sources(ckpt_dir), **lazy_kwargs)
        if expert_precision is not None:  # e.g. {"high": "fp8", "low": "fp8", "scope": "ffn"}
            pipe.set_expert_precision(**expert_precision)
        return pipe

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        """`DiffusionPipeline.from_pretrained`, plus: stock Wan 2.2 diffusers folders and Hub repo ids.

        * A folder in the stock layout of the `Wan-AI/Wan2.2-*-Diffusers` repos (`transformer/` + `transformer_2/`,
          `boundary_ratio` in `model_index.json`) is assembled into a `WanMoETransformer3DModel`.
        * A Hub repo id is downloaded with `huggingface_hub.snapshot_download` first (diffusers 0.42's own download
          step rejects third-party component libraries such as ours).
        """
        from ..loading import resolve_pipeline_folder

        folder, index = resolve_pipeline_folder(pretrained_model_name_or_path, kwargs)
        if "transformer_2" not in index:
            return super().from_pretrained(folder, **kwargs)
        stock = DiffusionPipeline.from_pretrained(folder, **kwargs)  # diffusers' own WanPipeline / I2V pipeline
        transformer = stock.transformer
        if stock.transformer_2 is not None:
            transformer = WanMoETransformer3DModel.from_experts(
                stock.transformer, stock.transformer_2, boundary_ratio=stock.config.boundary_ratio,
                num_train_timesteps=stock.scheduler.config.num_train_timesteps,
            )
        return cls(tokenizer=stock.tokenizer, text_encoder=stock.text_encoder, transformer=transformer,
                   vae=stock.vae, scheduler=stock.scheduler)

    # ------------------------------------------------------------------ precision
    def set_expert_precision(self, high: str | None = None, low: str | None = None, scope: str = "all",
                             compute_dtype: torch.dtype | str | None = None) -> dict:
        """Store / compute each A14B expert in its own precision (``None`` leaves an expert unchanged).

        Policies: ``"fp32"``, ``"bf16"``, ``"fp16"`` (cast), ``"fp8"`` (fp8 storage, ``compute_dtype`` compute via
        diffusers layerwise casting), ``"int8-weight-only"`` / ``"fp8-weight-only"`` (torchao). ``scope`` limits a
        quantizing policy to ``"ffn"``, ``"attn"`` or ``"ffn+attn"`` of the blocks. Unsupported combinations raise.
        Apply it before enabling lazy experts. See `diffusers_wan22.quantization` and docs/quantization.md.

        Example: ``pipe.set_expert_precision(high="fp8", low="fp8", scope="ffn")``.
        """
        if not self.is_moe:
            raise ValueError("`set_expert_precision` needs the A14B mixture of experts; for a dense transformer use "
                             "`diffusers_wan22.quantization.apply_precision(pipe.transformer, policy, scope)`.")
        if getattr(self, "_lazy_experts", None) is not None:
            raise ValueError("Lazy experts are enabled: they re-read the saved weights, so set the precision before "
                             "`enable_lazy_experts` (or save the quantized pipeline and load it with lazy_experts).")
        return self.transformer.set_expert_precision(high=high, low=low, scope=scope, compute_dtype=compute_dtype)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`DiffusionPipeline.save_pretrained`; checks first that every expert can be written (not torchao/GGUF),
        so a refused save leaves no partial folder behind."""
        if self.is_moe:
            from ..quantization import check_serializable

            check_serializable(self.transformer)
        return super().save_pretrained(save_directory, *args, **kwargs)

    # ------------------------------------------------------------------ properties
    @property
    def is_moe(self) -> bool:
        return isinstance(self.transformer, WanMoETransformer3DModel)

    @property
    def variant_defaults(self) -> VariantDefaults:
        """Official sampling defaults that fit the loaded transformer."""
        return VARIANTS["t2v-A14B"] if self.is_moe else VARIANTS["ti2v-5B"]

    @property
    def current_expert(self) -> str | None:
        """The expert running the current step (``"high"``/``"low"``), ``None`` outside the loop."""
        return getattr(self, "_current_expert", None)

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._do_cfg

    @property
    def transformer_dtype(self) -> torch.dtype:
        # A MoE whose experts compute in different dtypes gets the widest one; each expert casts down.
        return self.transformer.input_dtype if self.is_moe else self.transformer.dtype

    @property
    def transformer_config(self):
        return self.transformer.config

    # ------------------------------------------------------------------ checks
    def check_call_inputs(
        self,
        prompt,
        negative_prompt,
        height: int,
        width: int,
        num_frames: int,
        num_inference_steps: int,
        guidance_scales: tuple[float, float],
        boundary_ratio: float | None,
        prompt_embeds=None,
        negative_prompt_embeds=None,
        latents=None,
        callback_on_step_end_tensor_inputs=None,
        expert_steps: tuple[int, int] | None = None,
    ) -> None:
        """Validate every argument before any model runs; each error names the value and what is allowed."""
        if prompt is None and prompt_embeds is None:
            raise ValueError("Provide either `prompt` or `prompt_embeds`.")
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("Pass either `prompt` or `prompt_embeds`, not both.")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("Pass either `negative_prompt` or `negative_prompt_embeds`, not both.")
        for name, value in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if value is not None and not (isinstance(value, str) or (
                    isinstance(value, list) and value and all(isinstance(v, str) for v in value))):
                raise ValueError(f"`{name}` must be a string or a non-empty list of strings; got {type(value).__name__}.")
        if isinstance(prompt, list) and isinstance(negative_prompt, list) and len(prompt) != len(negative_prompt):
            raise ValueError(
                f"`negative_prompt` has {len(negative_prompt)} entries but `prompt` has {len(prompt)}; they must match."
            )
        unknown = [k for k in callback_on_step_end_tensor_inputs or [] if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` may only name {self._callback_tensor_inputs}; got {unknown}."
            )
        multiple = self.vae_scale_factor_spatial * self.transformer_config.patch_size[1]
        if height <= 0 or width <= 0 or height % multiple or width % multiple:
            raise ValueError(
                f"`height` and `width` must be positive multiples of {multiple} (VAE stride "
                f"{self.vae_scale_factor_spatial} x patch 2); got height={height}, width={width}."
            )
        if num_frames < 1 or (num_frames - 1) % self.vae_scale_factor_temporal:
            raise ValueError(
                f"`num_frames` must be {self.vae_scale_factor_temporal}k+1 (1, 5, 9, ..., 81, ...); got {num_frames}."
            )
        if not isinstance(num_inference_steps, int) or not 1 <= num_inference_steps <= 1000:
            raise ValueError(f"`num_inference_steps` must be an integer in [1, 1000]; got {num_inference_steps!r}.")
        for name, g in zip(("guidance_scale", "guidance_scale_2"), guidance_scales):
            if g < 0:
                raise ValueError(f"`{name}` must be >= 0; got {g}.")
        if boundary_ratio is not None and not 0.0 <= boundary_ratio <= 1.0:
            raise ValueError(f"`boundary_ratio` must be in [0, 1]; got {boundary_ratio}.")
        if boundary_ratio is not None and not self.is_moe:
            raise ValueError("`boundary_ratio` only applies to a mixture-of-experts transformer; this one is dense.")
        if expert_steps is not None:
            if not self.is_moe:
                raise ValueError("`expert_steps` only applies to a mixture-of-experts transformer; this one is dense.")
            if (len(expert_steps) != 2 or any(not isinstance(n, int) or n < 0 for n in expert_steps)
                    or sum(expert_steps) != num_inference_steps):
                raise ValueError(
                    f"`expert_steps` must be (n_high, n_low), two non-negative integers summing to "
                    f"`num_inference_steps`={num_inference_steps}; got {tuple(expert_steps)}."
                )
        if prompt_embeds is not None and negative_prompt_embeds is not None:
            if prompt_embeds.shape != negative_prompt_embeds.shape:
                raise ValueError(
                    f"`prompt_embeds` {tuple(prompt_embeds.shape)} and `negative_prompt_embeds` "
                    f"{tuple(negative_prompt_embeds.shape)} must have the same shape."
                )
        if latents is not None and latents.ndim != 5:
            raise ValueError(f"`latents` must be a 5-D tensor [B, C, F, H, W]; got shape {tuple(latents.shape)}.")
        self._check_parallel_inputs(height, width, num_frames)  # context parallel: tokens split evenly

    def _check_latents_shape(self, latents: torch.Tensor, expected: tuple[int, ...]) -> None:
        if tuple(latents.shape) != tuple(expected):
            raise ValueError(
                f"`latents` has shape {tuple(latents.shape)} but this call needs {tuple(expected)} "
                "([batch, channels, latent frames, height/stride, width/stride])."
            )

    # ------------------------------------------------------------------ pieces shared by the Wan 2.2 pipelines
    def resolve_guidance(self, guidance_scale: float | None, guidance_scale_2: float | None) -> tuple[float, float]:
        """(high-noise scale, low-noise scale): official defaults, or `guidance_scale` for both as diffusers does."""
        d = self.variant_defaults
        if guidance_scale is None:
            guidance_scale = d.guidance_scale
            if guidance_scale_2 is None:
                guidance_scale_2 = d.guidance_scale_2
        if guidance_scale_2 is None:
            guidance_scale_2 = guidance_scale
        return float(guidance_scale), float(guidance_scale_2)

    def encode_prompts(
        self,
        prompt,
        negative_prompt,
        do_cfg: bool,
        num_videos_per_prompt: int,
        prompt_embeds,
        negative_prompt_embeds,
        max_sequence_length: int,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode prompt and negative prompt (official default negative prompt when none is given)."""
        if do_cfg and negative_prompt is None and negative_prompt_embeds is None:
            n = 1 if prompt is None or isinstance(prompt, str) else len(prompt)
            n = n if prompt is not None else prompt_embeds.shape[0]
            negative_prompt = [self.variant_defaults.negative_prompt] * n
            if isinstance(prompt, str):
                negative_prompt = negative_prompt[0]
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt=prompt,
            negative_prompt=negative_prompt,
            do_classifier_free_guidance=do_cfg,
            num_videos_per_prompt=num_videos_per_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            max_sequence_length=max_sequence_length,
            device=self._text_encoder_device(device),
        )
        dtype = self.transformer_dtype
        prompt_embeds = prompt_embeds.to(device=device, dtype=dtype)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.to(device=device, dtype=dtype)
        return prompt_embeds, negative_prompt_embeds

    def _text_encoder_device(self, device: torch.device) -> torch.device:
        """Where the prompts are encoded: on the text encoder's own device when it was deliberately left elsewhere
        (official `--t5_cpu`: `pipe.to("cuda"); pipe.text_encoder.to("cpu")`), else on the execution device
        (offload hooks move the encoder there themselves)."""
        encoder = self.text_encoder
        if encoder is None or hasattr(encoder, "_hf_hook") or getattr(encoder, "_diffusers_hook", None) is not None:
            return device
        return encoder.device

    def plan_steps(
        self,
        num_inference_steps: int,
        boundary_ratio: float | None,
        guidance_scales: tuple[float, float],
        device,
        expert_steps: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, list[str], list[float]]:
        """Set the official timestep grid and decide, before the loop, the expert and guidance of every step.

        With ``expert_steps=(n_high, n_low)`` the grid is split at the boundary instead (see
        `expert_split_unshifted_sigmas`), so exactly that many steps run on each expert.
        """
        boundary_t = None
        if self.is_moe:
            ratio = self.transformer.config.boundary_ratio if boundary_ratio is None else boundary_ratio
            boundary_t = boundary_timestep(ratio, self.transformer.config.num_train_timesteps)
        sigmas = None
        if expert_steps is not None:
            shift = self.scheduler.config.get("flow_shift", None) or self.scheduler.config.get("shift", 1.0)
            sigmas = expert_split_unshifted_sigmas(
                *expert_steps, boundary_t, shift, solver_family(self.scheduler),
                self.transformer.config.num_train_timesteps,
            )
        timesteps = set_official_timesteps(self.scheduler, num_inference_steps, device=device, unshifted_sigmas=sigmas)
        experts = plan_experts(timesteps, boundary_t)
        if self.is_moe:
            missing = sorted(set(experts) - set(self.transformer.loaded_experts))
            if missing:
                steps = [i for i, e in enumerate(experts) if e in missing]
                raise ValueError(
                    f"This schedule needs the {missing[0]}-noise expert at steps {steps} (boundary t={boundary_t:g}) "
                    f"but only {self.transformer.loaded_experts} is loaded; load it, or keep the schedule on the "
                    "loaded expert with `boundary_ratio` or `expert_steps`."
                )
        scales = [guidance_scales[0] if e == HIGH else guidance_scales[1] for e in experts]
        return timesteps, experts, scales

    def _run_model(self, expert: str, latent_model_input, timestep, encoder_hidden_states, attention_kwargs, branch,
                   cache_kwargs):
        with self.transformer.cache_context(branch, **cache_kwargs):
            kwargs = dict(
                hidden_states=latent_model_input, timestep=timestep, encoder_hidden_states=encoder_hidden_states,
                attention_kwargs=attention_kwargs, return_dict=False,
            )
            if self.is_moe:
                kwargs["expert"] = expert
            return self.transformer(**kwargs)[0]

    def predict_noise(self, expert: str, model_input, timestep, guidance_scale: float, prompt_embeds,
                      negative_prompt_embeds, attention_kwargs, cache_kwargs) -> torch.Tensor:
        """One step's (guided) flow prediction: ``uncond + g * (cond - uncond)`` when ``g > 1``, else ``cond``.

        With batched CFG the two branches run as one batch of 2 (fewer, larger kernel launches; the diffusers
        FasterCache hook also expects this layout), otherwise as two calls like the official code.
        """
        if negative_prompt_embeds is None or guidance_scale <= 1.0:
            return self._run_model(expert, model_input, timestep, prompt_embeds, attention_kwargs, "cond",
                                   cache_kwargs)
        if self._batched_cfg:
            both = self._run_model(
                expert, torch.cat([model_input, model_input]), torch.cat([timestep, timestep]),
                torch.cat([prompt_embeds, negative_prompt_embeds]), attention_kwargs, "cond_uncond", cache_kwargs,
            )
            cond, uncond = both.chunk(2)
        else:
            cond = self._run_model(expert, model_input, timestep, prompt_embeds, attention_kwargs, "cond",
                                   cache_kwargs)
            uncond = self._run_model(expert, model_input, timestep, negative_prompt_embeds, attention_kwargs,
                                     "uncond", cache_kwargs)
        return uncond + guidance_scale * (cond - uncond)

    def _on_expert_switch(self, step: int, timestep, previous: str, expert: str, callback) -> None:
        # No cached residual may cross experts: drop the outgoing expert's cache state.
        if self.is_moe and self.transformer.get_expert(previous).is_cache_enabled:
            self.transformer.get_expert(previous)._reset_stateful_cache()
        if callback is not None:
            callback(self, step, timestep, previous, expert)

    def denoise(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        experts: list[str],
        guidance_scales: list[float],
        prompt_embeds: torch.Tensor,
        negative_prompt_embeds: torch.Tensor | None,
        condition: torch.Tensor | None = None,
        first_frame_latents: torch.Tensor | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        callback_on_expert_switch: Callable | None = None,
    ) -> torch.Tensor:
        """The Wan 2.2 denoising loop, shared by every Wan 2.2 pipeline.

        Args:
            condition: channels concatenated to the model input every step (I2V-A14B: mask + image latent).
            first_frame_latents: clean latent frame 0 kept fixed (TI2V image mode): its tokens get timestep 0
                and the frame is re-set after every scheduler step.
        """
        dtype = self.transformer_dtype
        self._num_timesteps = len(timesteps)
        self.scheduler.set_begin_index(0)
        sigmas = self.scheduler.sigmas.tolist()  # one host copy; cache hooks read the sigma of each step
        token_mask = None
        if first_frame_latents is not None:  # new tensors, never writing into the caller's `latents`
            latents = torch.cat([first_frame_latents.to(latents.dtype), latents[:, :, 1:]], dim=2)
            token_mask = self._first_frame_token_mask(latents)

        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                self._current_timestep = t
                self._before_step(i, experts)  # memory modes: materialise / prefetch experts
                if i and experts[i] != experts[i - 1]:
                    self._on_expert_switch(i, t, experts[i - 1], experts[i], callback_on_expert_switch)
                self._current_expert = experts[i]
                model_input = latents.to(dtype)
                if condition is not None:
                    model_input = torch.cat([model_input, condition.to(dtype)], dim=1)
                batch = latents.shape[0]
                timestep = t.expand(batch) if token_mask is None else (token_mask * t).unsqueeze(0).expand(batch, -1)
                cache_kwargs = {"step_index": i, "sigma": sigmas[i], "num_inference_steps": len(timesteps)}

                noise_pred = self.predict_noise(experts[i], model_input, timestep, guidance_scales[i], prompt_embeds,
                                                negative_prompt_embeds, attention_kwargs, cache_kwargs)

                latents = self.scheduler.step(noise_pred.float(), t, latents, return_dict=False)[0]
                if first_frame_latents is not None:
                    latents = torch.cat([first_frame_latents.to(latents.dtype), latents[:, :, 1:]], dim=2)

                if callback_on_step_end is not None:
                    available = {"latents": latents, "prompt_embeds": prompt_embeds,
                                 "negative_prompt_embeds": negative_prompt_embeds}
                    callback_kwargs = {k: available[k] for k in callback_on_step_end_tensor_inputs or []}
                    callback_kwargs["expert"] = experts[i]
                    out = callback_on_step_end(self, i, t, callback_kwargs) or {}
                    latents = out.pop("latents", latents)
                    prompt_embeds = out.pop("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = out.pop("negative_prompt_embeds", negative_prompt_embeds)
                progress_bar.update()

        self._current_timestep = None
        self._current_expert = None
        return latents

    def _first_frame_token_mask(self, latents: torch.Tensor) -> torch.Tensor:
        """Per-token timestep multipliers: 0 for latent frame 0's tokens, 1 elsewhere (flattened token order)."""
        p = self.transformer_config.patch_size
        f, h, w = latents.shape[2] // p[0], latents.shape[3] // p[1], latents.shape[4] // p[2]
        mask = torch.ones(f, h, w, device=latents.device, dtype=torch.float32)
        mask[0] = 0
        return mask.flatten()

    def resolve_call_defaults(self, num_frames, num_inference_steps, expert_steps, guidance_scale, guidance_scale_2):
        """(num_frames, num_inference_steps, (high, low) guidance) with the variant's official defaults filled in."""
        d = self.variant_defaults
        num_frames = d.num_frames if num_frames is None else num_frames
        if num_inference_steps is None:
            num_inference_steps = sum(expert_steps) if expert_steps is not None else d.sample_steps
        return num_frames, num_inference_steps, self.resolve_guidance(guidance_scale, guidance_scale_2)

    def begin_call(self, scales, attention_kwargs, batched_cfg: bool, prompt, prompt_embeds) -> tuple:
        """Reset the per-call state; returns (execution device, prompt batch size)."""
        self._guidance_scale, self._guidance_scale_2 = scales
        self._attention_kwargs = attention_kwargs
        self._batched_cfg = batched_cfg
        self._current_timestep = None
        self._interrupt = False
        batch_size = 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else prompt_embeds.shape[0]
        return self._execution_device, batch_size

    def initial_latents(self, batch: int, num_frames: int, height: int, width: int, generator, latents, device):
        """The initial noise ``[B, C, F_lat, H/s, W/s]`` (float32, on ``device``): the caller's, checked, or drawn."""
        channels = self.transformer_config.out_channels
        shape = (batch, channels, (num_frames - 1) // self.vae_scale_factor_temporal + 1,
                 height // self.vae_scale_factor_spatial, width // self.vae_scale_factor_spatial)
        if latents is not None:
            self._check_latents_shape(latents, shape)
        return self.prepare_latents(batch, channels, height, width, num_frames, torch.float32, device, generator,
                                    latents)

    def _latent_stats(self, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's latent mean and 1/std, shaped to broadcast over ``[B, C, F, H, W]``."""
        cfg = self.vae.config
        mean = torch.tensor(cfg.latents_mean, device=device, dtype=dtype).view(1, cfg.z_dim, 1, 1, 1)
        # 1/std (not std), as the official code and diffusers use it: same float rounding.
        inv_std = 1.0 / torch.tensor(cfg.latents_std, device=device, dtype=dtype).view(1, cfg.z_dim, 1, 1, 1)
        return mean, inv_std

    def encode_image_latents(self, frames: torch.Tensor) -> torch.Tensor:
        """Normalised VAE latent (posterior mean) of a ``[B, 3, F, H, W]`` video in [-1, 1]."""
        device = get_module_execution_device(self.vae)
        mu = self.vae.encode(frames.to(device, self.vae.dtype)).latent_dist.mean.float()
        mean, inv_std = self._latent_stats(device, torch.float32)
        return (mu - mean) * inv_std

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Un-normalise normalised latents and decode them: ``[B, 3, F, H, W]`` in [-1, 1]."""
        vae_device = get_module_execution_device(self.vae)
        latents = latents.to(vae_device, dtype=self.vae.dtype)
        mean, inv_std = self._latent_stats(vae_device, latents.dtype)
        return self.vae.decode(latents / inv_std + mean, return_dict=False)[0]

    def decode_latents(self, latents: torch.Tensor, output_type: str):
        """Decode the latents with the VAE (or return them for ``output_type="latent"``)."""
        if output_type == "latent":
            return latents
        return self.video_processor.postprocess_video(self.vae_decode(latents), output_type=output_type)

    # ------------------------------------------------------------------ call
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

        Arguments are those of diffusers' `WanPipeline.__call__`; `None` means the official default of the loaded
        variant (T2V-A14B: 1280x720, 81 frames, 40 steps, guidance 4.0 high-noise / 3.0 low-noise; TI2V-5B text
        mode: 1280x704, 121 frames, 50 steps, guidance 5.0). The official negative prompt is used when none is given.

        Args:
            guidance_scale (`float`, *optional*): guidance of the high-noise expert (the only one for dense models).
            guidance_scale_2 (`float`, *optional*): guidance of the low-noise expert; defaults to `guidance_scale`
                when only that is given, as in diffusers. A step runs classifier-free guidance when its scale > 1.
            latents (`torch.Tensor`, *optional*): initial noise `[B, C, F_lat, H/8, W/8]` (e.g. an official run's).
            boundary_ratio (`float`, *optional*): override the transformer's expert switch point (0..1).
            expert_steps (`tuple[int, int]`, *optional*): ``(n_high, n_low)`` steps on each expert (e.g. ``(2, 2)``
                for 4-step distilled LoRAs); the sigma grid is split so the switch lands on the boundary.
                `num_inference_steps` defaults to their sum.
            batched_cfg (`bool`): run the conditional and unconditional branches as one batch of 2.
            callback_on_expert_switch: called once at the switch as `fn(pipe, step, timestep, old, new)`.
            callback_on_step_end: called as `fn(pipe, step, timestep, callback_kwargs)`; `callback_kwargs` holds
                the requested tensors and `"expert"` (the expert that ran this step).

        Returns:
            `Wan22PipelineOutput` with `.frames`, `.experts` (expert per step) and `.timesteps`, or `(frames,)`.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        d = self.variant_defaults
        height = d.height if height is None else height
        width = d.width if width is None else width
        num_frames, num_inference_steps, scales = self.resolve_call_defaults(
            num_frames, num_inference_steps, expert_steps, guidance_scale, guidance_scale_2
        )

        # 1. Check inputs (before any heavy work)
        self.check_call_inputs(
            prompt, negative_prompt, height, width, num_frames, num_inference_steps, scales, boundary_ratio,
            prompt_embeds, negative_prompt_embeds, latents, callback_on_step_end_tensor_inputs, expert_steps,
        )
        device, batch_size = self.begin_call(scales, attention_kwargs, batched_cfg, prompt, prompt_embeds)

        # 2. Timesteps, and the expert + guidance of every step (cheap; refuses a schedule needing a missing expert)
        timesteps, experts, step_scales = self.plan_steps(
            num_inference_steps, boundary_ratio, scales, device, expert_steps
        )
        self._do_cfg = any(g > 1.0 for g in step_scales)  # the negative prompt is encoded only if a step uses it

        # 3. Encode the prompts
        prompt_embeds, negative_prompt_embeds = self.encode_prompts(
            prompt, negative_prompt, self._do_cfg, num_videos_per_prompt, prompt_embeds, negative_prompt_embeds,
            max_sequence_length, device,
        )

        # 4. Initial noise
        latents = self.initial_latents(batch_size * num_videos_per_prompt, num_frames, height, width, generator,
                                       latents, device)

        # 5. Denoise
        latents = self.denoise(
            latents, timesteps, experts, step_scales, prompt_embeds, negative_prompt_embeds,
            attention_kwargs=attention_kwargs, callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            callback_on_expert_switch=callback_on_expert_switch,
        )

        # 6. Decode
        video = self.decode_latents(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (video,)
        return Wan22PipelineOutput(frames=video, experts=experts, timesteps=[float(t) for t in timesteps.tolist()])
