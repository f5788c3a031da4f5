"""Wan2.2-Animate-14B: a reference character animated by a driving video's pose and face ("animate"), or put in
place of the person in that video ("replace"), clip after clip as the official `WanAnimate.generate` does.

The steps of one call, each a function here:

* `plan_clips`: ping-pong padding of the frame list and the clip starts (every ``clip_len - refert_num`` frames);
* `reference_image_features`: CLIP features of the letterboxed reference (bicubic to 224, CLIP normalisation,
  every vision block but the last);
* `reference_condition` / `clip_condition`: the 20-channel ``y`` = [4 ones + VAE(reference) | mask + VAE(reference
  frames video)] along the frames, where the reference frames video starts with the last ``refert_num`` frames of
  the previous clip and continues with zeros (animation) or the background (replacement, mask = 1 - character);
* `denoise_clip`: the sampler over one clip (guidance only when > 1: the unconditional branch sees the negative
  prompt and a face input of all -1);
* `generate_clips`: the clip loop (noise per clip, decode, drop the repeated frames, trim to the real length).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from ..scheduling import set_official_timesteps
from ..utils.animate_inputs import AnimateInputs, clip_starts, padded_length, ping_pong_indices, unit_range

ANIMATE_PROMPT = "视频中的人在做动作"  # official config `prompt`: used when the prompt is empty
MASK_CHANNELS = 4  # the first-frame mask is repeated 4x: one channel per pixel frame of a latent frame

Encoder = Callable[[torch.Tensor], torch.Tensor]  # [B, 3, F, H, W] in [-1, 1] -> normalised latents


# ------------------------------------------------------------------------------------------------ clip plan
@dataclass
class ClipPlan:
    """Frame bookkeeping of one call: which input frame each padded position shows and where clips start."""

    num_frames: int
    clip_len: int
    refert_num: int
    indices: list[int] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)

    def frames(self, clip: int) -> list[int]:
        """Input frame indices shown by clip ``clip``."""
        start = self.starts[clip]
        return self.indices[start:start + self.clip_len]

    @property
    def num_clips(self) -> int:
        return len(self.starts)

    @property
    def latent_frames(self) -> int:
        """Latent frames of one clip's video (the reference latent comes on top)."""
        return (self.clip_len - 1) // 4 + 1


def plan_clips(num_frames: int, clip_len: int, refert_num: int) -> ClipPlan:
    """Pad ``num_frames`` by ping-pong to a length clips of ``clip_len`` overlapping by ``refert_num`` tile."""
    length = padded_length(num_frames, clip_len, refert_num)
    return ClipPlan(num_frames, clip_len, refert_num, ping_pong_indices(num_frames, length),
                    clip_starts(length, clip_len, refert_num))


# ------------------------------------------------------------------------------------------------ conditioning
def reference_image_features(image_encoder, reference: torch.Tensor) -> torch.Tensor:
    """Official Animate CLIP features ``[1, tokens, width]`` of the reference ``[3, H, W]`` in [-1, 1]: bicubic
    resize to the encoder's square input, CLIP normalisation, hidden states after all but the last block."""
    size = image_encoder.config.image_size
    param = next(image_encoder.parameters())
    x = F.interpolate(reference[None].to(param.device, torch.float32), size=(size, size), mode="bicubic",
                      align_corners=False)
    mean = torch.tensor(OPENAI_CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD, device=x.device).view(1, 3, 1, 1)
    x = ((x * 0.5 + 0.5) - mean) / std
    return image_encoder(x.to(param.dtype), output_hidden_states=True).hidden_states[-2]


def i2v_mask(latent_frames: int, known: int, height: int, width: int, pixel_mask: torch.Tensor | None = None,
             device=None) -> torch.Tensor:
    """``[1, 4, latent_frames, h, w]`` conditioning mask: per pixel frame 1 = given, 0 = to generate.

    The first ``known`` pixel frames are given; the rest are 0, or ``pixel_mask`` (``[frames, h, w]``, 1 where the
    background is kept) for replacement. The first pixel frame is repeated 4x so that every latent frame owns 4
    mask channels (the VAE packs 1 + 4k pixel frames into 1 + k latent frames).
    """
    frames = (latent_frames - 1) * 4 + 1
    if pixel_mask is None:
        mask = torch.zeros(frames, height, width, device=device)
    else:
        mask = pixel_mask.to(device=device, dtype=torch.float32).clone()
    mask[:known] = 1
    mask = torch.cat([mask[:1].expand(MASK_CHANNELS, -1, -1), mask[1:]])
    return mask.view(latent_frames, MASK_CHANNELS, height, width).transpose(0, 1)[None]


def reference_condition(reference_latent: torch.Tensor) -> torch.Tensor:
    """``y`` of the reference latent frame: 4 mask channels of ones + its latent, ``[1, 20, 1, h, w]``."""
    _, _, _, h, w = reference_latent.shape
    return torch.cat([i2v_mask(1, 1, h, w, device=reference_latent.device), reference_latent], dim=1)


def latent_keep_mask(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Replacement: ``1 - character mask`` (``[frames, H, W]`` in [0, 1]) nearest-resized to the latent grid."""
    return F.interpolate((1 - mask)[:, None], size=(height, width), mode="nearest")[:, 0]


def reference_frames_video(previous: torch.Tensor | None, background: torch.Tensor | None, clip_len: int,
                           size: tuple[int, int], device=None) -> torch.Tensor:
    """``[1, 3, clip_len, H, W]`` pixel video the clip is conditioned on: the previous clip's last frames first,
    then zeros (animation) or the background (replacement)."""
    if background is not None:
        video = background[None].clone()
    else:
        video = torch.zeros(1, 3, clip_len, *size, device=device)
    if previous is not None:
        # Official: bicubic-resized to (H, W) first, the identity here since they come out of the VAE at (H, W).
        video[:, :, :previous.shape[2]] = previous.to(video)
    return video


def clip_condition(encode: Encoder, y_reference: torch.Tensor, previous: torch.Tensor | None,
                   background: torch.Tensor | None, keep_mask: torch.Tensor | None, plan: ClipPlan,
                   size: tuple[int, int]) -> torch.Tensor:
    """The 20-channel ``y`` of one clip, ``[1, 20, 1 + latent_frames, h, w]``: reference frame, then the mask and
    latents of the reference-frames video (``previous``: the last decoded frames of the clip before, or None)."""
    video = reference_frames_video(previous, background, plan.clip_len, size, y_reference.device)
    latents = encode(video)
    h, w = latents.shape[-2:]
    known = 0 if previous is None else previous.shape[2]
    mask = i2v_mask(plan.latent_frames, known, h, w, keep_mask, device=latents.device)
    return torch.cat([y_reference.to(latents), torch.cat([mask, latents], dim=1)], dim=2)


# ------------------------------------------------------------------------------------------------ sampling
def denoise_clip(transformer, scheduler, noise: torch.Tensor, timesteps: torch.Tensor, guidance_scale: float,
                 cond: dict, uncond: dict | None, callback: Callable | None = None) -> torch.Tensor:
    """Sample one clip: ``cond`` / ``uncond`` are the transformer keyword arguments of each branch (``y`` is
    concatenated to the latents on channels); guidance ``uncond + g * (cond - uncond)`` when ``uncond`` is given."""
    latents = noise
    dtype = transformer.dtype

    def velocity(x, t, kwargs):
        kwargs = dict(kwargs)
        hidden = torch.cat([x, kwargs.pop("y")], dim=1).to(dtype)
        return transformer(hidden_states=hidden, timestep=t.expand(x.shape[0]), return_dict=False, **kwargs)[0].float()

    for i, t in enumerate(timesteps):
        pred = velocity(latents, t, cond)
        if uncond is not None:
            pred_uncond = velocity(latents, t, uncond)
            pred = pred_uncond + guidance_scale * (pred - pred_uncond)
        latents = scheduler.step(pred, t, latents, return_dict=False)[0]
        if callback is not None:
            latents = callback(i, t, latents)
    return latents


@dataclass
class AnimateConditioning:
    """What stays the same across clips: text, CLIP features, the reference latent frame's ``y``."""

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None
    image_embeds: torch.Tensor
    y_reference: torch.Tensor


def clip_model_kwargs(cond: AnimateConditioning, y: torch.Tensor, pose_latents: torch.Tensor, face: torch.Tensor,
                      dtype: torch.dtype, guided: bool) -> tuple[dict, dict | None]:
    """Transformer keyword arguments of the conditional and (when guided) unconditional branch of one clip."""
    shared = dict(y=y.to(dtype), encoder_hidden_states_image=cond.image_embeds.to(dtype),
                  pose_hidden_states=pose_latents.to(dtype))
    face = face.to(dtype)
    branch = dict(shared, encoder_hidden_states=cond.prompt_embeds.to(dtype), face_pixel_values=face)
    if not guided:
        return branch, None
    # No face: all -1. Materialised, not an expanded view: convolutions on stride-0 inputs take a slow path.
    blank = torch.full_like(face, -1.0)
    return branch, dict(shared, encoder_hidden_states=cond.negative_prompt_embeds.to(dtype), face_pixel_values=blank)


@dataclass
class ClipResult:
    """One clip's final latents (with the reference frame) and its decoded new frames ``[1, 3, F, H, W]``."""

    latents: torch.Tensor
    frames: torch.Tensor


def generate_clips(transformer, scheduler, encode: Encoder, decode: Encoder, inputs: AnimateInputs,
                   cond: AnimateConditioning, plan: ClipPlan, num_inference_steps: int, guidance_scale: float,
                   noises: list[torch.Tensor], device, callback: Callable | None = None) -> list[ClipResult]:
    """Run every clip of ``plan``: conditioning, sampling (``noises[k]``: clip k's initial noise), decoding.

    Each later clip starts from the last ``refert_num`` frames of the clip before and drops them from its own
    decoded frames. ``callback(clip, step, t, latents) -> latents`` runs after every step.
    """
    size, results, previous = inputs.size, [], None
    dtype, guided = transformer.dtype, guidance_scale > 1.0
    for k in range(plan.num_clips):
        idx = plan.frames(k)
        pose_latents = encode(unit_range(inputs.pose[idx])[None].to(device))
        face = unit_range(inputs.face[idx])[None].to(device)
        background = keep = None
        if inputs.mask is not None:
            background = unit_range(inputs.background[idx]).to(device)
            keep = latent_keep_mask(torch.from_numpy(inputs.mask[idx]).to(device), *pose_latents.shape[-2:])
        y = clip_condition(encode, cond.y_reference, previous, background, keep, plan, size)
        kwargs, uncond = clip_model_kwargs(cond, y, pose_latents, face, dtype, guided)
        timesteps = set_official_timesteps(scheduler, num_inference_steps, device)  # fresh solver state per clip
        step_callback = None if callback is None else (lambda i, t, x, k=k: callback(k, i, t, x))
        latents = denoise_clip(transformer, scheduler, noises[k].to(device, torch.float32), timesteps,
                               guidance_scale, kwargs, uncond, step_callback)
        frames = decode(latents[:, :, 1:]).float()
        if k > 0:
            frames = frames[:, :, plan.refert_num:]
        previous = frames[:, :, -plan.refert_num:]
        results.append(ClipResult(latents=latents, frames=frames))
    return results


def assemble_video(results: list[ClipResult], num_frames: int) -> torch.Tensor:
    """The clips' new frames in order, trimmed to the real length: ``[1, 3, num_frames, H, W]`` in [-1, 1]."""
    return torch.cat([r.frames for r in results], dim=2)[:, :, :num_frames]
