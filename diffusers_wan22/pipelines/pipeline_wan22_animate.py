"""`Wan22AnimatePipeline`: Wan2.2-Animate-14B. A reference character is animated by a driving video's pose and face
("animate"), or put in place of the person in that video ("replace"), clip after clip as the official
`WanAnimate.generate` does, on the shared denoising loop (`Wan22BasePipeline.denoise`).

The steps of one call:

* inputs (`utils/animate_inputs.py`): the reference letterboxed to the pose video's size with OpenCV, frames
  decoded, channel 0 of the mask; `plan_clips`: ping-pong padding of the frame list and the clip starts (every
  ``clip_len - refert_num`` frames);
* `reference_image_features`: CLIP features of the letterboxed reference (bicubic to 224, CLIP normalisation,
  every vision block but the last);
* `reference_condition` / `clip_condition`: the 20-channel ``y`` = [4 ones + VAE(reference) | mask + VAE(reference
  frames video)] along the frames, where the reference frames video starts with the last ``refert_num`` frames of
  the previous clip and continues with zeros (animation) or the background (replacement, mask = 1 - character);
* per clip: pose latents (added to latent frames 1.. inside the DiT), the face crops (motion encoder -> face
  encoder -> face cross-attention), sampling with guidance only when > 1 (the unconditional branch sees the
  negative prompt and a face input of all -1), decoding; later clips drop their first ``refert_num`` frames and the
  video is trimmed to the real length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan, WanAnimateTransformer3DModel
from diffusers.utils.torch_utils import get_module_execution_device
from transformers import AutoTokenizer, CLIPVisionModel, UMT5EncoderModel
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from ..core.animate import ANIMATE_PROMPT
from ..loaders.animate import load_official_animate_components
from ..loaders.lora import Wan22LoraLoaderMixin
from ..utils.animate_inputs import (
    AnimateInputs,
    check_clip_settings,
    clip_starts,
    load_animate_inputs,
    padded_length,
    ping_pong_indices,
    unit_range,
)
from .checks import check_common_inputs
from .pipeline_output import Wan22PipelineOutput
from .pipeline_utils import Wan22BasePipeline

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
    device = get_module_execution_device(image_encoder)  # offload hooks: where it will run, not where it rests
    x = F.interpolate(reference[None].to(device, torch.float32), size=(size, size), mode="bicubic",
                      align_corners=False)
    mean = torch.tensor(OPENAI_CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD, device=device).view(1, 3, 1, 1)
    x = ((x * 0.5 + 0.5) - mean) / std
    return image_encoder(x.to(image_encoder.dtype), output_hidden_states=True).hidden_states[-2]


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



# ------------------------------------------------------------------------------------------------ the pipeline
@dataclass
class Wan22AnimatePipelineOutput(Wan22PipelineOutput):
    r"""Output of `Wan22AnimatePipeline`: `Wan22PipelineOutput` (``frames`` as diffusers returns videos, or for
    ``output_type="latent"`` a list with each clip's final latents, reference frame first; ``experts`` and
    ``timesteps`` of one clip's steps), plus ``fps`` (30, the official preprocessing's) and ``num_clips``."""

    fps: int = 30
    num_clips: int = 1


@dataclass
class _AnimateCall:
    """What the clips of one call share."""

    inputs: AnimateInputs
    plan: ClipPlan
    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None
    image_embeds: torch.Tensor
    y_reference: torch.Tensor
    guidance_scale: float


class Wan22AnimatePipeline(Wan22LoraLoaderMixin, Wan22BasePipeline):
    r"""Wan2.2-Animate-14B: character animation (``mode="animate"``) and replacement (``mode="replace"``).

    Inputs are the official preprocessing outputs (``src_ref.png``, ``src_pose.mp4``, ``src_face.mp4`` with 512x512
    face crops, and for replacement ``src_bg.mp4`` + ``src_mask.mp4``), as paths or frames; the video takes the pose
    video's size and length. Numerics follow the official code (OpenCV letterboxing, channel 0 of the mask, the
    official sigma grids), so ``latents=[noise per clip]`` reproduces an official run.

    Components: tokenizer / text_encoder (umT5), transformer (diffusers' `WanAnimateTransformer3DModel`), vae (Wan
    2.1), scheduler (UniPC with the official shift 5; `DPMSolverMultistepScheduler.from_config` gives dpm++),
    image_encoder (`transformers.CLIPVisionModel`: the open-clip XLM-RoBERTa ViT-H/14 visual tower).
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->transformer->vae"
    _variants = ("animate-14B",)

    def __init__(self, tokenizer: AutoTokenizer, text_encoder: UMT5EncoderModel,
                 transformer: WanAnimateTransformer3DModel, vae: AutoencoderKLWan, scheduler,
                 image_encoder: CLIPVisionModel):
        super().__init__()
        self.register_wan_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, image_encoder=image_encoder,
                                  transformer=transformer, scheduler=scheduler)

    @classmethod
    def from_official(cls, ckpt_dir, torch_dtype: torch.dtype | None = None, use_relighting_lora: bool = False,
                      dtype: torch.dtype | None = None):
        """The pipeline from an official Wan2.2-Animate-14B folder (as downloaded); ``use_relighting_lora=True`` adds
        `relighting_lora.ckpt` as the adapter ``"relighting"`` (official replacement setting). Every file is checked
        before any weight is read. ``dtype=`` is diffusers' newer name for ``torch_dtype``."""
        torch_dtype = dtype or torch_dtype
        pipe = cls(**load_official_animate_components(ckpt_dir, torch_dtype, use_relighting_lora))
        pipe.lazy_source = None
        return pipe

    # ------------------------------------------------------------------ checks
    def check_animate_inputs(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, clip_len: int,
                             refert_num: int, num_inference_steps: int, guidance_scale: float, latents, output_type,
                             tensor_inputs, max_sequence_length: int) -> None:
        """Validate the arguments that need no input decoding, before anything is read or run."""
        for name, value in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if value is not None and not isinstance(value, str):
                raise ValueError(f"`{name}` must be one string (Animate makes one video per call); got "
                                 f"{type(value).__name__}.")
        check_common_inputs(self, prompt=prompt, negative_prompt=negative_prompt, prompt_embeds=prompt_embeds,
                            negative_prompt_embeds=negative_prompt_embeds, num_inference_steps=num_inference_steps,
                            guidance=(guidance_scale,), output_type=output_type,
                            callback_on_step_end_tensor_inputs=tensor_inputs, max_sequence_length=max_sequence_length)
        check_clip_settings(clip_len, refert_num)
        if latents is not None and not (isinstance(latents, (list, tuple)) and latents
                                        and all(isinstance(x, torch.Tensor) for x in latents)):
            raise ValueError("`latents` must be a list with one initial-noise tensor per clip "
                             f"([1, 16, latent frames + 1, H/8, W/8] each); got {type(latents).__name__}.")

    def clip_latent_shape(self, plan: ClipPlan, size: tuple[int, int]) -> tuple[int, ...]:
        """Initial-noise shape of one clip: the reference latent frame plus the clip's latent frames."""
        s = self.vae_scale_factor_spatial
        return (1, self.transformer_config.out_channels, plan.latent_frames + 1, size[0] // s, size[1] // s)

    @staticmethod
    def check_clip_latents(latents, shape: tuple[int, ...], num_clips: int) -> None:
        """One given initial noise per clip, each of this call's clip shape (before any model runs)."""
        if latents is None:
            return
        if len(latents) != num_clips:
            raise ValueError(f"`latents` holds {len(latents)} tensors; this video needs {num_clips} clips, one "
                             "initial noise each.")
        for clip, noise in enumerate(latents):
            if tuple(noise.shape) not in (tuple(shape), tuple(shape[1:])):
                raise ValueError(f"`latents[{clip}]` has shape {tuple(noise.shape)}; this call needs {tuple(shape)} "
                                 "([1, 16, latent frames + 1, H/8, W/8]).")

    # ------------------------------------------------------------------ conditioning
    def encode_reference(self, inputs: AnimateInputs, device) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP features and the reference latent frame's ``y`` (both the same for every clip)."""
        reference = unit_range(inputs.reference, device)
        image_embeds = reference_image_features(self.image_encoder, reference)
        y_reference = reference_condition(self.encode_image_latents(reference[None, :, None]))
        return image_embeds.to(device, self.transformer_dtype), y_reference.to(device)

    def clip_branches(self, call: _AnimateCall, clip: int, previous: torch.Tensor | None, device,
                      motion_encode_batch_size: int | None) -> tuple[torch.Tensor, dict, dict | None]:
        """``y`` and the transformer keyword arguments of both guidance branches for clip ``clip``: pose latents,
        face crops (all -1 in the unconditional branch), CLIP features, prompt / negative prompt."""
        idx, inputs, dtype = call.plan.frames(clip), call.inputs, self.transformer_dtype
        pose_latents = self.encode_image_latents(unit_range(inputs.pose[idx], device)[None])
        background = keep = None
        if inputs.mask is not None:
            background = unit_range(inputs.background[idx], device)
            keep = latent_keep_mask(torch.from_numpy(inputs.mask[idx]).to(device), *pose_latents.shape[-2:])
        y = clip_condition(self.encode_image_latents, call.y_reference, previous, background, keep, call.plan,
                           inputs.size)
        face = unit_range(inputs.face[idx], device)[None].to(dtype)
        cond = dict(encoder_hidden_states=call.prompt_embeds, encoder_hidden_states_image=call.image_embeds,
                    pose_hidden_states=pose_latents.to(dtype), face_pixel_values=face,
                    motion_encode_batch_size=motion_encode_batch_size)
        uncond = None
        if call.guidance_scale > 1.0:
            # No face: all -1. Materialised, not an expanded view: convolutions on stride-0 inputs take a slow path.
            uncond = dict(cond, encoder_hidden_states=call.negative_prompt_embeds,
                          face_pixel_values=torch.full_like(face, -1.0))
        return y, cond, uncond

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        image,
        pose_video,
        face_video,
        background_video=None,
        mask_video=None,
        mode: str = "animate",
        prompt: str | None = None,
        negative_prompt: str | None = None,
        segment_frame_length: int | None = None,
        prev_segment_conditioning_frames: int = 1,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
        latents: list[torch.Tensor] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        batched_cfg: bool = False,
        motion_encode_batch_size: int | None = None,
        max_sequence_length: int = 512,
    ) -> Wan22AnimatePipelineOutput | tuple:
        r"""Animate ``image`` with the pose and face of the driving video (``mode="animate"``), or put it in place of
        the person in the video (``mode="replace"``, with ``background_video`` and ``mask_video``).

        Args:
            image: the reference character (file path, PIL image, ``HxWx3`` array); letterboxed to the video size.
            pose_video / face_video / background_video / mask_video: the official preprocessing outputs, as video
                files or lists of frames; the face crops are 512x512, the others share the pose video's size, all
                have the same frame count. The mask is white (255) on the character; its channel 0 is used.
            prompt / negative_prompt: text; the official default prompt (`视频中的人在做动作`) and negative prompt when
                empty.
            segment_frame_length: frames per clip (official ``clip_len``, 4k+1, default 77).
            prev_segment_conditioning_frames: frames each clip takes from the previous one (official ``refert_num``,
                1 or 5).
            num_inference_steps / guidance_scale: defaults 20 and 1.0 (guidance runs when > 1; the unconditional
                branch then also gets a face input of all -1).
            generator / latents: each clip's initial noise ``[1, 16, (clip_len - 1) / 4 + 2, H/8, W/8]`` is drawn in
                turn from ``generator`` (the official code draws them from one CPU generator seeded once), or
                ``latents`` gives one per clip.
            output_type: ``"np"``, ``"pil"``, ``"pt"`` (``[1, F, 3, H, W]`` in [0, 1]) or ``"latent"`` (per clip).
            callback_on_step_end: diffusers' contract, after every step of every clip (``pipe.current_clip``).
            batched_cfg: both guidance branches as one batch of 2 (equal up to float summation order).
            motion_encode_batch_size: face frames per motion-encoder batch (default: the model's, 8 as official).

        Returns:
            `Wan22AnimatePipelineOutput` (frames, fps, number of clips, timesteps), or ``(frames,)``.
        """
        clip_len, steps, guidance = self.resolve_defaults(segment_frame_length, num_inference_steps, guidance_scale)
        prompt = prompt or (None if prompt_embeds is not None else ANIMATE_PROMPT)  # official: "" -> default
        negative_prompt = negative_prompt or None
        tensor_inputs = self.resolve_callback_inputs(callback_on_step_end, callback_on_step_end_tensor_inputs)

        # 1. Check the arguments, read and check every input (before any model runs)
        self.check_animate_inputs(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, clip_len,
                                  prev_segment_conditioning_frames, steps, guidance, latents, output_type,
                                  tensor_inputs, max_sequence_length)
        inputs = load_animate_inputs(image, pose_video, face_video, background_video, mask_video, mode,
                                     self.transformer_config.motion_encoder_size, prev_segment_conditioning_frames)
        plan = plan_clips(inputs.num_frames, clip_len, prev_segment_conditioning_frames)
        shape = self.clip_latent_shape(plan, inputs.size)
        self.check_clip_latents(latents, shape, plan.num_clips)
        device = self.begin_call((float(guidance),) * 2, attention_kwargs, batched_cfg)

        # 2. Encode the prompts and the reference (the same for every clip)
        self._do_cfg = guidance > 1.0
        embeds = self.encode_prompts(prompt, negative_prompt, self._do_cfg, 1, prompt_embeds, negative_prompt_embeds,
                                     max_sequence_length, device)
        call = _AnimateCall(inputs, plan, *embeds, *self.encode_reference(inputs, device), float(guidance))

        # 3. Clip after clip on the shared denoising loop
        clips = self.generate_clips(call, latents, shape, generator, steps, device, attention_kwargs,
                                    callback_on_step_end, tensor_inputs, output_type, motion_encode_batch_size)
        return self.assemble_output(clips, plan, output_type, return_dict)

    def resolve_defaults(self, segment_frame_length, num_inference_steps, guidance_scale) -> tuple:
        """(frames per clip, steps, guidance): the caller's values or the official defaults (77, 20, 1.0)."""
        d = self.variant_defaults
        return (d.num_frames if segment_frame_length is None else segment_frame_length,
                d.sample_steps if num_inference_steps is None else num_inference_steps,
                d.guidance_scale if guidance_scale is None else guidance_scale)

    def generate_clips(self, call: _AnimateCall, latents, shape, generator, steps: int, device, attention_kwargs,
                       callback, tensor_inputs, output_type: str, motion_encode_batch_size) -> list[torch.Tensor]:
        """Every clip in turn: conditioning, the shared loop, decoding (the last clip stays latent for ``"latent"``).
        Returns each clip's new frames ``[1, 3, F, H, W]`` in [-1, 1] (or its final latents)."""
        clips, previous, refert = [], None, call.plan.refert_num
        with self.progress_bar(total=call.plan.num_clips * steps) as progress:
            for clip in range(call.plan.num_clips):
                self._current_clip = clip
                noise = self.clip_noise(clip, latents, shape, generator, device)
                y, cond, uncond = self.clip_branches(call, clip, previous, device, motion_encode_batch_size)
                # a fresh solver state per clip, on the official grid
                timesteps, experts, scales = self.plan_steps(steps, (call.guidance_scale,) * 2, device)
                self._clip_experts = experts
                final = self.denoise(noise, timesteps, experts, scales, cond, uncond, condition=y,
                                     attention_kwargs=attention_kwargs, callback_on_step_end=callback,
                                     callback_on_step_end_tensor_inputs=tensor_inputs, progress_bar=progress)
                self._clip_timesteps = timesteps
                if output_type == "latent":
                    clips.append(final)
                    if clip + 1 == call.plan.num_clips:  # the next clip would need the decoded frames
                        break
                frames = self.vae_decode(final[:, :, 1:]).float()
                frames = frames[:, :, refert:] if clip else frames  # later clips repeat the previous clip's last frames
                previous = frames[:, :, -refert:]
                if output_type != "latent":
                    clips.append(frames)
        self._current_clip = None
        return clips

    def assemble_output(self, clips: list[torch.Tensor], plan: ClipPlan, output_type: str, return_dict: bool):
        """The clips' frames in order, trimmed to the input's length and post-processed (or the clips' latents)."""
        if output_type == "latent":
            frames = clips
        else:
            frames = self.postprocess(torch.cat(clips, dim=2)[:, :, :plan.num_frames], output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return Wan22AnimatePipelineOutput(frames=frames, experts=self._clip_experts,
                                          timesteps=[float(t) for t in self._clip_timesteps.tolist()],
                                          fps=self.variant_defaults.fps, num_clips=plan.num_clips)
