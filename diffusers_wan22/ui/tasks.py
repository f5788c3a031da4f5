"""The tabs of `wan22 ui`: one row of `TASK_TABS` per task, saying which inputs the task takes, which pipeline runs
it and how a parsed `wan22 generate` command line becomes that pipeline's call.

A new task is one more `TaskTab` row: its inputs, the public pipeline class that runs it,
the folders it serves and its call builder. The page, the validation, the plan and the runner read only this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..core.variants import VARIANTS, VariantDefaults
from ..pipelines import Wan22AnimatePipeline, Wan22ImageToVideoPipeline, Wan22Pipeline, Wan22SpeechToVideoPipeline
from ..pipelines.generate_args import animate_call, speech_call, video_call
from ..pipelines.turbo import TURBO_STEPS

# How a tab uses an image: not at all, optionally (TI2V: text or image mode) or always.
NO_IMAGE, OPTIONAL_IMAGE, REQUIRED_IMAGE = "none", "optional", "required"
# What `wan22 ui` calls the task of a TurboWan2.2 folder (`wan22 generate` sees an i2v-A14B model with Turbo experts).
TURBO_TASK = "turbo-i2v-A14B"


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
        sampler: ``"official"`` (UniPC / DPM++ with a shift), ``"rcm"`` (TurboWan2.2: the rCM sampler, 1-4 steps, no
            shift, no guidance) or ``"animate"`` (the official sampler; inputs from a preprocessing folder).
        tiny: ``wan22 ui --model tiny`` shows the tab (a tiny random model of the task exists).
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
    sampler: str = "official"
    tiny: bool = True

    @property
    def defaults(self) -> VariantDefaults:
        return VARIANTS[self.variant]

    @property
    def is_moe(self) -> bool:
        """Two experts (A14B): guidance per expert, steps per expert and a boundary."""
        return self.defaults.boundary_ratio is not None

    @property
    def is_turbo(self) -> bool:
        return self.sampler == "rcm"

    @property
    def is_animate(self) -> bool:
        return self.sampler == "animate"

    @property
    def default_steps(self) -> int:
        """The steps of a run that leaves ``--sample_steps`` unset (TurboDiffusion: 4)."""
        return TURBO_STEPS if self.is_turbo else self.defaults.sample_steps

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
    TaskTab("turbo", "Turbo image to video (TurboWan2.2-I2V-A14B)", "i2v-A14B", Wan22ImageToVideoPipeline,
            Wan22ImageToVideoPipeline, REQUIRED_IMAGE, audio=False, pose=False, clips=False, serves=(TURBO_TASK,),
            call=video_call, sampler="rcm", tiny=False),
    TaskTab("animate", "Character animation (Animate-14B)", "animate-14B", Wan22AnimatePipeline,
            Wan22AnimatePipeline, NO_IMAGE, audio=False, pose=False, clips=True, serves=("animate-14B",),
            call=animate_call, sampler="animate", tiny=False),
)


def is_tiny(model: str) -> bool:
    """``tiny`` (every task, random weights) rather than a model folder."""
    return model == "tiny"


def tabs_for(model: str, folder_task: str | None) -> tuple[TaskTab, ...]:
    """The tabs for ``wan22 ui --model``: every tab with a tiny model for ``tiny``, else those serving the folder's
    task (`TURBO_TASK` for a TurboWan2.2 folder)."""
    if is_tiny(model):
        return tuple(tab for tab in TASK_TABS if tab.tiny)
    tabs = tuple(tab for tab in TASK_TABS if folder_task in tab.serves)
    if not tabs:
        raise ValueError(f"--model {model!r} holds a {folder_task} model, which no tab of `wan22 ui` runs yet "
                         f"(tabs: {', '.join(task for t in TASK_TABS for task in t.serves)}).")
    return tabs


def model_source(model: str, tab: TaskTab) -> str:
    """What `diffusers_wan22.load_pipeline` loads for ``tab``: the folder, or the tab's tiny random model."""
    return f"tiny:{tab.variant}" if is_tiny(model) else model
