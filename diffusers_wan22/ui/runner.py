"""Runs one generation at a time in a background thread, with progress the page can read and a clean cancel.

The pipeline reports each finished step through diffusers' ``callback_on_step_end`` (the expert is
``pipe.current_expert``, the clip ``pipe.current_clip``); Cancel sets ``pipe.interrupt``, after which the shared
denoising loop skips the remaining steps. A cancelled run writes nothing.
"""

from __future__ import annotations

import gc
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..loaders.file_io import DTYPES
from ..pipelines import load_pipeline
from ..pipelines.generate_args import loader_options
from ..utils.video import save_video
from .charts import expert_name
from .planning import Schedule, scheduler_for
from .tasks import TaskTab, model_source

LOADING, RUNNING, DECODING, DONE, CANCELLED, FAILED = "loading", "running", "decoding", "done", "cancelled", "failed"


class Busy(RuntimeError):
    """A run was asked for while another one runs."""


@dataclass
class Job:
    """One run: its request, its live progress and, at the end, its video or error."""

    tab: TaskTab
    args: object
    schedule: Schedule  # the planned steps of one clip (the strip on the page)
    state: str = LOADING
    step: int = 0  # steps finished in the current clip
    steps_total: int = 0  # steps finished over all clips
    clip: int | None = None
    expert: str | None = None
    ran: list[str] = field(default_factory=list)  # the expert of every finished step, in order (all clips)
    started: float = field(default_factory=time.perf_counter)
    seconds: float = 0.0
    path: Path | None = None
    frames: int = 0
    size: tuple[int, int] = (0, 0)
    num_clips: int = 1
    error: str | None = None
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def num_steps(self) -> int:
        return len(self.schedule.timesteps)

    def on_step(self, pipe, i: int, t, callback_kwargs: dict) -> dict:
        """diffusers' ``callback_on_step_end``: record the step (no device sync: the timestep comes from the plan)
        and turn a Cancel into the pipeline's interrupt."""
        self.step, self.steps_total = i + 1, self.steps_total + 1
        self.expert, self.clip = pipe.current_expert, getattr(pipe, "current_clip", None)
        self.ran.append(self.expert)
        if self.step == self.num_steps and not self.tab.clips:
            self.state = DECODING
        if self.cancel_requested.is_set():
            pipe.interrupt = True
        return {}

    def status(self) -> str:
        """One line for the page: what the run is doing now, or how it ended."""
        moe = self.schedule.boundary is not None
        if self.state == LOADING:
            return "Loading the model…"
        if self.state in (RUNNING, DECODING) and self.step == 0:
            return "Encoding the prompt…" if not self.cancel_requested.is_set() else "Cancelling…"
        clip = f"clip {self.clip + 1} · " if self.clip is not None else ""
        if self.state == RUNNING:
            t = self.schedule.timesteps[self.step - 1]
            return (f"{clip}step {self.step}/{self.num_steps} · {expert_name(self.expert, moe)} · t={t:g}"
                    + (" · cancelling…" if self.cancel_requested.is_set() else ""))
        if self.state == DECODING:
            return f"{clip}step {self.step}/{self.num_steps} done · decoding the video…"
        if self.state == CANCELLED:
            return f"Cancelled after {self.steps_total} step(s); nothing was written."
        if self.state == FAILED:
            return f"Failed: {self.error}"
        return (f"Done in {self.seconds:.1f} s ({self.steps_by_expert()}): {self.frames} frames, "
                f"{self.size[0]}x{self.size[1]}" + (f", {self.num_clips} clip(s)" if self.tab.clips else "")
                + f" → {self.path}")

    def steps_by_expert(self) -> str:
        """How many steps each network ran, in the order they ran: e.g. "9 steps high-noise expert, 3 steps
        low-noise expert". Counted from the run itself, so a fast run whose live lines went by unseen still shows
        where the switch fell."""
        moe = self.schedule.boundary is not None
        counts = {expert: self.ran.count(expert) for expert in dict.fromkeys(self.ran)}
        return ", ".join(f"{n} step{'s' if n != 1 else ''} {expert_name(e, moe)}" for e, n in counts.items())


class Runner:
    """The one generation the page may run at a time, and the pipeline it keeps loaded between runs."""

    def __init__(self, model: str, device: str, output_dir: str | Path):
        self.model, self.device, self.output_dir = model, device, Path(output_dir)
        self._lock = threading.Lock()
        self._job: Job | None = None
        self._pipe = None
        self._pipe_key: tuple | None = None
        self._scheduler = None  # the loaded pipeline's own scheduler (its config and class)

    @property
    def busy(self) -> bool:
        return self._job is not None and not self._job.finished.is_set()

    def start(self, tab: TaskTab, args, schedule: Schedule) -> Job:
        """Start a run in the background; `Busy` if one is running (the page never queues a second one)."""
        with self._lock:
            if self.busy:
                raise Busy(f"A {self._job.tab.variant} run is in progress: wait for it or cancel it.")
            self._job = Job(tab, args, schedule)
        threading.Thread(target=self._run, args=(self._job,), name="wan22-ui-run", daemon=True).start()
        return self._job

    def cancel(self) -> bool:
        """Ask the running job to stop after its current step (the pipeline's interrupt). False when idle."""
        job = self._job
        if job is None or job.finished.is_set():
            return False
        job.cancel_requested.set()
        return True

    def _run(self, job: Job) -> None:
        try:
            pipe = self.pipeline(job.tab, job.args)
            if job.cancel_requested.is_set():
                job.state = CANCELLED
                return
            job.state = RUNNING
            self._generate(pipe, job)
        except Exception as e:  # shown on the page; the server keeps serving
            job.state, job.error = FAILED, f"{type(e).__name__}: {e}"
        finally:
            job.seconds = time.perf_counter() - job.started
            job.finished.set()

    def pipeline(self, tab: TaskTab, args):
        """The pipeline for ``tab`` and ``args``: kept from the previous run when the same, else loaded (the old one
        is released first, so only one model is in memory) and placed as ``--memory_mode`` says."""
        cls = tab.pipeline_class(args.image is not None)
        options = loader_options(args)
        key = (tab.key, cls, args.dtype, args.memory_mode, tuple(sorted(options.items())))
        if key != self._pipe_key:
            self._pipe = self._pipe_key = None
            gc.collect()
            pipe = load_pipeline(model_source(self.model, tab), DTYPES[args.dtype], pipeline_cls=cls, **options)
            if not isinstance(pipe, cls):  # e.g. a saved TI2V text pipeline used with an image
                pipe = cls(**pipe.components)
            if args.memory_mode is not None:
                pipe.enable_memory_mode(args.memory_mode, device=self.device)
            else:
                pipe.to(self.device)
            self._pipe, self._pipe_key, self._scheduler = pipe, key, pipe.scheduler
        # From the loaded scheduler's config each time: a previous run's solver or shift does not carry over.
        if args.sample_solver is None and args.sample_shift is None:
            self._pipe.scheduler = type(self._scheduler).from_config(self._scheduler.config)
        else:
            self._pipe.scheduler = scheduler_for(self._scheduler.config, args.sample_solver, args.sample_shift)
        return self._pipe

    def _generate(self, pipe, job: Job) -> None:
        args = job.args
        generator = torch.Generator(device="cpu").manual_seed(args.base_seed)  # as `wan22 generate` draws it
        out = pipe(**job.tab.call(args, generator), callback_on_step_end=job.on_step,
                   callback_on_step_end_tensor_inputs=["latents"])
        if job.cancel_requested.is_set():
            job.state = CANCELLED
            return
        video = out.frames[0]
        fps = getattr(out, "fps", None) or pipe.variant_defaults.fps
        audio = getattr(out, "audio", None)
        job.path = save_video(video, args.output, fps=fps, audio=audio,
                              sampling_rate=getattr(out, "sampling_rate", 16000))
        job.frames, job.size = len(video), (int(video.shape[2]), int(video.shape[1]))
        job.num_clips = getattr(out, "num_clips", 1)
        job.state = DONE
