"""From a checked `wan22 generate` argument namespace to the loader's options and the pipeline's call.

The command line and the web page (`wan22 ui`) both build such a namespace (the page builds the equivalent command
line) and run `commands/validate.validate_generate` on it, which resolves ``resolution`` (the output size an
image-conditioned task makes from its image), ``turbo_quantized`` and ``base_seed``. This one mapping turns it into
the call, so the page and the command it shows make the same video.
"""

from __future__ import annotations

import torch
from PIL import Image

from ..core.animate import source_folder_files


def loader_options(args) -> dict:
    """What `load_pipeline` takes besides the folder: Animate's relighting LoRA, the TurboWan2.2 experts' files
    and SLA setting."""
    options = {"use_relighting_lora": True} if getattr(args, "use_relighting_lora", False) else {}
    if getattr(args, "turbo_quantized", None) is not None:
        options.update(quantized=args.turbo_quantized, components=args.components, sla_topk=args.sla_topk)
    return options


def _guidance(args) -> list[float]:
    return list(args.sample_guide_scale or [])


def video_call(args, generator: torch.Generator) -> dict:
    """`Wan22Pipeline` / `Wan22ImageToVideoPipeline` (official or Turbo experts): ``--size`` is the exact size of a
    text-to-video call; an image-conditioned one gets the ``resolution`` chosen from its image (official rules, or
    TurboDiffusion's)."""
    guide = _guidance(args)
    kwargs = dict(prompt=args.prompt, negative_prompt=args.negative_prompt, num_frames=args.frame_num,
                  num_inference_steps=args.sample_steps, expert_steps=args.expert_steps, generator=generator)
    if guide:
        kwargs.update(guidance_scale=guide[0], guidance_scale_2=guide[-1])
    width, height = getattr(args, "resolution", None) or args.size or (None, None)
    if args.image is not None:
        kwargs["image"] = Image.open(args.image)
    return dict(kwargs, height=height, width=width)


def speech_call(args, generator: torch.Generator) -> dict:
    """`Wan22SpeechToVideoPipeline` at the ``resolution`` chosen from the reference image and the ``--size`` area."""
    guide = _guidance(args)
    width, height = args.resolution
    return dict(image=Image.open(args.image), audio=str(args.audio), prompt=args.prompt,
                negative_prompt=args.negative_prompt, width=width, height=height, num_clips=args.num_clip,
                infer_frames=args.infer_frames, num_inference_steps=args.sample_steps,
                guidance_scale=guide[0] if guide else None, generator=generator,
                pose_video=None if args.pose_video is None else str(args.pose_video))


def animate_call(args, generator: torch.Generator) -> dict:
    """`Wan22AnimatePipeline` from the official preprocessing folder (official flags: ``--src_root_path``,
    ``--replace_flag``, ``--refert_num``, ``--frame_num`` = frames per clip)."""
    guide = _guidance(args)
    return dict(**source_folder_files(args.src_root_path, args.replace_flag),
                mode="replace" if args.replace_flag else "animate", prompt=args.prompt,
                negative_prompt=args.negative_prompt, segment_frame_length=args.frame_num,
                prev_segment_conditioning_frames=args.refert_num or 1, num_inference_steps=args.sample_steps,
                guidance_scale=guide[0] if guide else None, generator=generator)


def pipeline_call(task: str, args, generator: torch.Generator) -> dict:
    """The call of ``task``'s pipeline (`video_call`, `speech_call` or `animate_call`)."""
    build = {"s2v-14B": speech_call, "animate-14B": animate_call}.get(task, video_call)
    return build(args, generator)
