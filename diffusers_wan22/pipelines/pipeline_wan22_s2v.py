"""`Wan22SpeechToVideoPipeline`: reference image + speech (+ optional pose video) → talking/singing video (S2V-14B)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKLWan
from diffusers.utils import BaseOutput, logging
from transformers import AutoTokenizer, UMT5EncoderModel

from ..loaders.lora import Wan22LoraLoaderMixin
from ..models.transformer_wan_s2v import WanS2VTransformer3DModel
from ..utils.audio import SAMPLING_RATE, AudioInput, bucket_features, load_audio, resample_features, wav2vec2_features
from ..utils.image import s2v_image, s2v_pose_frames, s2v_size, to_pil
from .checks import check_common_inputs, check_finite_number, check_fits_in_memory, check_int
from .pipeline_utils import Wan22BasePipeline

logger = logging.get_logger(__name__)

MOTION_FRAMES = 73  # pixel frames of motion context carried from one clip to the next (19 latent frames)
FIRST_CLIP_DROPPED_FRAMES = 3  # the first clip decodes [reference | clip] and drops the reference's 1 + 3 frames
START_FROM_REF_FRAMES = 6  # `init_first_frame`: the reference fills the newest motion frames


@dataclass
class Wan22SpeechToVideoPipelineOutput(BaseOutput):
    r"""Output of `Wan22SpeechToVideoPipeline`.

    Args:
        frames: the video as diffusers returns videos (``[1, F, H, W, 3]`` array for ``output_type="np"``, PIL frames
            for ``"pil"``, a ``[1, F, 3, H, W]`` tensor for ``"pt"``, all in [0, 1]); for ``"latent"``, a list with each
            clip's final latents.
        audio (`np.ndarray`): the 16 kHz mono audio that drove the video, trimmed to the video's duration (pass it
            to `diffusers_wan22.save_video(..., audio=...)` to mux it).
        sampling_rate (`int`): the audio's sampling rate (16000).
        fps (`int`): frame rate the video was made for.
        num_clips (`int`): clips generated.
        timesteps (`list[float]`): the scheduler timesteps of one clip.
    """

    frames: Any
    audio: np.ndarray
    sampling_rate: int = SAMPLING_RATE
    fps: int = 16
    num_clips: int = 1
    timesteps: list[float] = field(default_factory=list)


class Wan22SpeechToVideoPipeline(Wan22LoraLoaderMixin, Wan22BasePipeline):
    r"""Wan 2.2 speech-to-video (S2V-14B): a reference image and speech drive a video, clip after clip.

    Each clip of ``infer_frames`` frames is denoised with the reference latent, the latents of the 73 frames before
    it (FramePack motion context; zeros before the first clip, whose motion tokens are dropped) and the clip's
    wav2vec2 features; the unconditional branch gets the negative prompt and silent audio. After each clip the
    73-frame pixel buffer slides and is re-encoded as the next clip's motion context.

    Components: tokenizer, text_encoder (umt5), transformer (`WanS2VTransformer3DModel`), vae, scheduler, plus
        audio_encoder (`transformers.Wav2Vec2ForCTC` or `Wav2Vec2Model`): wav2vec2-large-xlsr-53-english.
        audio_processor (`transformers.Wav2Vec2FeatureExtractor`): its input normalisation.
    """

    model_cpu_offload_seq = "text_encoder->audio_encoder->transformer->vae"
    _variants = ("s2v-14B",)

    def __init__(
        self,
        tokenizer: AutoTokenizer,
        text_encoder: UMT5EncoderModel,
        transformer: WanS2VTransformer3DModel,
        vae: AutoencoderKLWan,
        scheduler,
        audio_encoder,
        audio_processor,
    ):
        super().__init__()
        self.register_wan_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
                                  scheduler=scheduler, audio_encoder=audio_encoder, audio_processor=audio_processor)

    # ------------------------------------------------------------------ checks
    def check_s2v_inputs(self, image, prompt, negative_prompt, height, width, max_area, num_clips, infer_frames,
                         num_inference_steps, guidance_scale, latents, pose_video, output_type,
                         callback_on_step_end_tensor_inputs) -> None:
        """Validate every argument before any model runs; each error names the value and what is allowed."""
        if image is None:
            raise ValueError("`image` (the reference image) is required.")
        for name, value in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if value is not None and not isinstance(value, str):
                raise ValueError(f"`{name}` must be one string (S2V makes one video per call); got "
                                 f"{type(value).__name__}.")
        if prompt is None:
            raise ValueError("`prompt` is required (e.g. 'A woman is singing.').")
        check_common_inputs(self, prompt=prompt, negative_prompt=negative_prompt,
                            num_inference_steps=num_inference_steps, guidance=(guidance_scale,),
                            output_type=output_type, callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs)
        if (height is None) != (width is None):
            raise ValueError(f"Give both `height` and `width` or neither; got height={height}, width={width}.")
        for name, value in (("height", height), ("width", width)):
            if value is not None and (not isinstance(value, int) or value <= 0 or value % 64):
                raise ValueError(f"`{name}` must be a positive multiple of 64 for S2V (FramePack packs 8x8 latent "
                                 f"patches); got {value}.")
        if max_area is not None:
            check_finite_number("max_area", max_area, 64 * 64)
        if not isinstance(infer_frames, int) or infer_frames <= 0 or infer_frames % 4:
            raise ValueError(f"`infer_frames` must be a positive multiple of 4 (frames per clip); got {infer_frames}.")
        if num_clips is not None:
            check_int("num_clips", num_clips, 1)
        if latents is not None and not isinstance(latents, (torch.Tensor, list, tuple)):
            raise ValueError("`latents` must be a tensor or a list with one initial-noise tensor per clip; got "
                             f"{type(latents).__name__}.")
        if isinstance(pose_video, (str, os.PathLike)) and not os.path.isfile(pose_video):
            raise FileNotFoundError(f"`pose_video` {str(pose_video)!r} does not exist.")

    # ------------------------------------------------------------------ conditioning
    def encode_audio(self, samples: np.ndarray, infer_frames: int, fps: int) -> tuple[torch.Tensor, int]:
        """wav2vec2 features bucketed per video frame: ``([1, layers, C, clips * infer_frames], clips)``.

        wav2vec2 runs in float32, as in the official code: loaded or cast to bf16 (e.g. `from_pretrained(...,
        torch_dtype=torch.bfloat16)`) it is moved back to float32 once, here (in bf16 the tiny official run's latents
        drift 18 % instead of 1.8 % from the float32 goldens).
        """
        if self.audio_encoder.dtype != torch.float32:
            logger.info("Running wav2vec2 in float32 (it was %s), as the official code does.", self.audio_encoder.dtype)
            self.audio_encoder.to(torch.float32)
        features = resample_features(wav2vec2_features(self.audio_encoder, self.audio_processor, samples))
        return bucket_features(features, fps, infer_frames)

    def reference_latents(self, image: PIL.Image.Image, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference image in [-1, 1] ``[1, 3, 1, H, W]`` and its normalised latent."""
        pixels = s2v_image(image, width, height)[None, :, None]
        return pixels, self.encode_image_latents(pixels)

    def pose_latents(self, pose_video, num_clips: int, infer_frames: int, width: int, height: int, fps: int):
        """Per-clip pose latents ``[1, C, infer_frames/4, H/8, W/8]``, or ``None`` without a pose video.

        The pose video is read from its start at ``fps``, padded with black-pose frames (-1) to the clips' length;
        each clip's chunk is encoded with its first frame repeated in front, whose latent is then dropped.
        """
        if pose_video is None:
            return None
        frames = s2v_pose_frames(pose_video, num_clips * infer_frames, width, height, fps)
        latents = []
        for chunk in frames.split(infer_frames, dim=1):
            chunk = torch.cat([chunk[:, :1], chunk], dim=1)[None]
            latents.append(self.encode_image_latents(chunk)[:, :, 1:])
        return latents

    @staticmethod
    def check_clip_noise(clip: int, noise, shape: tuple[int, ...]) -> None:
        if not isinstance(noise, torch.Tensor) or tuple(noise.shape) not in (tuple(shape), tuple(shape[1:])):
            got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
            raise ValueError(f"`latents` for clip {clip} is {got}; this call needs a tensor of shape "
                             f"{tuple(shape)} ([1, channels, (infer_frames + 3 + 73) // 4 - 19, height/8, width/8]).")

    # ------------------------------------------------------------------ one clip
    def denoise_clip(self, noise, num_inference_steps: int, guidance_scale: float, prompt_embeds,
                     negative_prompt_embeds, model_kwargs: dict, audio: torch.Tensor, attention_kwargs, progress,
                     callback_on_step_end=None, callback_on_step_end_tensor_inputs=("latents",)) -> torch.Tensor:
        """One clip on the shared loop; the unconditional branch sees the negative prompt and silent audio."""
        device = noise.device
        self._do_cfg = guidance_scale > 1.0
        # a fresh solver state per clip, on the official grid
        timesteps, experts, scales = self.plan_steps(num_inference_steps, (guidance_scale, guidance_scale), device)
        cond = dict(model_kwargs, encoder_hidden_states=prompt_embeds, audio_embeds=audio)
        uncond = None
        if self._do_cfg:
            uncond = dict(model_kwargs, encoder_hidden_states=negative_prompt_embeds,
                          audio_embeds=torch.zeros_like(audio))
        latents = self.denoise(noise, timesteps, experts, scales, cond, uncond, attention_kwargs=attention_kwargs,
                               callback_on_step_end=callback_on_step_end,
                               callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                               progress_bar=progress)
        self._clip_timesteps = timesteps
        return latents

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        image,
        audio: AudioInput,
        prompt: str | None = None,
        negative_prompt: str | None = None,
        height: int | None = None,
        width: int | None = None,
        max_area: int | None = None,
        num_clips: int | None = None,
        infer_frames: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | list[torch.Tensor] | None = None,
        pose_video=None,
        init_first_frame: bool = False,
        audio_sampling_rate: int | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        batched_cfg: bool = False,
        max_sequence_length: int = 512,
    ) -> Wan22SpeechToVideoPipelineOutput | tuple:
        r"""Generate a video of the person in ``image`` speaking or singing ``audio``.

        Args:
            image: the reference image (PIL image, ``HxWx3`` array or ``3xHxW`` tensor).
            audio: an audio file (anything ffmpeg reads), ``(samples, sampling_rate)``, or samples with
                ``audio_sampling_rate``.
            prompt / negative_prompt: text; the official S2V negative prompt is used when none is given.
            height / width: output size (multiples of 64); by default the reference's aspect ratio within ``max_area``
                pixels (default 1024*704, the official ``--size``).
            num_clips: clips to generate; default (and maximum) as many as the audio needs.
            infer_frames / num_inference_steps / guidance_scale: frames per clip (multiple of 4), defaults 80, 40, 4.5.
            latents: initial noise, one ``[1, 16, infer_frames/4, H/8, W/8]`` tensor per clip (a list) or one for all
                (the official code draws clip ``r``'s from ``seed + r``); else drawn from ``generator``, clip by clip.
            pose_video: optional pose-driving video (file path, or a list/array of frames at the video fps).
            init_first_frame: start from the reference image (it fills the newest motion frames, nothing dropped).
            output_type: ``"np"``, ``"pil"``, ``"pt"`` (``[1, F, 3, H, W]`` in [0, 1]) or ``"latent"`` (per clip).
            callback_on_step_end: diffusers' contract, after every step of every clip (``pipe.current_clip``).
            batched_cfg: both guidance branches as one batch of 2 (equal up to float summation order).

        Returns:
            `Wan22SpeechToVideoPipelineOutput` (frames, the audio trimmed to the video, fps, clips, timesteps), or
            ``(frames, audio)`` when ``return_dict=False``.
        """
        d = self.variant_defaults
        infer_frames = d.num_frames if infer_frames is None else infer_frames
        num_inference_steps = d.sample_steps if num_inference_steps is None else num_inference_steps
        guidance_scale = d.guidance_scale if guidance_scale is None else guidance_scale
        tensor_inputs = self.resolve_callback_inputs(callback_on_step_end, callback_on_step_end_tensor_inputs)

        # 1. Check inputs, read image and audio (cheap, before any model runs)
        self.check_s2v_inputs(image, prompt, negative_prompt, height, width, max_area, num_clips, infer_frames,
                              num_inference_steps, guidance_scale, latents, pose_video, output_type, tensor_inputs)
        image, samples = to_pil(image), load_audio(audio, audio_sampling_rate)
        if height is None:
            width, height = s2v_size(image.width, image.height, d.width * d.height if max_area is None else max_area)
        shape = self.clip_latent_shape(infer_frames, height, width)
        self.check_clip_call(latents, shape, height, width, infer_frames)
        device = self.begin_call((float(guidance_scale),) * 2, attention_kwargs, batched_cfg)

        # 2. Encode audio, prompts, reference image, pose and the (empty) motion context
        audio_embeds, num_clips = self.encode_audio_clips(samples, infer_frames, d.fps, num_clips, latents)
        prompt_embeds, negative_prompt_embeds = self.encode_prompts(
            prompt, negative_prompt, guidance_scale > 1.0, 1, None, None, max_sequence_length, device)
        context = self.clip_context(image, width, height, init_first_frame, audio_embeds,
                                    self.pose_latents(pose_video, num_clips, infer_frames, width, height, d.fps))

        # 3. Clip after clip on the shared denoising loop: denoise, decode, slide the motion buffer
        noises = (self.clip_noise(clip, latents, shape, generator, device) for clip in range(num_clips))
        clips = self.generate_clips(context, noises, num_clips, infer_frames, num_inference_steps, float(guidance_scale),
                                    (prompt_embeds, negative_prompt_embeds), attention_kwargs, callback_on_step_end,
                                    tensor_inputs, output_type)

        # 4. Assemble the video and the audio it carries
        return self.assemble_output(clips, samples, output_type, return_dict, context, infer_frames, d.fps)

    def generate_clips(self, context: _ClipContext, noises, num_clips: int, infer_frames: int,
                       num_inference_steps: int, guidance_scale: float, embeds: tuple, attention_kwargs, callback,
                       tensor_inputs, output_type: str) -> list[torch.Tensor]:
        """Every clip in turn: denoise on the shared loop, decode (except a last clip returned as latents) and slide
        the motion buffer. Returns each clip's video ``[1, 3, F, H, W]`` (or final latents for ``"latent"``)."""
        clips = []
        dtype = self.transformer_dtype
        with self.progress_bar(total=num_clips * num_inference_steps) as progress:
            for clip, noise in enumerate(noises):
                self._current_clip = clip
                device = noise.device
                clip_latents = self.denoise_clip(
                    noise, num_inference_steps, guidance_scale, *embeds, context.model_kwargs(clip, device, dtype),
                    context.clip_audio(clip, infer_frames, device, dtype), attention_kwargs, progress, callback,
                    tensor_inputs)
                last = clip + 1 == num_clips
                if output_type == "latent":
                    clips.append(clip_latents)
                    if last:  # the next clip would need the decoded frames; the last one does not
                        break
                video = self.decode_clip(context, clip, clip_latents, infer_frames)
                if output_type != "latent":
                    clips.append(video)
                if not last:
                    context.slide(self, video)
        return clips

    def encode_audio_clips(self, samples, infer_frames: int, fps: int, num_clips: int | None, latents):
        """The audio features per video frame and the number of clips: as many as the audio needs, or fewer."""
        audio_embeds, available = self.encode_audio(samples, infer_frames, fps)
        num_clips = available if num_clips is None else min(num_clips, available)
        if isinstance(latents, (list, tuple)) and len(latents) < num_clips:
            raise ValueError(f"`latents` holds {len(latents)} tensors but {num_clips} clips will be generated.")
        return audio_embeds, num_clips

    def check_clip_call(self, latents, shape: tuple[int, ...], height: int, width: int, infer_frames: int) -> None:
        """Every given initial noise has this call's clip shape, and a clip of this size fits the device's memory
        (before any model runs)."""
        given = latents if isinstance(latents, (list, tuple)) else [] if latents is None else [latents]
        for clip, noise in enumerate(given):
            self.check_clip_noise(clip, noise, shape)
        check_fits_in_memory(self, self._execution_device, height, width, infer_frames, frames_name="infer_frames")

    # ------------------------------------------------------------------ clips
    def clip_latent_shape(self, infer_frames: int, height: int, width: int) -> tuple[int, ...]:
        """Initial-noise shape of one clip: the latent frames of ``infer_frames`` after the motion context."""
        motion_latent_frames = (MOTION_FRAMES + 3) // 4
        lat_frames = (infer_frames + 3 + MOTION_FRAMES) // 4 - motion_latent_frames
        s = self.vae_scale_factor_spatial
        return (1, self.transformer_config.out_channels, lat_frames, height // s, width // s)

    def clip_context(self, image, width: int, height: int, init_first_frame: bool, audio_embeds, pose) -> _ClipContext:
        """The per-call state the clips share: reference latent, motion buffer, pose and audio features."""
        ref_pixels, ref_latents = self.reference_latents(image, width, height)
        motion_pixels = torch.zeros(1, 3, MOTION_FRAMES, height, width, device=ref_pixels.device)
        if init_first_frame:
            motion_pixels[:, :, -START_FROM_REF_FRAMES:] = ref_pixels.to(motion_pixels.device)
            motion_latents = self.encode_image_latents(motion_pixels)
        else:
            # The first clip drops its motion tokens and decodes after the reference latent, so the all-black
            # buffer's latents would never be read: skip encoding 73 frames.
            motion_latents = ref_latents.new_zeros(1, ref_latents.shape[1], (MOTION_FRAMES + 3) // 4,
                                                   *ref_latents.shape[3:])
        return _ClipContext(ref_latents, motion_pixels, motion_latents, pose, audio_embeds,
                            drop_first_motion=not init_first_frame)

    def decode_clip(self, context: _ClipContext, clip: int, clip_latents: torch.Tensor, infer_frames: int):
        """Decode a clip after its context latents (reference for a dropped first clip, else motion) and keep its
        own ``infer_frames`` frames (``[1, 3, F, H, W]`` in [-1, 1]); the first clip also drops the reference's."""
        dropped = context.dropped(clip)
        before = context.ref_latents if dropped else context.motion_latents
        video = self.vae_decode(torch.cat([before.to(clip_latents.device), clip_latents], dim=2))
        video = video[:, :, -infer_frames:].float()
        return video[:, :, FIRST_CLIP_DROPPED_FRAMES:] if dropped else video

    def assemble_output(self, clips: list, samples, output_type: str, return_dict: bool, context: _ClipContext,
                        infer_frames: int, fps: int):
        """The video of all clips (or each clip's latents) and the audio trimmed to it."""
        if output_type == "latent":
            frames = clips  # one tensor per clip: each clip is decoded after its own motion context
            dropped = FIRST_CLIP_DROPPED_FRAMES if context.drop_first_motion else 0
            num_video_frames = len(clips) * infer_frames - dropped
        else:
            video = torch.cat(clips, dim=2)
            num_video_frames = video.shape[2]
            frames = self.postprocess(video, output_type)
        audio_out = samples[: int(round(num_video_frames / fps * SAMPLING_RATE))]
        self.maybe_free_model_hooks()
        if not return_dict:
            return frames, audio_out
        return Wan22SpeechToVideoPipelineOutput(frames=frames, audio=audio_out, fps=fps, num_clips=len(clips),
                                                timesteps=[float(t) for t in self._clip_timesteps.tolist()])


@dataclass
class _ClipContext:
    """What the clips of one S2V call share; the motion buffer slides after each clip."""

    ref_latents: torch.Tensor
    motion_pixels: torch.Tensor
    motion_latents: torch.Tensor
    pose: list[torch.Tensor] | None
    audio_embeds: torch.Tensor
    drop_first_motion: bool

    def dropped(self, clip: int) -> bool:
        """The first clip drops its (all-black) motion tokens unless it starts from the reference."""
        return self.drop_first_motion and clip == 0

    def model_kwargs(self, clip: int, device, dtype) -> dict:
        """The S2V transformer's per-clip keyword arguments (shared by both guidance branches)."""
        return dict(ref_latents=self.ref_latents.to(device, dtype), motion_latents=self.motion_latents.to(device, dtype),
                    pose_latents=None if self.pose is None else self.pose[clip].to(device, dtype),
                    motion_frames=(MOTION_FRAMES, (MOTION_FRAMES + 3) // 4), drop_motion_frames=self.dropped(clip))

    def clip_audio(self, clip: int, infer_frames: int, device, dtype) -> torch.Tensor:
        return self.audio_embeds[..., clip * infer_frames:(clip + 1) * infer_frames].to(device, dtype)

    def slide(self, pipe, video: torch.Tensor) -> None:
        """The newest 73 decoded frames become the next clip's motion context (re-encoded)."""
        keep = min(MOTION_FRAMES, video.shape[2])
        self.motion_pixels = torch.cat([self.motion_pixels[:, :, keep:], video[:, :, -keep:].to(self.motion_pixels)], 2)
        self.motion_latents = pipe.encode_image_latents(self.motion_pixels)
