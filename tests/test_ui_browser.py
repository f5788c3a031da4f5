"""`wan22 ui --model tiny` as a real server, driven in headless Chromium (Debian's `chromium` package, through
Playwright's Python API with ``executable_path``; no browser is downloaded) the way a person uses it:

* a bad size shows an error next to the size field and starts nothing;
* a run shows its progress step by step with the expert of each step, then a `<video>` whose file is a real mp4
  with the requested frame count, a download, the settings and the equivalent `wan22 generate` command;
* while a run runs no second one can start, and Cancel stops it through the pipeline's interrupt;
* speech-to-video gives a video with its audio in the page;
* a TurboWan2.2 folder (`--model TURBO --components I2V`) and an Animate-14B folder each get their own tab, whose
  run names the expert (Turbo) or the clip (Animate) of each step and ends in a real mp4.

The same test takes a screenshot of every tab; with ``WAN22_UI_SCREENSHOTS=docs/ui`` it writes them where docs/ui.md
shows them (otherwise into a temporary folder, so a test run leaves the tracked images alone).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli import _has_audio_stream, read_video

from diffusers_wan22.commands.ui import parse_generate

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = Path(os.environ.get("WAN22_UI_SCREENSHOTS") or tempfile.mkdtemp(prefix="wan22_ui_shots_"))
CHROMIUM = "/usr/bin/chromium"
# What Chromium needs on these machines: no sandbox as root, no GPU, and no background connections (the network is
# closed; Chromium would otherwise keep trying Google's hosts).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TABS = ("t2v", "i2v", "ti2v", "s2v", "turbo", "animate")
STARTUP_SECONDS = 240
FIXTURES = ROOT / "tests" / "fixtures"
TURBO, I2V = FIXTURES / "turbo" / "components", FIXTURES / "official" / "i2v_a14b"
ANIMATE = FIXTURES / "official" / "animate_14b"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_serving(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"`wan22 ui` exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"`wan22 ui` did not serve {url} within {STARTUP_SECONDS} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def serve(work: Path, *model_args: str):
    """`wan22 ui <model_args>` of this checkout (not whatever `wan22` is on PATH) on a free local port; yields
    (url, output folder, log file) while it serves."""
    out, log = work / "outputs", work / "server.log"
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with open(log, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "diffusers_wan22.cli", "ui", *model_args, "--port", str(port),
                                 "--output_dir", str(out)], cwd=work, stdout=sink, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_serving(url, proc, log)
        yield url, out, log
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`wan22 ui --model tiny`."""
    with serve(tmp_path_factory.mktemp("ui"), "--model", "tiny") as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    """A headless Debian Chromium. Missing pieces fail the test (CI installs them: .ci/run)."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: the browser test needs Debian's chromium (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: pip install -e '.[test]' (it drives /usr/bin/chromium, no download)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@contextlib.contextmanager
def open_page(browser, url: str, first_tab: str):
    """A page of ``browser`` on the UI at ``url``, once the tab ``first_tab`` is shown."""
    page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page.set_default_timeout(60_000)
    page.goto(url)
    page.wait_for_selector(f"#{first_tab}-run")
    try:
        yield page
    finally:
        page.close()


@pytest.fixture(scope="module")
def page(browser, server):
    with open_page(browser, server[0], "t2v") as page:
        yield page


# ------------------------------------------------------------------ helpers
def fill(page, field: str, value) -> None:
    """Type into a field (``<tab>-<name>``) and leave it, as a person does (the page updates on change)."""
    box = page.locator(f"#{field} textarea, #{field} input").first
    box.fill(str(value))
    box.press("Tab")


def choose(page, field: str, value: str) -> None:
    """Pick ``value`` in a dropdown field: type it (the list filters) and take it with Enter."""
    box = page.locator(f"#{field} input").first
    box.fill(value)
    box.press("Enter")
    page.wait_for_function("([s, v]) => document.querySelector(s).value === v", arg=[f"#{field} input", value])


def watch_progress(page, tab: str, until: str, limit: float = 90.0) -> list[str]:
    """Every status line the progress area shows until one matches the pattern ``until`` (polled every 50 ms)."""
    seen: list[str] = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        text = page.inner_text(f"#{tab}-progress").strip()
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        if re.search(until, text):
            return seen
        time.sleep(0.05)
    pytest.fail(f"progress never showed {until!r}; it showed {seen}")


def wait_for_text(page, selector: str, text: str) -> None:
    page.wait_for_function("([s, t]) => document.querySelector(s).innerText.includes(t)", arg=[selector, text])


def error_text(page, tab: str, field: str) -> str:
    error = page.locator(f"#{tab}-{field}-error")
    error.wait_for(state="visible")
    return error.inner_text()


def videos(out: Path) -> list[Path]:
    return sorted(out.glob("*.mp4")) if out.exists() else []


def download_video(page, tab: str, dest: Path) -> Path:
    """The file behind the page's `<video>`, fetched as the browser would."""
    src = page.locator(f"#{tab}-video video").get_attribute("src")
    dest.write_bytes(page.request.get(src).body())
    return dest


# ------------------------------------------------------------------ tests
def test_the_schedule_and_the_plan_follow_the_fields(page):
    schedule = page.locator("#t2v-schedule")
    assert "boundary t=875" in schedule.inner_html()  # official T2V: 40 steps, shift 12 -> 26 high + 14 low
    legend = schedule.inner_text()
    assert "high-noise expert: 26 steps" in legend and "low-noise expert: 14 steps" in legend
    fill(page, "t2v-shift", 3)  # a smaller shift spends fewer steps at high noise
    wait_for_text(page, "#t2v-schedule", "high-noise expert: 12 steps")
    page.check("#t2v-split input")  # steps per expert: 2 + 2, split at the boundary
    wait_for_text(page, "#t2v-schedule", "high-noise expert: 2 steps")
    assert "low-noise expert: 2 steps" in schedule.inner_text()
    page.wait_for_function("() => document.querySelector('#t2v-steps input').disabled")  # the steps are 2 + 2
    page.uncheck("#t2v-split input")
    fill(page, "t2v-shift", 12)
    plan = page.locator("#t2v-plan")
    assert "Recommended for 24 GB: group_offload" in plan.inner_text()
    fill(page, "t2v-budget", 100)
    wait_for_text(page, "#t2v-plan", "Recommended for 100 GB: none")
    fill(page, "t2v-budget", 24)


def test_a_bad_size_shows_an_inline_error_and_starts_nothing(page, server):
    _, out, _ = server
    fill(page, "t2v-prompt", "Two cats boxing on a stage.")
    fill(page, "t2v-size", "100*100")
    page.click("#t2v-run")
    assert "--size 100*100: width and height must be positive multiples of 16" in error_text(page, "t2v", "size")
    # another check (frames 4k+1), shown next to its own field
    fill(page, "t2v-size", "32*32")
    fill(page, "t2v-frames", 6)
    page.click("#t2v-run")
    assert "--frame_num must be 4k+1" in error_text(page, "t2v", "frames")
    assert not page.locator("#t2v-size-error").is_visible()  # the size is fine now: its error is gone
    time.sleep(1.0)
    assert page.inner_text("#t2v-progress").strip() == "", "a refused request must not start a run"
    assert videos(out) == []


def test_a_run_shows_each_step_and_its_expert_then_the_video(page, server, tmp_path):
    _, out, _ = server
    fill(page, "t2v-frames", 5)
    fill(page, "t2v-steps", 40)
    fill(page, "t2v-seed", 7)
    page.click("#t2v-run")
    seen = watch_progress(page, "t2v", "Done in")
    # a tiny step takes milliseconds, so the live lines may all go by unseen here (the cancel test below watches
    # them on a long run); the finished line carries the run's own count of the steps each expert ran: both, 40
    ran = re.search(r"Done in [\d.]+ s \((\d+) steps? high-noise expert, (\d+) steps? low-noise expert\)", seen[-1])
    assert ran and int(ran[1]) + int(ran[2]) == 40 and int(ran[2]) > 0, seen[-1]
    # the page's video is a real mp4 with the requested frames and size
    assert read_video(download_video(page, "t2v", tmp_path / "page.mp4"))[:2] == (5, (32, 32))
    with page.expect_download() as download:
        page.click("#t2v-download")
    assert Path(download.value.path()).read_bytes() == videos(out)[0].read_bytes()
    line = page.input_value("#t2v-command textarea")
    command = shlex.split(line)
    assert command[:7] == ["wan22", "generate", "--model", "tiny", "--task", "t2v-A14B", "--prompt"]
    for flag, value in [("--prompt", "Two cats boxing on a stage."), ("--frame_num", "5"), ("--size", "32*32"),
                        ("--sample_steps", "40"), ("--base_seed", "7"), ("--output", str(videos(out)[0]))]:
        assert command[command.index(flag) + 1] == value, (flag, line)
    settings = re.sub(r"\s+", "", page.inner_text("#t2v-settings"))  # the JSON view puts each token on a line
    assert '"base_seed":7' in settings and '"frames":5' in settings and '"boundary":875' in settings
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "t2v.png", full_page=True)


def test_screenshot_of_the_other_tabs(page):
    for tab in ("i2v", "ti2v"):  # T2V and S2V are taken after their runs
        page.click(f"#tab-{tab}-button")
        page.locator(f"#{tab}-run").wait_for(state="visible")
        page.locator(f"#{tab}-schedule svg").wait_for()
        page.screenshot(path=SCREENSHOTS / f"{tab}.png", full_page=True)
    page.click("#tab-t2v-button")


def test_one_run_at_a_time_and_cancel_stops_it(page, server):
    _, out, _ = server
    before = videos(out)
    fill(page, "t2v-steps", 400)
    page.click("#t2v-run")
    live = watch_progress(page, "t2v", r"step ([2-9]|\d\d+)/400")[-1]  # at least two steps done
    assert re.search(r"step \d+/400 · high-noise expert · t=\d", live), live  # live: the step and its expert
    assert page.is_disabled("#t2v-run"), "a second run must not start while one runs"
    page.click("#tab-ti2v-button")  # nor from another tab: the server refuses it
    fill(page, "ti2v-prompt", "A red car at sunset.")
    page.click("#ti2v-run")
    assert "A t2v-A14B run is in progress" in error_text(page, "ti2v", "general")
    page.click("#tab-t2v-button")
    page.click("#t2v-cancel")
    final = watch_progress(page, "t2v", "Cancelled after")[-1]
    done = int(re.search(r"Cancelled after (\d+) step", final)[1])
    assert 2 <= done < 400
    assert videos(out) == before, "a cancelled run writes nothing"
    assert page.is_enabled("#t2v-run") and page.is_disabled("#t2v-cancel")


def test_speech_to_video_plays_with_its_audio(page, server, tmp_path):
    image, audio = tmp_path / "face.png", tmp_path / "tone.wav"
    Image.fromarray((np.random.default_rng(0).random((64, 80, 3)) * 255).astype("uint8")).save(image)
    t = np.arange(int(0.4 * 16000)) / 16000
    with wave.open(str(audio), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes((0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2").tobytes())
    page.click("#tab-s2v-button")
    fill(page, "s2v-prompt", "A woman is singing.")
    page.set_input_files("#s2v-image input[type=file]", str(image))
    page.set_input_files("#s2v-audio input[type=file]", str(audio))
    fill(page, "s2v-size", "64*64")
    fill(page, "s2v-infer_frames", 8)
    fill(page, "s2v-steps", 3)
    page.locator("#s2v-image img").wait_for()  # both files uploaded and shown
    page.locator("#s2v-audio [data-testid='download-link']").wait_for()
    page.click("#s2v-run")
    seen = watch_progress(page, "s2v", "Done in")
    assert re.search(r"Done in [\d.]+ s \(3 steps transformer\): 5 frames, 64x64, 1 clip\(s\)", seen[-1]), seen
    video = download_video(page, "s2v", tmp_path / "s2v.mp4")
    assert read_video(video)[0] == 5  # 8 frames per clip, the first clip drops the reference's 3
    assert _has_audio_stream(video)
    page.screenshot(path=SCREENSHOTS / "s2v.png", full_page=True)


def run_to_the_video(page, tab: str, tmp_path: Path) -> tuple[list[str], tuple, list[str]]:
    """Run the tab as filled in; returns the progress lines seen, the page video's (frames, size, ...) and the
    `wan22 generate` command it shows, after checking that command passes the command line's own checks."""
    page.click(f"#{tab}-run")
    seen = watch_progress(page, tab, "Done in")
    video = read_video(download_video(page, tab, tmp_path / f"{tab}.mp4"))
    command = shlex.split(page.input_value(f"#{tab}-command textarea"))
    assert command[:2] == ["wan22", "generate"]
    parse_generate(command[2:-2] + ["--output", str(tmp_path / "again.mp4")])  # a valid `wan22 generate` line
    page.screenshot(path=SCREENSHOTS / f"{tab}.png", full_page=True)
    return seen, video, command


def test_turbo_tab_runs_the_rcm_experts(browser, tmp_path_factory, tmp_path):
    """`wan22 ui --model TurboWan2.2 --components Wan2.2-I2V-A14B`: one Turbo tab, the rCM schedule (2 + 2 steps
    around t=900), each step's expert live, a real mp4 at TurboDiffusion's size rule."""
    image = FIXTURES / "turbo" / "fp32_sla_ode" / "image.png"
    with serve(tmp_path_factory.mktemp("turbo"), "--model", str(TURBO), "--components", str(I2V)) as (url, _, _), \
            open_page(browser, url, "turbo") as page:
        assert page.locator("[id^=tab-][id$=-button]").count() == 1  # the Turbo tab only
        assert "boundary t=900" in page.inner_html("#turbo-schedule")
        assert "high-noise expert: 2 steps" in page.inner_text("#turbo-schedule")
        assert not page.locator("#turbo-shift").count() and not page.locator("#turbo-guidance").count()
        fill(page, "turbo-prompt", "A white cat surfing at sunset.")
        page.set_input_files("#turbo-image input[type=file]", str(image))
        page.locator("#turbo-image img").wait_for()
        fill(page, "turbo-size", "304*256")  # SLA keeps 10% of the key blocks: enough tokens for one
        fill(page, "turbo-frames", 5)
        choose(page, "turbo-dtype", "fp32")
        seen, video, command = run_to_the_video(page, "turbo", tmp_path)
    # A step takes about half a second here, so the live lines usually show (on a loaded machine they can go by
    # between two polls): each one names its expert; the finished line counts the experts the run itself used.
    live = [line for line in seen if line.startswith("step ") and "done" not in line]
    assert all(re.match(r"step [1-4]/4 · (high|low)-noise expert · t=\d", line) for line in live), live
    assert "(2 steps high-noise expert, 2 steps low-noise expert): 5 frames, 320x240" in seen[-1], seen[-1]
    assert video[:2] == (5, (320, 240))
    assert command[2:6] == ["--model", str(TURBO), "--components", str(I2V)] and "--sample_solver" in command


def test_animate_tab_runs_clip_after_clip(browser, tmp_path_factory, tmp_path):
    """`wan22 ui --model Wan2.2-Animate-14B`: the preprocessing folder as input, progress per clip, a real mp4 of
    the pose video's length."""
    inputs = ANIMATE / "inputs" / "animate"
    with serve(tmp_path_factory.mktemp("animate"), "--model", str(ANIMATE)) as (url, _, _), \
            open_page(browser, url, "animate") as page:
        fill(page, "animate-src_root_path", inputs)
        page.click("#animate-mode label:has-text('replace')")  # no src_bg / src_mask here: refused on the field
        page.click("#animate-run")
        assert "lacks ['src_bg.mp4', 'src_mask.mp4']" in error_text(page, "animate", "src_root_path")
        page.click("#animate-mode label:has-text('animate')")
        fill(page, "animate-frames", 5)
        fill(page, "animate-steps", 2)
        choose(page, "animate-dtype", "fp32")
        seen, video, command = run_to_the_video(page, "animate", tmp_path)
    assert re.search(r"Done in [\d.]+ s \(4 steps transformer\): 8 frames, 64x80, 2 clip\(s\)", seen[-1]), seen
    assert any(re.match(r"clip [12] · step [12]/2 · transformer · t=\d", line) for line in seen), seen  # ~2 s a step
    assert video[:2] == (8, (64, 80))
    assert command[command.index("--src_root_path") + 1] == str(inputs) and "--replace_flag" not in command


def test_every_tab_has_a_screenshot():
    assert sorted(p.stem for p in SCREENSHOTS.glob("*.png")) == sorted(TABS)
