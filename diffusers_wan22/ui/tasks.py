"""The tabs of `wan22 ui`: one row of `TASK_TABS` per task, saying which inputs the task takes, which pipeline runs
it and how a parsed `wan22 generate` command line becomes that pipeline's call.

A new task (Animate, Turbo I2V, ...) is one more `TaskTab` row: its inputs, the public pipeline class that runs it,
the folders it serves and its call builder. The page, the validation, the plan and the runner read only this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from PIL import Image

from ..core.variants import VARIANTS, VariantDefaults
from ..pipelines import Wan22ImageToVideoPipeline, Wan22Pipeline, Wan22SpeechToVideoPipeline

# How a tab uses an image: not at all, optionally (TI2V: text or image mode) or always.
NO_IMAGE, OPTIONAL_IMAGE, REQUIRED_IMAGE = "none", "optional", "required"


def video_call(args, generator: torch.Generator) -> dict:
    """Keyword arguments of `Wan22Pipeline` / `Wan22ImageToVideoPipeline` for a parsed `wan22 generate` command.

    As on the command line, ``--size`` is the exact size of a text-to-video call and the area budget of an
    image-conditioned one (the shape then follows the image, by the official rules).
    """
    guide = args.sample_guide_scale or []
    kwargs = dict(prompt=args.prompt, negative_prompt=args.negative_prompt, num_frames=args.frame_num,
                  num_inference_steps=args.sample_steps, expert_steps=args.expert_steps, generator=generator)
    if guide:
        kwargs.update(guidance_scale=guide[0], guidance_scale_2=guide[-1])
    width, height = args.size
    if args.image is None:
        return dict(kwargs, height=height, width=width)
    return dict(kwargs, image=Image.open(args.image), max_area=width * height)


def speech_call(args, generator: torch.Generator) -> dict:
    """Keyword arguments of `Wan22SpeechToVideoPipeline` for a parsed `wan22 generate --task s2v-14B` command."""
    guide = args.sample_guide_scale or []
    width, height = args.size
    return dict(image=Image.open(args.image), audio=str(args.audio), prompt=args.prompt,
                negative_prompt=args.negative_prompt, max_area=width * height, num_clips=args.num_clip,
                infer_frames=args.infer_frames, num_inference_steps=args.sample_steps,
                guidance_scale=guide[0] if guide else None, generator=generator,
                pose_video=None if args.pose_video is None else str(args.pose_video))


@dataclass(frozen=True)
class TaskTab:
    """One tab of the page: a task, its inputs and how it runs.

    Attributes:
        key: short id (element ids in the page, output file names).
        label: the tab's title.
        variant: the official variant whose defaults the inputs start from (`core/variants.py`) and whose geometry
            the checks use.
        pipeline: the pipeline class for a call without an image.
        image_pipeline: the class for a call with an image (same as ``pipeline`` when the image is required).
        image: `NO_IMAGE`, `OPTIONAL_IMAGE` or `REQUIRED_IMAGE`.
        audio / pose: the tab takes a speech file / a pose-driving video (S2V).
        clips: the task makes a video clip after clip (progress names the clip; ``--infer_frames`` per clip).
        serves: tasks of model folders this tab runs on (`wan22 ui --model DIR` shows the tabs serving its task).
        call: parsed command line + generator -> the pipeline's keyword arguments.
    """

    key: str
    label: str
    variant: str
    pipeline: type
    image_pipeline: type
    image: str
    audio: bool
    pose: bool
    clips: bool
    serves: tuple[str, ...]
    call: Callable[..., dict]

    @property
    def defaults(self) -> VariantDefaults:
        return VARIANTS[self.variant]

    @property
    def is_moe(self) -> bool:
        """Two experts (A14B): guidance per expert, steps per expert and a boundary."""
        return self.defaults.boundary_ratio is not None

    def pipeline_class(self, with_image: bool) -> type:
        """The pipeline class running this tab's call."""
        return self.image_pipeline if with_image else self.pipeline


TASK_TABS: tuple[TaskTab, ...] = (
    TaskTab("t2v", "Text to video (T2V-A14B)", "t2v-A14B", Wan22Pipeline, Wan22Pipeline, NO_IMAGE,
            audio=False, pose=False, clips=False, serves=("t2v-A14B",), call=video_call),
    TaskTab("i2v", "Image to video (I2V-A14B)", "i2v-A14B", Wan22ImageToVideoPipeline, Wan22ImageToVideoPipeline,
            REQUIRED_IMAGE, audio=False, pose=False, clips=False, serves=("i2v-A14B",), call=video_call),
    TaskTab("ti2v", "Text/image to video (TI2V-5B)", "ti2v-5B", Wan22Pipeline, Wan22ImageToVideoPipeline,
            OPTIONAL_IMAGE, audio=False, pose=False, clips=False, serves=("ti2v-5B",), call=video_call),
    TaskTab("s2v", "Speech to video (S2V-14B)", "s2v-14B", Wan22SpeechToVideoPipeline,
            Wan22SpeechToVideoPipeline, REQUIRED_IMAGE, audio=True, pose=True, clips=True, serves=("s2v-14B",),
            call=speech_call),
)


def is_tiny(model: str) -> bool:
    """``tiny`` (every task, random weights) rather than a model folder."""
    return model == "tiny"


def tabs_for(model: str, folder_task: str | None) -> tuple[TaskTab, ...]:
    """The tabs for ``wan22 ui --model``: every tab for ``tiny``, else those serving the folder's task."""
    if is_tiny(model):
        return TASK_TABS
    tabs = tuple(tab for tab in TASK_TABS if folder_task in tab.serves)
    if not tabs:
        raise ValueError(f"--model {model!r} holds a {folder_task} model, which no tab of `wan22 ui` runs yet "
                         f"(tabs: {', '.join(t.variant for t in TASK_TABS)}).")
    return tabs


def model_source(model: str, tab: TaskTab) -> str:
    """What `diffusers_wan22.load_pipeline` loads for ``tab``: the folder, or the tab's tiny random model."""
    return f"tiny:{tab.variant}" if is_tiny(model) else model
