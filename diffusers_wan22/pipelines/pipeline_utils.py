"""`Wan22BasePipeline`: what every Wan 2.2 pipeline shares, above all the one denoising loop (`denoise`).

Each pipeline's ``__call__`` reads as: check inputs -> encode -> timesteps (and the expert of every step) ->
latents -> `denoise` -> decode. Pipelines differ only in what they feed the transformer, which they hand to the loop
as keyword arguments per guidance branch (``cond`` / ``uncond``): T2V the prompt embeddings; I2V a condition
concatenated to the latents; TI2V a clean first latent frame; S2V audio, reference and motion latents, clip by
clip. The loop owns everything else, in one place: the interrupt flag, the memory-mode hook before each step,
diffusers' cache contexts, the expert switch (cache reset + ``callback_on_expert_switch``), classifier-free guidance
(sequential or batched), the scheduler step, diffusers' ``callback_on_step_end`` contract and the progress bar.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from diffusers import AutoencoderKLWan, DiffusionPipeline, WanPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils.torch_utils import get_module_execution_device, randn_tensor
from diffusers.video_processor import VideoProcessor

from .._compat import WAN_T5_PROMPT_EMBEDS, diffusers_hook_registry, has_accelerate_hook, reset_stateful_cache
from ..core.names import HIGH
from ..core.variants import VARIANTS, VariantDefaults, boundary_timestep
from ..loaders.pipeline_loading import Wan22LoadingMixin
from ..models.transformer_wan_moe import WanMoETransformer3DModel
from ..schedulers.experts import schedule_steps
from .checks import check_common_inputs
from .memory import Wan22MemoryMixin
from .parallel import Wan22ParallelMixin

__all__ = ["Wan22BasePipeline"]


class Wan22BasePipeline(Wan22LoadingMixin, Wan22MemoryMixin, Wan22ParallelMixin, DiffusionPipeline):
    r"""Base of the Wan 2.2 pipelines: components, prompt encoding, VAE helpers, step planning and `denoise`.

    Subclasses set ``_variants`` (the official variants they run) and call `register_wan_modules` in ``__init__``.
    The transformer is a `WanMoETransformer3DModel` (A14B: two experts routed by timestep) or one dense
    transformer (TI2V-5B, S2V-14B); "expert" ``"high"`` then means "the one transformer".
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]
    _optional_components: list[str] = []

    # diffusers' own Wan prompt encoding, reused as is: `encode_prompt` (public) and its helper (see `_compat`).
    encode_prompt = WanPipeline.encode_prompt
    _get_t5_prompt_embeds = WAN_T5_PROMPT_EMBEDS
    prepare_latents = WanPipeline.prepare_latents

    def register_wan_modules(self, vae: AutoencoderKLWan | None, **modules) -> None:
        """Register the components and derive the VAE strides and the video processor from the VAE."""
        # `vae` and `text_encoder` come first: `_execution_device` looks at components in this order.
        self.register_modules(vae=vae, **modules)
        self.vae_scale_factor_temporal = vae.config.scale_factor_temporal if vae is not None else 4
        self.vae_scale_factor_spatial = vae.config.scale_factor_spatial if vae is not None else 8
        self.video_processor = VideoProcessor(vae_scale_factor=self.vae_scale_factor_spatial)

    # ------------------------------------------------------------------ properties (diffusers' names)
    @property
    def is_moe(self) -> bool:
        return isinstance(self.transformer, WanMoETransformer3DModel)

    @property
    def variant_defaults(self) -> VariantDefaults:
        """Official sampling defaults of the loaded variant (the first of ``_variants`` that fits the model)."""
        fits = [v for v in self._variants if (VARIANTS[v].boundary_ratio is not None) == self.is_moe]
        return VARIANTS[(fits or list(self._variants))[0]]

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._do_cfg

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def current_timestep(self):
        return getattr(self, "_current_timestep", None)

    @property
    def current_expert(self) -> str | None:
        """The expert running the current step (``"high"`` / ``"low"``), ``None`` outside the loop."""
        return getattr(self, "_current_expert", None)

    @property
    def interrupt(self) -> bool:
        return getattr(self, "_interrupt", False)

    @interrupt.setter
    def interrupt(self, value: bool) -> None:
        """``pipe.interrupt = True`` (e.g. from ``callback_on_step_end`` or a UI's Cancel): the loop skips the
        remaining steps of this call, as diffusers' ``pipe._interrupt = True`` does; reset when a call begins."""
        self._interrupt = bool(value)

    @property
    def current_clip(self) -> int | None:
        """Index of the clip being generated inside a call of a clip-by-clip pipeline (S2V, Animate), else ``None``."""
        return getattr(self, "_current_clip", None)

    def clip_noise(self, clip: int, latents, shape: tuple[int, ...], generator, device) -> torch.Tensor:
        """Initial noise of one clip of a clip-by-clip pipeline: the caller's (one tensor per clip, or one for every
        clip) or drawn from ``generator``, the clips continuing its stream (a CPU generator works for any device)."""
        if latents is None:
            return randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        noise = latents[clip] if isinstance(latents, (list, tuple)) else latents
        return noise.reshape(shape).to(device=device, dtype=torch.float32)

    @property
    def attention_kwargs(self):
        return getattr(self, "_attention_kwargs", None)

    @property
    def transformer_dtype(self) -> torch.dtype:
        # A MoE whose experts compute in different dtypes gets the widest one; each expert casts down.
        return self.transformer.input_dtype if self.is_moe else self.transformer.dtype

    @property
    def transformer_config(self):
        return self.transformer.config

    # ------------------------------------------------------------------ per call
    def begin_call(self, guidance: tuple[float, float], attention_kwargs, batched_cfg: bool) -> torch.device:
        """Reset the per-call state (diffusers' properties read it); returns the execution device."""
        self._guidance_scale, self._guidance_scale_2 = guidance
        self._attention_kwargs = attention_kwargs
        self._batched_cfg = batched_cfg
        self._current_timestep = None
        self._interrupt = False
        return self._execution_device

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

    @staticmethod
    def resolve_callback_inputs(callback_on_step_end, tensor_inputs):
        """diffusers' convention: a `PipelineCallback` names the tensors it wants itself."""
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            return callback_on_step_end.tensor_inputs
        return tensor_inputs

    def check_inputs(self, **kwargs) -> None:
        """Validate the arguments every Wan 2.2 pipeline shares (see `pipelines/checks.py`)."""
        check_common_inputs(self, **kwargs)

    # ------------------------------------------------------------------ prompts
    def encode_prompts(self, prompt, negative_prompt, do_cfg: bool, num_videos_per_prompt: int, prompt_embeds,
                       negative_prompt_embeds, max_sequence_length: int, device: torch.device):
        """Encode prompt and negative prompt (the variant's official negative prompt when none is given), on the
        text encoder's device, and move them to ``device`` in the transformer's dtype."""
        if do_cfg and negative_prompt is None and negative_prompt_embeds is None:
            n = 1 if prompt is None or isinstance(prompt, str) else len(prompt)
            n = n if prompt is not None else prompt_embeds.shape[0]
            default = self.variant_defaults.negative_prompt
            negative_prompt = default if isinstance(prompt, str) else [default] * n
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt=prompt, negative_prompt=negative_prompt, do_classifier_free_guidance=do_cfg,
            num_videos_per_prompt=num_videos_per_prompt, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, max_sequence_length=max_sequence_length,
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
        if encoder is None or has_accelerate_hook(encoder) or diffusers_hook_registry(encoder) is not None:
            return device
        return encoder.device

    # ------------------------------------------------------------------ VAE
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

    def postprocess(self, video: torch.Tensor, output_type: str):
        """A decoded ``[B, 3, F, H, W]`` video in [-1, 1] as diffusers returns videos: ``"np"`` ``[B, F, H, W, 3]``,
        ``"pil"`` frames, ``"pt"`` ``[B, F, 3, H, W]``, all in [0, 1]."""
        return self.video_processor.postprocess_video(video, output_type=output_type)

    def decode_latents(self, latents: torch.Tensor, output_type: str):
        """Decode the latents with the VAE (or return them for ``output_type="latent"``)."""
        if output_type == "latent":
            return latents
        return self.postprocess(self.vae_decode(latents), output_type)

    # ------------------------------------------------------------------ timesteps and experts
    def initial_latents(self, batch: int, num_frames: int, height: int, width: int, generator, latents, device):
        """The initial noise ``[B, C, F_lat, H/s, W/s]`` (float32, on ``device``): the caller's, checked, or drawn."""
        channels = self.transformer_config.out_channels
        shape = (batch, channels, (num_frames - 1) // self.vae_scale_factor_temporal + 1,
                 height // self.vae_scale_factor_spatial, width // self.vae_scale_factor_spatial)
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(f"`latents` has shape {tuple(latents.shape)} but this call needs {shape} "
                             "([batch, channels, latent frames, height/stride, width/stride]).")
        return self.prepare_latents(batch, channels, height, width, num_frames, torch.float32, device, generator,
                                    latents)

    def plan_steps(self, num_inference_steps: int, guidance: tuple[float, float], device,
                   boundary_ratio: float | None = None, expert_steps: tuple[int, int] | None = None
                   ) -> tuple[torch.Tensor, list[str], list[float]]:
        """Set the official timestep grid and decide, before the loop, the expert and guidance of every step.

        With ``expert_steps=(n_high, n_low)`` the grid is split at the boundary instead (see
        `expert_split_unshifted_sigmas`), so exactly that many steps run on each expert. A schedule that needs an
        expert that is not loaded is refused here, before any model runs.
        """
        boundary_t, num_train = None, 1000  # a dense model has no boundary (and no expert split)
        if self.is_moe:
            ratio = self.transformer.config.boundary_ratio if boundary_ratio is None else boundary_ratio
            num_train = self.transformer.config.num_train_timesteps
            boundary_t = boundary_timestep(ratio, num_train)
        timesteps, experts = schedule_steps(self.scheduler, num_inference_steps, boundary_t, expert_steps, num_train,
                                            device)
        if self.is_moe:
            self._check_experts_loaded(experts, boundary_t)
        return timesteps, experts, [guidance[0] if e == HIGH else guidance[1] for e in experts]

    def _check_experts_loaded(self, experts: list[str], boundary_t: float) -> None:
        missing = sorted(set(experts) - set(self.transformer.loaded_experts))
        if missing:
            steps = [i for i, e in enumerate(experts) if e in missing]
            raise ValueError(
                f"This schedule needs the {missing[0]}-noise expert at steps {steps} (boundary t={boundary_t:g}) but "
                f"only {self.transformer.loaded_experts} is loaded; load it, or keep the schedule on the loaded "
                "expert with `boundary_ratio` or `expert_steps`.")

    # ------------------------------------------------------------------ the denoising loop
    def denoise(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        experts: list[str],
        guidance_scales: list[float],
        cond: dict[str, Any],
        uncond: dict[str, Any] | None = None,
        condition: torch.Tensor | None = None,
        first_frame_latents: torch.Tensor | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | tuple[str, ...] = ("latents",),
        callback_on_expert_switch: Callable | None = None,
        generator: torch.Generator | None = None,
        progress_bar=None,
    ) -> torch.Tensor:
        """The Wan 2.2 denoising loop, shared by every pipeline of this package.

        Args:
            latents: initial noise ``[B, C, F, H, W]``; the loop never writes into the caller's tensor.
            timesteps / experts / guidance_scales: the plan of `plan_steps` (one entry per step).
            cond / uncond: transformer keyword arguments of the conditional and unconditional branch (at least
                ``encoder_hidden_states``); a step runs classifier-free guidance when ``uncond`` is given and its
                scale is > 1: ``uncond + g * (cond - uncond)``.
            condition: channels concatenated to the model input every step (I2V-A14B: mask + image latent).
            first_frame_latents: clean latent frame 0 kept fixed (TI2V image mode): its tokens get timestep 0 and
                the frame is re-set after every scheduler step.
            callback_on_step_end: diffusers' contract: ``fn(pipe, step, timestep, callback_kwargs) -> dict`` with
                exactly the requested ``callback_on_step_end_tensor_inputs`` (``latents``, ``prompt_embeds``,
                ``negative_prompt_embeds``); returned tensors replace them. The expert is ``pipe.current_expert``.
            callback_on_expert_switch: ``fn(pipe, step, timestep, old, new)`` once at the switch.
            generator: passed to ``scheduler.step`` when it draws noise (stochastic samplers).
            progress_bar: an open progress bar to advance (multi-clip pipelines share one); default: a new one.
        """
        self._num_timesteps = len(timesteps)
        self.scheduler.set_begin_index(0)
        sigmas = self.scheduler.sigmas.tolist()  # one host copy; cache hooks read the sigma of each step
        step_kwargs = {"generator": generator} if "generator" in _step_parameters(self.scheduler) else {}
        token_mask = None
        if condition is not None:  # fixed for the whole call: cast once, not every step
            condition = condition.to(self.transformer_dtype)
        if first_frame_latents is not None:  # new tensors, never writing into the caller's `latents`
            latents = torch.cat([first_frame_latents.to(latents.dtype), latents[:, :, 1:]], dim=2)
            token_mask = self._first_frame_token_mask(latents)
        bar = progress_bar if progress_bar is not None else self.progress_bar(total=len(timesteps))
        with _entered(bar, own=progress_bar is None):
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                self._begin_step(i, t, experts, callback_on_expert_switch)
                model_input = latents.to(self.transformer_dtype)
                if condition is not None:
                    model_input = torch.cat([model_input, condition], dim=1)
                batch = latents.shape[0]
                timestep = t.expand(batch) if token_mask is None else (token_mask * t).unsqueeze(0).expand(batch, -1)
                cache_kwargs = {"step_index": i, "sigma": sigmas[i], "num_inference_steps": len(timesteps)}
                noise_pred = self.predict_noise(experts[i], model_input, timestep, guidance_scales[i], cond, uncond,
                                                attention_kwargs, cache_kwargs)
                latents = self.scheduler.step(noise_pred.float(), t, latents, **step_kwargs, return_dict=False)[0]
                if first_frame_latents is not None:
                    latents = torch.cat([first_frame_latents.to(latents.dtype), latents[:, :, 1:]], dim=2)
                if callback_on_step_end is not None:
                    latents = self._step_callback(callback_on_step_end, callback_on_step_end_tensor_inputs, i, t,
                                                  latents, cond, uncond)
                bar.update()
        self._current_timestep = None
        self._current_expert = None
        return latents

    def _begin_step(self, i: int, t, experts: list[str], callback_on_expert_switch) -> None:
        self._current_timestep = t
        self._before_step(i, experts)  # memory modes: materialise / prefetch experts
        if i and experts[i] != experts[i - 1]:
            self._on_expert_switch(i, t, experts[i - 1], experts[i], callback_on_expert_switch)
        self._current_expert = experts[i]

    def _on_expert_switch(self, step: int, timestep, previous: str, expert: str, callback) -> None:
        # No cached residual may cross experts: drop the outgoing expert's cache state.
        if self.is_moe and self.transformer.get_expert(previous).is_cache_enabled:
            reset_stateful_cache(self.transformer.get_expert(previous))
        if callback is not None:
            callback(self, step, timestep, previous, expert)

    def _step_callback(self, callback, tensor_inputs, i: int, t, latents, cond: dict, uncond: dict | None):
        """diffusers' ``callback_on_step_end``: the requested tensors in, replacements out (``cond`` / ``uncond``
        are updated in place, so the next step uses returned prompt embeddings)."""
        available = {"latents": latents, "prompt_embeds": cond.get("encoder_hidden_states"),
                     "negative_prompt_embeds": None if uncond is None else uncond.get("encoder_hidden_states")}
        callback_kwargs = {k: available[k] for k in tensor_inputs}
        out = callback(self, i, t, callback_kwargs) or {}
        if "prompt_embeds" in out:
            cond["encoder_hidden_states"] = out["prompt_embeds"]
        if "negative_prompt_embeds" in out and uncond is not None:
            uncond["encoder_hidden_states"] = out["negative_prompt_embeds"]
        return out.get("latents", latents)

    def _first_frame_token_mask(self, latents: torch.Tensor) -> torch.Tensor:
        """Per-token timestep multipliers: 0 for latent frame 0's tokens, 1 elsewhere (flattened token order)."""
        p = self.transformer_config.patch_size
        f, h, w = latents.shape[2] // p[0], latents.shape[3] // p[1], latents.shape[4] // p[2]
        mask = torch.ones(f, h, w, device=latents.device, dtype=torch.float32)
        mask[0] = 0
        return mask.flatten()

    def predict_noise(self, expert: str, model_input, timestep, guidance_scale: float, cond: dict,
                      uncond: dict | None, attention_kwargs, cache_kwargs) -> torch.Tensor:
        """One step's (guided) flow prediction: ``uncond + g * (cond - uncond)`` when ``g > 1``, else ``cond``.

        With batched CFG the two branches run as one batch of 2 (fewer, larger kernel launches; the diffusers
        FasterCache hook also expects this layout), otherwise as two calls like the official code.
        """
        run = self._run_model
        if uncond is None or guidance_scale <= 1.0:
            return run(expert, model_input, timestep, cond, attention_kwargs, "cond", cache_kwargs)
        if getattr(self, "_batched_cfg", False):
            both = run(expert, torch.cat([model_input, model_input]), torch.cat([timestep, timestep]),
                       _batch_branches(cond, uncond), attention_kwargs, "cond_uncond", cache_kwargs)
            cond_pred, uncond_pred = both.chunk(2)
        else:
            cond_pred = run(expert, model_input, timestep, cond, attention_kwargs, "cond", cache_kwargs)
            uncond_pred = run(expert, model_input, timestep, uncond, attention_kwargs, "uncond", cache_kwargs)
        return uncond_pred + guidance_scale * (cond_pred - uncond_pred)

    def _run_model(self, expert: str, hidden_states, timestep, branch: dict, attention_kwargs, name: str,
                   cache_kwargs) -> torch.Tensor:
        with self.transformer.cache_context(name, **cache_kwargs):
            extra = {"expert": expert} if self.is_moe else {}
            return self.transformer(hidden_states=hidden_states, timestep=timestep, **branch,
                                    attention_kwargs=attention_kwargs, return_dict=False, **extra)[0]


def _batch_branches(cond: dict, uncond: dict) -> dict:
    """One batch of 2 from the two branches' transformer kwargs: tensors concatenated (a kwarg the unconditional
    branch does not override is repeated), anything else must be the same in both."""
    batched = {}
    for key, value in cond.items():
        other = uncond.get(key, value)
        if isinstance(value, torch.Tensor):
            batched[key] = torch.cat([value, other])
        elif other is value or other == value:
            batched[key] = value
        else:
            raise ValueError(f"Batched CFG cannot combine branch argument {key!r}: {value!r} vs {other!r}.")
    return batched


def _step_parameters(scheduler) -> set[str]:
    return set(inspect.signature(scheduler.step).parameters)


class _entered:
    """Enter ``bar`` as a context manager only when this loop created it (a shared bar is closed by its owner)."""

    def __init__(self, bar, own: bool):
        self.bar, self.own = bar, own

    def __enter__(self):
        return self.bar.__enter__() if self.own else self.bar

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc) if self.own else False
