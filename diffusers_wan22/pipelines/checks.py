"""Argument checks shared by the Wan 2.2 pipelines, run before any model runs or large tensor is allocated.

Each error is one line naming the parameter, the value given and what is accepted. Besides the values themselves:
the scheduler's shift (a NaN or negative shift would silently produce a black video) and the size of the call
against the memory of the device it runs on (`check_fits_in_memory`, the memory planner's prediction).
"""

from __future__ import annotations

import math

import torch

from ..core.machine import host_memory_bytes
from ..core.memory_planner import GB, estimate_memory
from ..core.names import MAX_INFERENCE_STEPS
from ..utils.memory_specs import spec_from_pipeline

OUTPUT_TYPES = ("np", "pil", "pt", "latent")
SHIFT_KEYS = ("flow_shift", "shift")  # UniPC / DPM-Solver++ name it flow_shift, FlowMatchEuler shift


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_finite_number(name: str, value, minimum: float | None = None, exclusive: bool = False) -> None:
    """``value`` is a real, finite number (NaN and inf refused) above ``minimum`` when given."""
    if not _is_number(value) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number; got {value!r}.")
    if minimum is not None and (value <= minimum if exclusive else value < minimum):
        raise ValueError(f"`{name}` must be {'>' if exclusive else '>='} {minimum:g}; got {value!r}.")


def check_int(name: str, value, minimum: int = 1, maximum: int | None = None) -> None:
    """``value`` is an integer in ``[minimum, maximum]``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum or (
            maximum is not None and value > maximum):
        upper = f", at most {maximum}" if maximum is not None else ""
        raise ValueError(f"`{name}` must be an integer >= {minimum}{upper}; got {value!r}.")


def check_prompts(prompt, negative_prompt, prompt_embeds=None, negative_prompt_embeds=None) -> None:
    """One of prompt / prompt_embeds; strings or non-empty lists of strings; matching lengths and shapes."""
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
        raise ValueError(f"`negative_prompt` has {len(negative_prompt)} entries but `prompt` has {len(prompt)}; "
                         "they must match.")
    for name, value in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds)):
        if value is not None and (not isinstance(value, torch.Tensor) or value.ndim != 3):
            raise ValueError(f"`{name}` must be a 3-D tensor [batch, tokens, dim]; got "
                             f"{tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}.")
    if prompt_embeds is not None and negative_prompt_embeds is not None:
        if prompt_embeds.shape != negative_prompt_embeds.shape:
            raise ValueError(f"`prompt_embeds` {tuple(prompt_embeds.shape)} and `negative_prompt_embeds` "
                             f"{tuple(negative_prompt_embeds.shape)} must have the same shape.")


def check_scheduler_shift(scheduler) -> None:
    """The scheduler's flow shift is a finite number > 0 (0, negative or NaN shifts give garbage timesteps)."""
    config = getattr(scheduler, "config", {})
    for key in SHIFT_KEYS:
        value = config.get(key, None)
        if value is not None and not (_is_number(value) and math.isfinite(value) and value > 0):
            raise ValueError(f"The scheduler's `{key}` must be a finite number > 0; got {value!r} (e.g. "
                             f"`{type(scheduler).__name__}.from_config(pipe.scheduler.config, {key}=5.0)`).")


def device_memory_bytes(device: torch.device) -> float | None:
    """Total memory of the device a call runs on: accelerator memory, or host RAM for the CPU (and unified memory)."""
    backend = getattr(torch, device.type, None)
    if device.type != "cpu" and hasattr(backend, "get_device_properties"):
        return float(backend.get_device_properties(device.index or 0).total_memory)
    return host_memory_bytes()


def check_fits_in_memory(pipe, device: torch.device, height: int, width: int, num_frames: int, batch: int = 1,
                         frames_name: str = "num_frames") -> None:
    """Refuse a call whose activations alone exceed the total memory of ``device`` (where it runs). The memory
    planner's peak for this size minus its peak for the smallest call, so the weights already loaded cancel out;
    classifier-free guidance counted unbatched (the smaller case): only calls that cannot fit are refused."""
    budget = device_memory_bytes(device)
    if budget is None:
        return
    on_cpu = device.type == "cpu"
    spec = spec_from_pipeline(pipe)
    kwargs = dict(mode="none", weight_bytes=pipe.transformer_dtype.itemsize, batch=batch,
                  execution="cpu" if on_cpu else "accelerator", vae_tiling=bool(getattr(pipe.vae, "use_tiling", 0)))

    def peak(h: int, w: int, f: int) -> float:
        est = estimate_memory(spec, h, w, f, **kwargs)
        return est.host_bytes if on_cpu else est.accelerator_bytes

    need = peak(height, width, num_frames) - peak(16, 16, 1)
    if need > budget:
        raise ValueError(f"`height`={height}, `width`={width}, `{frames_name}`={num_frames} (batch {batch}) needs "
                         f"about {need / GB:.1f} GB for activations alone (memory planner), more than the "
                         f"{budget / GB:.1f} GB of {device}; make the video smaller.")


def prompt_batch(prompt, prompt_embeds, num_videos_per_prompt) -> int:
    """Videos one call makes: prompts (or prompt-embedding rows) times ``num_videos_per_prompt``."""
    prompts = prompt_embeds.shape[0] if prompt is None and prompt_embeds is not None else (
        len(prompt) if isinstance(prompt, list) else 1)
    return prompts * num_videos_per_prompt


def check_common_inputs(pipe, *, prompt=None, negative_prompt=None, prompt_embeds=None, negative_prompt_embeds=None,
                        num_inference_steps: int = 1, guidance: tuple[float, ...] = (), num_videos_per_prompt: int = 1,
                        output_type: str = "np", callback_on_step_end_tensor_inputs=None, max_sequence_length: int = 512,
                        guidance_names: tuple[str, ...] = ("guidance_scale", "guidance_scale_2")) -> None:
    """The checks every pipeline shares: prompts, steps, guidance, batch, output type, callback tensor names."""
    check_prompts(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds)
    check_scheduler_shift(getattr(pipe, "scheduler", None))  # stand-ins for a pipeline (the UI) may have none
    check_int("num_inference_steps", num_inference_steps, 1, MAX_INFERENCE_STEPS)
    for name, value in zip(guidance_names, guidance):
        check_finite_number(name, value, 0.0)
    check_int("num_videos_per_prompt", num_videos_per_prompt, 1)
    check_int("max_sequence_length", max_sequence_length, 1, 4096)
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}; got {output_type!r}.")
    unknown = [k for k in callback_on_step_end_tensor_inputs or [] if k not in pipe._callback_tensor_inputs]
    if unknown:
        raise ValueError(f"`callback_on_step_end_tensor_inputs` may only name {pipe._callback_tensor_inputs}; "
                         f"got {unknown}.")


def check_video_size(pipe, height, width, num_frames) -> None:
    """Height and width multiples of the VAE stride x patch size; ``num_frames`` = 4k + 1."""
    multiple = pipe.vae_scale_factor_spatial * pipe.transformer_config.patch_size[1]
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value % multiple:
            raise ValueError(f"`{name}` must be a positive multiple of {multiple} (VAE stride "
                             f"{pipe.vae_scale_factor_spatial} x patch {pipe.transformer_config.patch_size[1]}); "
                             f"got {value!r}.")
    step = pipe.vae_scale_factor_temporal
    if not isinstance(num_frames, int) or isinstance(num_frames, bool) or num_frames < 1 or (num_frames - 1) % step:
        raise ValueError(f"`num_frames` must be {step}k+1 (1, 5, 9, ..., 81, ...); got {num_frames!r}.")


def check_moe_inputs(pipe, num_inference_steps: int, boundary_ratio, expert_steps) -> None:
    """``boundary_ratio`` / ``expert_steps`` apply to the mixture of experts only, with valid values."""
    if boundary_ratio is not None:
        if not pipe.is_moe:
            raise ValueError("`boundary_ratio` only applies to a mixture-of-experts transformer; this one is dense.")
        check_finite_number("boundary_ratio", boundary_ratio, 0.0)
        if boundary_ratio > 1.0:
            raise ValueError(f"`boundary_ratio` must be in [0, 1]; got {boundary_ratio}.")
    if expert_steps is not None:
        if not pipe.is_moe:
            raise ValueError("`expert_steps` only applies to a mixture-of-experts transformer; this one is dense.")
        if (not isinstance(expert_steps, (tuple, list)) or len(expert_steps) != 2
                or any(not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in expert_steps)
                or sum(expert_steps) != num_inference_steps):
            raise ValueError(f"`expert_steps` must be (n_high, n_low), two non-negative integers summing to "
                             f"`num_inference_steps`={num_inference_steps}; got {expert_steps!r}.")
