"""The `wan22 ui` page (Gradio): one tab per task the model serves, the plan before the run, the experts while it
runs, the video, its settings and the equivalent `wan22 generate` command after it.

Gradio is an optional, heavy backend (``pip install "diffusers-wan22[ui]"``): it is imported inside the functions
that build the page, so importing this package costs nothing until `wan22 ui` runs.
"""

from __future__ import annotations

import json
import os
import re
import time
from html import escape
from pathlib import Path
from typing import Callable

from ..core.memory_planner import POLICY_BYTES
from ..core.names import DTYPE_NAMES, MEMORY_MODES, RCM_SAMPLERS, SOLVERS
from .charts import expert_name, memory_chart, progress_strip, schedule_chart
from .form import GENERAL, check_request, command_line, resolve_seed, shell_command
from .planning import memory_plan, planner_spec, step_schedule
from .runner import DONE, Busy, Job, Runner
from .tasks import NO_IMAGE, OPTIONAL_IMAGE, REQUIRED_IMAGE, TaskTab, is_tiny, tabs_for

CSS = """
.wan22-error-text { color: #d93025; font-size: 0.85em; }
.wan22-status { font-family: monospace; margin: 4px 0; }
.wan22-chart p { font-size: 0.85em; margin: 2px 0 8px 0; }
"""
# Memory modes a run can use: lazy experts need a checkpoint source the command line does not pass yet.
RUN_MEMORY_MODES = tuple(m for m in MEMORY_MODES if m != "lazy_experts")
PLAN_PRECISIONS = ("as dtype", *(p for p in POLICY_BYTES if p not in DTYPE_NAMES))
DEFAULT_BUDGET_GB = 24.0
# What the size field means, by the tab's image use (and for the rCM tab).
SIZE_NOTES = {NO_IMAGE: "", REQUIRED_IMAGE: " (area budget: the shape follows the image)",
              OPTIONAL_IMAGE: " (with an image: area budget)",
              "rcm": " area (empty: TurboDiffusion's 720p size closest to the image)"}
TURBO_SIZE_INFO = "TurboDiffusion: 720p sizes (1280*720 area); with a size, the image's shape in that area"
POLL_SECONDS = 0.2


def _gradio():
    """The Gradio module (optional heavy backend, the `ui` extra): imported only when the page is built."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local page: no usage reports, no version check
    try:
        import gradio
    except ModuleNotFoundError:
        raise ModuleNotFoundError('`wan22 ui` needs Gradio: pip install "diffusers-wan22[ui]"') from None
    return gradio


def error_html(message: str | None) -> str:
    return f"<span class='wan22-error-text'>⚠ {escape(message)}</span>" if message else ""


def parse_size(text: str) -> tuple[int, int] | None:
    """``W*H`` for the live plan (the run itself goes through the command line's parser)."""
    match = re.fullmatch(r"\s*(\d+)\s*[*xX]\s*(\d+)\s*", text or "")
    return (int(match[1]), int(match[2])) if match else None


class TabPage:
    """The components and events of one task's tab."""

    def __init__(self, gr, tab: TaskTab, runner: Runner, model: str, parse_generate: Callable,
                 model_flags: tuple[str, ...] = ()):
        self.gr, self.tab, self.runner, self.model, self.parse_generate = gr, tab, runner, model, parse_generate
        self.model_flags = model_flags  # `wan22 generate` flags going with --model (TurboWan2.2: --components, ...)
        # W8A8 Turbo experts are planned at their int8 bytes, as `Wan22TurboMixin.estimate_memory` counts them
        self.plan_precision = "w8a8" if "--quant_linear" in model_flags else "as dtype"
        self.fields: dict[str, object] = {}
        self.errors: dict[str, object] = {}

    # ------------------------------------------------------------------ layout
    def add(self, name: str, component_class, *args, error: str | bool = True, **kwargs):
        """An input field ``name`` (element id ``<tab>-<name>``) in its own column, and below it the place where
        the errors of field ``error`` (default: this one; ``False``: none) are shown."""
        with self.gr.Column(min_width=120):
            component = self.fields[name] = component_class(*args, elem_id=f"{self.tab.key}-{name}", **kwargs)
            if error:
                place = name if error is True else error
                self.errors[place] = self.gr.HTML("", visible=False, elem_id=f"{self.tab.key}-{place}-error")
        return component

    def build(self) -> None:
        gr, tab = self.gr, self.tab
        with gr.Row():
            with gr.Column(scale=3):
                self.inputs()
                with gr.Row():
                    self.run_button = gr.Button("Run", variant="primary", elem_id=f"{tab.key}-run")
                    self.cancel_button = gr.Button("Cancel", variant="stop", interactive=False,
                                                   elem_id=f"{tab.key}-cancel")
                self.errors[GENERAL] = gr.HTML("", visible=False, elem_id=f"{tab.key}-general-error")
            with gr.Column(scale=2):
                self.plan_panel()
        self.progress = gr.HTML("", elem_id=f"{tab.key}-progress")
        with gr.Row():
            self.video = gr.Video(label="Video", interactive=False, elem_id=f"{tab.key}-video")
            with gr.Column():
                self.download = gr.DownloadButton("Download mp4", visible=False, elem_id=f"{tab.key}-download")
                self.settings = gr.JSON(label="Settings used", elem_id=f"{tab.key}-settings")
        self.command = gr.Textbox(label="Same video from the command line", lines=2, max_lines=6, interactive=False,
                                  buttons=["copy"], elem_id=f"{tab.key}-command")
        self.wire()

    def inputs(self) -> None:
        gr, tab, d = self.gr, self.tab, self.tab.defaults
        optional = " — optional (empty: the official default)" if tab.is_animate else ""
        self.add("prompt", gr.Textbox, label="Prompt" + optional, lines=2)
        if not tab.is_turbo:  # the rCM students run without guidance: no negative prompt
            self.add("negative_prompt", gr.Textbox, label="Negative prompt",
                     placeholder="(the official negative prompt)")
        if tab.image != NO_IMAGE:
            label = "Image (reference)" if tab.audio else "Image (first frame)"
            self.add("image", gr.Image, label=label + ("" if tab.image == REQUIRED_IMAGE else " — optional"),
                     type="filepath")
        if tab.audio:
            self.add("audio", gr.Audio, label="Speech / song", type="filepath")
            self.add("pose_video", gr.Video, label="Pose video — optional", sources=["upload"])
        if tab.is_animate:
            self.animate_inputs()
        with gr.Row():
            if not tab.is_animate:  # Animate: the video takes the pose video's size
                self.add("size", gr.Textbox, "" if tab.is_turbo else f"{d.width}*{d.height}",
                         label="Size W*H" + SIZE_NOTES[tab.sampler if tab.is_turbo else tab.image],
                         info=TURBO_SIZE_INFO if tab.is_turbo else
                         "official: " + ", ".join(f"{w}*{h}" for w, h in d.supported_sizes))
            if tab.audio:
                self.add("infer_frames", gr.Number, d.num_frames, label="Frames per clip (4k)", precision=0)
                self.add("num_clip", gr.Number, 0, label="Clips (0: as many as the audio needs)", precision=0)
            else:
                label = "Frames per clip (4k+1)" if tab.is_animate else "Frames (4k+1)"
                self.add("frames", gr.Number, d.num_frames, label=label, precision=0)
        self.sampling_inputs()

    def animate_inputs(self) -> None:
        """Animate-14B: the official preprocessing output folder and the official flags."""
        gr = self.gr
        self.add("src_root_path", gr.Textbox, label="Preprocessing output folder (src_ref.png, src_pose.mp4, "
                 "src_face.mp4; replace: + src_bg.mp4, src_mask.mp4)", placeholder="./process_results")
        with gr.Row():
            self.add("mode", gr.Radio, ["animate", "replace"], value="animate", label="Mode")
            self.add("refert_num", gr.Dropdown, [1, 5], value=1, label="Frames from the previous clip")
            self.add("relighting", gr.Checkbox, False, label="Relighting LoRA (official with replace)")

    def sampling_inputs(self) -> None:
        gr, tab, d = self.gr, self.tab, self.tab.defaults
        with gr.Row():
            self.add("steps", gr.Number, tab.default_steps, label="Steps (1-4)" if tab.is_turbo else "Steps",
                     precision=0)
            if tab.is_turbo:
                self.add("solver", gr.Dropdown, list(RCM_SAMPLERS), value="sde", label="Sampler (rCM)")
            elif tab.is_animate:
                self.add("guidance", gr.Number, d.guidance_scale, label="Guidance (1: none)")
            else:
                self.add("shift", gr.Number, d.sample_shift, label="Shift")
                self.add("solver", gr.Dropdown, list(SOLVERS), value="unipc", label="Solver")
        if tab.sampler == "official":
            self.guidance_inputs()
        with gr.Row():
            self.add("seed", gr.Number, 0, label="Seed (-1: random)", precision=0)
            self.add("dtype", gr.Dropdown, list(DTYPE_NAMES), value="bf16", label="dtype")
            self.add("memory_mode", gr.Dropdown, list(RUN_MEMORY_MODES), value="none", label="Memory mode")

    def guidance_inputs(self) -> None:
        gr, tab, d = self.gr, self.tab, self.tab.defaults
        with gr.Row():
            self.add("guidance", gr.Number, d.guidance_scale,
                     label="Guidance (high-noise expert)" if tab.is_moe else "Guidance")
            if tab.is_moe:
                self.add("guidance_2", gr.Number, d.guidance_scale_2, label="Guidance (low-noise expert)", error=False)
        if tab.is_moe:
            with gr.Row():
                self.add("split", gr.Checkbox, False, label="Steps per expert", error=False)
                self.add("high_steps", gr.Number, 2, label="High-noise steps", precision=0, error=False)
                self.add("low_steps", gr.Number, 2, label="Low-noise steps", precision=0, error="expert_steps")

    def plan_panel(self) -> None:
        gr, tab = self.gr, self.tab
        gr.Markdown("**Timestep schedule** (each step's expert; the boundary is where the experts switch)")
        self.schedule_view = gr.HTML(self.schedule_html(**self.default_values(self.schedule_names())),
                                     elem_id=f"{tab.key}-schedule")
        gr.Markdown("**Memory plan** (predicted peaks per memory mode)")
        with gr.Row():
            self.budget = gr.Number(DEFAULT_BUDGET_GB, label="GPU budget (GB)", elem_id=f"{tab.key}-budget")
            self.precision = gr.Dropdown(list(PLAN_PRECISIONS), value=self.plan_precision,
                                         label="Expert precision (plan)", elem_id=f"{tab.key}-precision")
        self.plan_view = gr.HTML(self.plan_html(**self.default_values(self.plan_names()[:-2]),
                                                budget=DEFAULT_BUDGET_GB, precision=self.plan_precision),
                                 elem_id=f"{tab.key}-plan")

    # ------------------------------------------------------------------ live charts
    def schedule_names(self) -> list[str]:
        """The fields the schedule chart reads (those of the tab: an rCM tab has no shift, Animate no solver)."""
        names = ["steps", "shift", "solver", "split", "high_steps", "low_steps"]
        return [n for n in names if n in self.fields]

    def plan_names(self) -> list[str]:
        names = ["size", "infer_frames" if self.tab.audio else "frames", "dtype"]
        return [n for n in names if n in self.fields] + ["budget", "precision"]

    def default_values(self, names: list[str]) -> dict:
        return {n: self.fields[n].value for n in names if n in self.fields}

    def schedule_html(self, steps=None, shift=None, solver=None, split=False, high_steps=None,
                      low_steps=None) -> str:
        """The schedule chart for the current fields (or why there is none)."""
        shift = self.tab.defaults.sample_shift if "shift" not in self.fields else shift
        try:
            expert_steps = (int(high_steps), int(low_steps)) if split else None
            steps = sum(expert_steps) if expert_steps else int(steps)
            if steps < 1 or steps > 1000 or not shift or shift <= 0:
                raise ValueError("steps must be 1..1000 and shift > 0")
            return schedule_chart(step_schedule(self.tab, steps, float(shift), solver, expert_steps))
        except (TypeError, ValueError) as e:
            return f"<p>No schedule for these values ({escape(str(e))}).</p>"

    def plan_html(self, frames=None, dtype=None, budget=None, precision=None, size="", infer_frames=None) -> str:
        """The memory chart for the current fields (or why there is none). An empty size (and Animate, whose video
        takes the pose video's size) plans for the variant's size, the command line's default."""
        found = planner_spec(self.tab, self.model)
        d = self.tab.defaults
        wh = parse_size(size) if (size or "").strip() else (d.width, d.height)
        frames = infer_frames if self.tab.audio else frames
        if found is None:
            return f"<p>The memory planner has no sizes for {self.tab.variant} yet.</p>"
        if wh is None or not frames or frames < 1 or budget is None or budget <= 0:
            return "<p>Enter a size W*H, a frame count and a positive budget to see the plan.</p>"
        policy = None if precision in (None, "as dtype") else precision
        return memory_chart(memory_plan(*found, *wh, int(frames), dtype or "bf16", policy, float(budget)))

    # ------------------------------------------------------------------ events
    def wire(self) -> None:
        schedule_names, plan_names = self.schedule_names(), self.plan_names()
        schedule_inputs = [self.fields[n] for n in schedule_names]
        for component in schedule_inputs:
            component.change(lambda *v: self.schedule_html(**dict(zip(schedule_names, v))), schedule_inputs,
                             self.schedule_view, concurrency_limit=None, show_progress="hidden")
        plan_inputs = [self.fields[n] for n in plan_names[:-2]] + [self.budget, self.precision]
        for component in plan_inputs:
            component.change(lambda *v: self.plan_html(**dict(zip(plan_names, v))), plan_inputs, self.plan_view,
                             concurrency_limit=None, show_progress="hidden")
        if "split" in self.fields:  # with steps per expert, the step count is their sum (the command line's rule)
            self.fields["split"].change(lambda split: self.gr.update(interactive=not split), self.fields["split"],
                                        self.fields["steps"], concurrency_limit=None)
        outputs = [*self.errors.values(), self.progress, self.video, self.download, self.settings, self.command,
                   self.run_button, self.cancel_button]
        self.run_button.click(self.run, list(self.fields.values()), outputs, concurrency_limit=None,
                              show_progress="hidden")
        self.cancel_button.click(self.runner.cancel, None, None, concurrency_limit=None, show_progress="hidden")

    def run(self, *values):
        """Check the request (nothing loads while a field is wrong), start it, stream its progress, show the
        result. A generator: Gradio sends each yielded update to the page."""
        form = dict(zip(self.fields, values))
        if form.get("split"):
            form["steps"] = None  # --expert-steps sets the step count
        seed = resolve_seed(form.get("seed"))
        stamp = time.strftime("%Y%m%d_%H%M%S")
        output = Path(self.runner.output_dir) / f"wan22_{self.tab.key}_{stamp}_{seed}.mp4"
        argv = command_line(self.tab, self.model, form, seed, str(output), self.model_flags)
        request = check_request(self.tab, argv, self.parse_generate)
        if not request.ok:
            yield self.show_errors(request.errors)
            return
        args = request.args
        d = self.tab.defaults
        expert_steps = tuple(args.expert_steps) if args.expert_steps else None
        steps = args.sample_steps or (sum(expert_steps) if expert_steps else self.tab.default_steps)
        schedule = step_schedule(self.tab, steps, args.sample_shift or d.sample_shift, args.sample_solver,
                                 expert_steps)
        try:
            job = self.runner.start(self.tab, args, schedule)
        except Busy as e:
            yield self.show_errors({GENERAL: str(e)})
            return
        yield {**self.show_errors({}), self.run_button: self.gr.update(interactive=False),
               self.cancel_button: self.gr.update(interactive=True), self.video: None,
               self.download: self.gr.update(visible=False), self.settings: None, self.command: "",
               self.progress: self.progress_html(job)}
        try:
            while not job.finished.wait(POLL_SECONDS):
                yield {self.progress: self.progress_html(job)}
        finally:
            if not job.finished.is_set():  # the page went away: stop the run instead of finishing it unseen
                self.runner.cancel()
        yield self.finished(job, argv)

    def show_errors(self, errors: dict[str, str]) -> dict:
        """Every field's error place: the message for the fields in ``errors``, cleared for the others."""
        return {place: self.gr.update(value=error_html(errors.get(name)), visible=name in errors)
                for name, place in self.errors.items()}

    def progress_html(self, job: Job) -> str:
        return progress_strip(job.schedule.experts, job.step, job.schedule.boundary is not None, job.status())

    def finished(self, job: Job, argv: list[str]) -> dict:
        """The page after a run: status, buttons back, and on success the video, download, settings, command."""
        update = {self.progress: self.progress_html(job), self.run_button: self.gr.update(interactive=True),
                  self.cancel_button: self.gr.update(interactive=False)}
        if job.state != DONE:
            return update
        return {**update, self.video: str(job.path), self.download: self.gr.update(value=str(job.path), visible=True),
                self.settings: self.settings_used(job), self.command: shell_command(argv)}

    def settings_used(self, job: Job) -> dict:
        """Every setting of the run (the parsed command line) and what it made."""
        args = {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(job.args).items())
                if v is not None and k not in ("command", "prompts", "output_dir", "lora")}
        moe = job.schedule.boundary is not None
        experts = [expert_name(e, moe) for e in job.schedule.experts]
        return json.loads(json.dumps({
            **args, "negative_prompt": args.get("negative_prompt", "(official)"), "device": self.runner.device,
            "video": {"path": str(job.path), "frames": job.frames, "width": job.size[0], "height": job.size[1],
                      "clips": job.num_clips, "seconds": round(job.seconds, 2)},
            "steps": [{"t": t, "expert": e} for t, e in zip(job.schedule.timesteps, experts)],
            "boundary": job.schedule.boundary}, default=str))


def build_app(model: str, folder_task: str | None, parse_generate: Callable, output_dir: str | os.PathLike,
              device: str, model_flags: tuple[str, ...] = ()):
    """The page for ``model`` (``tiny`` or a folder of ``folder_task``). ``parse_generate(argv)`` is the command
    line's parser and pre-load checks for `wan22 generate` arguments (raising ValueError with the CLI's message);
    ``model_flags`` are the `wan22 generate` flags that go with ``--model`` (TurboWan2.2: ``--components``, ...)."""
    gr = _gradio()
    runner = Runner(model, device, output_dir)
    title = "random-weight tiny models (the videos are noise)" if is_tiny(model) else str(model)
    with gr.Blocks(title="Wan 2.2", analytics_enabled=False) as app:
        gr.Markdown(f"## Wan 2.2 on diffusers — {escape(title)}\nDevice: `{device}`. Outputs: `{output_dir}`. "
                    "One run at a time.")
        with gr.Tabs():
            for tab in tabs_for(model, folder_task):
                with gr.Tab(tab.label, id=tab.key, elem_id=f"tab-{tab.key}"):
                    TabPage(gr, tab, runner, model, parse_generate, model_flags).build()
    return app


def launch(app, host: str, port: int | None, output_dir: str | os.PathLike) -> None:
    """Serve the page (blocks until interrupted)."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    app.queue(default_concurrency_limit=None).launch(
        server_name=host, server_port=port, allowed_paths=[str(Path(output_dir).resolve())], css=CSS,
        ssr_mode=False, mcp_server=False, show_error=True, footer_links=[])
