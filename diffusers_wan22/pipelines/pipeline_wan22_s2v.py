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

from ..audio import SAMPLING_RATE, AudioInput, bucket_features, load_audio, resample_features, wav2vec2_features
from ..configs import VARIANTS, VariantDefaults
from ..image_sizing import s2v_image, s2v_pose_frames, s2v_size, to_pil
from ..models.transformer_wan_s2v import WanS2VTransformer3DModel
from ..scheduling import set_official_timesteps
from .pipeline_wan22 import Wan22Pipeline

logger = logging.get_logger(__name__)

MOTION_FRAMES = 73  # pixel frames of motion context carried from one clip to the next (19 latent frames)
FIRST_CLIP_DROPPED_FRAMES = 3  # the first clip decodes [reference | clip] and drops the reference's 1 + 3 frames
START_FROM_REF_FRAMES = 6  # `init_first_frame`: the reference fills the newest motion frames


@dataclass
class Wan22SpeechToVideoPipelineOutput(BaseOutput):
    r"""Output of `Wan22SpeechToVideoPipeline`.

    Args:
        frames: the video (``[1, F, H, W, 3]`` array for ``output_type="np"``, PIL frames for ``"pil"``, the
            ``[1, 3, F, H, W]`` tensor in [-1, 1] for ``"pt"``).
        audio (`np.ndarray`): the 16 kHz mono audio that drove the video, trimmed to the video's duration (pass it
            to `diffusers_wan22.video.save_video(..., audio=...)` to mux it).
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


class Wan22SpeechToVideoPipeline(Wan22Pipeline):
    r"""Wan 2.2 speech-to-video (S2V-14B): a reference image and speech drive a video, clip after clip.

    Each clip of ``infer_frames`` frames is denoised with the reference latent, the latents of the 73 frames before
    it (FramePack motion context; zeros before the first clip, whose motion tokens are dropped) and the clip's
    wav2vec2 features; the unconditional branch gets the negative prompt and silent audio. After each clip the
    73-frame pixel buffer slides and is re-encoded as the next clip's motion context.

    Components: those of `Wan22Pipeline` (with a `WanS2VTransformer3DModel`) plus
        audio_encoder (`transformers.Wav2Vec2ForCTC` or `Wav2Vec2Model`): wav2vec2-large-xlsr-53-english.
        audio_processor (`transformers.Wav2Vec2FeatureExtractor`): its input normalisation.
    """

    model_cpu_offload_seq = "text_encoder->audio_encoder->transformer->vae"

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
        super().__init__(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae,
                         scheduler=scheduler)
        self.register_modules(audio_encoder=audio_encoder, audio_processor=audio_processor)

    @property
    def variant_defaults(self) -> VariantDefaults:
        return VARIANTS["s2v-14B"]

    @property
    def current_clip(self) -> int | None:
        """Index of the clip being generated (inside a call)."""
        return getattr(self, "_current_clip", None)

    # ------------------------------------------------------------------ checks
    def check_s2v_inputs(self, image, prompt, negative_prompt, height, width, max_area, num_clips, infer_frames,
                         num_inference_steps, guidance_scale, latents, pose_video, output_type) -> None:
        """Validate every argument before any model runs; each error names the value and what is allowed."""
        if image is None:
            raise ValueError("`image` (the reference image) is required.")
        for name, value in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if value is not None and not isinstance(value, str):
                raise ValueError(f"`{name}` must be one string (S2V makes one video per call); got "
                                 f"{type(value).__name__}.")
        if prompt is None:
            raise ValueError("`prompt` is required (e.g. 'A woman is singing.').")
        if (height is None) != (width is None):
            raise ValueError(f"Give both `height` and `width` or neither; got height={height}, width={width}.")
        for name, value in (("height", height), ("width", width)):
            if value is not None and (not isinstance(value, int) or value <= 0 or value % 64):
                raise ValueError(f"`{name}` must be a positive multiple of 64 for S2V (FramePack packs 8x8 latent "
                                 f"patches); got {value}.")
        if max_area is not None and max_area < 64 * 64:
            raise ValueError(f"`max_area` must be at least 4096 pixels (64x64); got {max_area}.")
        if not isinstance(infer_frames, int) or infer_frames <= 0 or infer_frames % 4:
            raise ValueError(f"`infer_frames` must be a positive multiple of 4 (frames per clip); got {infer_frames}.")
        if num_clips is not None and (not isinstance(num_clips, int) or num_clips < 1):
            raise ValueError(f"`num_clips` must be a positive integer or None (as many as the audio needs); "
                             f"got {num_clips}.")
        if not isinstance(num_inference_steps, int) or not 1 <= num_inference_steps <= 1000:
            raise ValueError(f"`num_inference_steps` must be an integer in [1, 1000]; got {num_inference_steps}.")
        if guidance_scale < 0:
            raise ValueError(f"`guidance_scale` must be >= 0; got {guidance_scale}.")
        if latents is not None and not isinstance(latents, (torch.Tensor, list, tuple)):
            raise ValueError("`latents` must be a tensor or a list with one initial-noise tensor per clip; got "
                             f"{type(latents).__name__}.")
        if isinstance(pose_video, (str, os.PathLike)) and not os.path.isfile(pose_video):
            raise FileNotFoundError(f"`pose_video` {str(pose_video)!r} does not exist.")
        if output_type not in ("np", "pil", "pt", "latent"):
            raise ValueError(f"`output_type` must be 'np', 'pil', 'pt' or 'latent'; got {output_type!r}.")

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

    def clip_noise(self, clip: int, latents, shape: tuple[int, ...], generator, device) -> torch.Tensor:
        """Initial noise of one clip: the caller's tensor (one per clip, or one reused) or fresh Gaussian noise."""
        if latents is None:
            return torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
        noise = latents[clip] if isinstance(latents, (list, tuple)) else latents
        return noise.reshape(shape).to(device=device, dtype=torch.float32)

    # ------------------------------------------------------------------ one clip
    def denoise_clip(self, noise, timesteps, guidance_scale: float, prompt_embeds, negative_prompt_embeds,
                     model_kwargs: dict, audio: torch.Tensor, attention_kwargs, progress,
                     callback_on_step_end=None) -> torch.Tensor:
        """Run the sampler over one clip; the unconditional branch sees the negative prompt and zeroed audio."""
        latents = noise
        dtype = self.transformer_dtype
        silent = torch.zeros_like(audio)
        batched = self._do_cfg and self._batched_cfg
        if batched:  # both branches as one batch of 2, built once per clip
            model_kwargs = {k: torch.cat([v, v]) if isinstance(v, torch.Tensor) else v for k, v in model_kwargs.items()}
            context, audio_in = torch.cat([prompt_embeds, negative_prompt_embeds]), torch.cat([audio, silent])

        def velocity(x, t, context, audio_embeds):
            return self.transformer(x, t.expand(x.shape[0]), context, audio_embeds=audio_embeds,
                                    attention_kwargs=attention_kwargs, return_dict=False, **model_kwargs)[0].float()

        for i, t in enumerate(timesteps):
            self._current_timestep = t
            x = latents.to(dtype)
            if batched:
                pred, uncond = velocity(torch.cat([x, x]), t, context, audio_in).chunk(2)
            else:
                pred = velocity(x, t, prompt_embeds, audio)
                uncond = velocity(x, t, negative_prompt_embeds, silent) if self._do_cfg else None
            if uncond is not None:
                pred = uncond + guidance_scale * (pred - uncond)
            latents = self.scheduler.step(pred, t, latents, return_dict=False)[0]
            if callback_on_step_end is not None:  # diffusers convention; `pipe.current_clip` says which clip
                latents = callback_on_step_end(self, i, t, {"latents": latents}).pop("latents", latents)
            progress.update()
        self._current_timestep = None
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
        batched_cfg: bool = False,
        max_sequence_length: int = 512,
    ) -> Wan22SpeechToVideoPipelineOutput | tuple:
        r"""Generate a video of the person in ``image`` speaking or singing ``audio``.

        Args:
            image: the reference image (PIL image, ``HxWx3`` array or ``3xHxW`` tensor).
            audio: an audio file path (anything ffmpeg reads), ``(samples, sampling_rate)``, or samples with
                ``audio_sampling_rate``.
            prompt / negative_prompt: text; the official S2V negative prompt is used when none is given.
            height / width: output size (multiples of 64); by default the reference image's aspect ratio within
                ``max_area`` pixels (default 1024*704, the official ``--size 1024*704``).
            num_clips: clips to generate; default (and maximum) as many as the audio needs.
            infer_frames: frames per clip, a multiple of 4 (default 80).
            num_inference_steps / guidance_scale: defaults 40 and 4.5 (guidance runs when > 1).
            generator: draws each clip's noise in turn when ``latents`` is not given.
            latents: initial noise, one ``[1, 16, infer_frames/4, H/8, W/8]`` tensor per clip (a list) or one for
                all; the official code draws clip ``r``'s noise from ``seed + r``, pass those to reproduce it.
            pose_video: optional pose-driving video (file path, or a list/array of frames at the video fps).
            init_first_frame: start from the reference image (it fills the newest motion frames, nothing dropped).
            output_type: ``"np"``, ``"pil"``, ``"pt"`` or ``"latent"`` (a list with each clip's final latents).
            callback_on_step_end: ``fn(pipe, step, timestep, {"latents": ...}) -> dict`` after every step of every
                clip (``pipe.current_clip`` is the clip's index); a returned ``"latents"`` replaces them.
            batched_cfg: run the conditional and unconditional branches as one batch of 2 (faster on a GPU,
                more activation memory; equal to the sequential branches up to float summation order).

        Returns:
            `Wan22SpeechToVideoPipelineOutput` (frames, the audio trimmed to the video, fps, clips, timesteps), or
            ``(frames, audio)`` when ``return_dict=False``.
        """
        d = self.variant_defaults
        infer_frames = d.num_frames if infer_frames is None else infer_frames
        num_inference_steps = d.sample_steps if num_inference_steps is None else num_inference_steps
        guidance_scale = d.guidance_scale if guidance_scale is None else float(guidance_scale)
        fps = d.fps

        # 1. Check inputs, read image and audio (cheap, before any model runs)
        self.check_s2v_inputs(image, prompt, negative_prompt, height, width, max_area, num_clips, infer_frames,
                              num_inference_steps, guidance_scale, latents, pose_video, output_type)
        image = to_pil(image)
        samples = load_audio(audio, audio_sampling_rate)
        if height is None:
            width, height = s2v_size(image.width, image.height, d.width * d.height if max_area is None else max_area)
        motion_frames = (MOTION_FRAMES, (MOTION_FRAMES + 3) // 4)
        lat_h, lat_w = height // self.vae_scale_factor_spatial, width // self.vae_scale_factor_spatial
        lat_frames = (infer_frames + 3 + MOTION_FRAMES) // 4 - motion_frames[1]
        shape = (1, self.transformer_config.out_channels, lat_frames, lat_h, lat_w)
        given = latents if isinstance(latents, (list, tuple)) else [] if latents is None else [latents]
        for clip, noise in enumerate(given):
            self.check_clip_noise(clip, noise, shape)
        device = self._execution_device
        self._do_cfg = guidance_scale > 1.0
        self._batched_cfg = batched_cfg
        self._attention_kwargs = attention_kwargs

        # 2. Encode audio, prompts, reference image and the (empty) motion context
        audio_embeds, available = self.encode_audio(samples, infer_frames, fps)
        num_clips = available if num_clips is None else min(num_clips, available)
        if isinstance(latents, (list, tuple)) and len(latents) < num_clips:
            raise ValueError(f"`latents` holds {len(latents)} tensors but {num_clips} clips will be generated.")
        prompt_embeds, negative_prompt_embeds = self.encode_prompts(
            prompt, negative_prompt, self._do_cfg, 1, None, None, max_sequence_length, device
        )
        ref_pixels, ref_latents = self.reference_latents(image, width, height)
        motion_pixels = torch.zeros(1, 3, MOTION_FRAMES, height, width, device=ref_pixels.device)
        drop_first_motion = not init_first_frame
        if init_first_frame:
            motion_pixels[:, :, -START_FROM_REF_FRAMES:] = ref_pixels.to(motion_pixels.device)
            motion_latents = self.encode_image_latents(motion_pixels)
        else:
            # The first clip drops its motion tokens and decodes after the reference latent, so the all-black
            # buffer's latents would never be read: skip encoding 73 frames.
            motion_latents = ref_latents.new_zeros(1, ref_latents.shape[1], motion_frames[1], lat_h, lat_w)
        pose = self.pose_latents(pose_video, num_clips, infer_frames, width, height, fps)

        # 3. Clip after clip: denoise, decode, slide the motion buffer
        clips = []
        dtype = self.transformer_dtype
        with self.progress_bar(total=num_clips * num_inference_steps) as progress:
            for clip in range(num_clips):
                self._current_clip = clip
                noise = self.clip_noise(clip, latents, shape, generator, device)
                timesteps = set_official_timesteps(self.scheduler, num_inference_steps, device)  # fresh solver
                dropped = drop_first_motion and clip == 0
                model_kwargs = dict(
                    ref_latents=ref_latents.to(device, dtype), motion_latents=motion_latents.to(device, dtype),
                    pose_latents=None if pose is None else pose[clip].to(device, dtype),
                    motion_frames=motion_frames, drop_motion_frames=dropped,
                )
                clip_audio = audio_embeds[..., clip * infer_frames:(clip + 1) * infer_frames].to(device, dtype)
                clip_latents = self.denoise_clip(noise, timesteps, guidance_scale, prompt_embeds,
                                                 negative_prompt_embeds, model_kwargs, clip_audio,
                                                 attention_kwargs, progress, callback_on_step_end)
                if output_type == "latent":
                    clips.append(clip_latents)
                    if clip + 1 == num_clips:
                        break
                context = ref_latents if dropped else motion_latents
                video = self.vae_decode(torch.cat([context.to(clip_latents.device), clip_latents], dim=2))
                video = video[:, :, -infer_frames:].float()
                if dropped:
                    video = video[:, :, FIRST_CLIP_DROPPED_FRAMES:]
                if output_type != "latent":
                    clips.append(video)
                if clip + 1 < num_clips:  # the newest 73 frames become the next clip's motion context
                    keep = min(MOTION_FRAMES, video.shape[2])
                    motion_pixels = torch.cat([motion_pixels[:, :, keep:], video[:, :, -keep:].to(motion_pixels)], 2)
                    motion_latents = self.encode_image_latents(motion_pixels)

        # 4. Assemble the video and the audio it carries
        if output_type == "latent":
            frames = clips  # one tensor per clip: each clip is decoded after its own motion context
            num_video_frames = num_clips * infer_frames - (FIRST_CLIP_DROPPED_FRAMES if drop_first_motion else 0)
        else:
            video = torch.cat(clips, dim=2)
            num_video_frames = video.shape[2]
            frames = video if output_type == "pt" else self.video_processor.postprocess_video(video, output_type)
        audio_out = samples[: int(round(num_video_frames / fps * SAMPLING_RATE))]
        self.maybe_free_model_hooks()
        if not return_dict:
            return frames, audio_out
        return Wan22SpeechToVideoPipelineOutput(
            frames=frames, audio=audio_out, fps=fps, num_clips=num_clips,
            timesteps=[float(t) for t in timesteps.tolist()],
        )
