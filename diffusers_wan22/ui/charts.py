"""Small inline SVG charts for the page (no plotting library): the memory plan as bars, the timestep schedule with
the boundary and each step's expert, and the per-step progress strip.

Every chart is plain text, so it renders the same in any browser and the tests can read its labels.
"""

from __future__ import annotations

from html import escape

from ..core.names import HIGH, LOW
from .planning import MemoryPlan, Schedule

EXPERT_COLORS = {HIGH: "#e8710a", LOW: "#1a73e8"}
DENSE_COLOR = "#5f6368"
FITS, TOO_BIG = "#34a853", "#bdc1c6"
FONT = "font-family='sans-serif' font-size='12'"


def expert_name(expert: str, moe: bool) -> str:
    """How the page names the network running a step: an A14B expert, or the one transformer of a dense model."""
    if not moe:
        return "transformer"
    return {HIGH: "high-noise expert", LOW: "low-noise expert"}[expert]


def _color(expert: str, moe: bool) -> str:
    return EXPERT_COLORS[expert] if moe else DENSE_COLOR


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    # Scales to the column's width (at most its natural size), keeping its proportions.
    return (f"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {width} {height}' width='100%' "
            f"style='max-width:{width}px' role='img' aria-label='{escape(title, quote=True)}'>{''.join(body)}</svg>")


def _text(x: float, y: float, text: str, anchor: str = "start", extra: str = "") -> str:
    return f"<text x='{x:.1f}' y='{y:.1f}' text-anchor='{anchor}' {FONT} {extra}>{escape(text)}</text>"


def memory_chart(plan: MemoryPlan) -> str:
    """Horizontal bars: predicted peak accelerator GB per memory mode, the budget as a dashed line, the recommended
    mode marked; host RAM as text. Returns HTML (a caption and the SVG)."""
    label_w, bar_w, row_h, top = 104, 250, 24, 24
    scale = bar_w / max(max(e.accelerator_gb for e in plan.estimates), plan.budget_gb, 1e-9) / 1.05
    body = [_text(0, 14, "predicted peak accelerator memory (GB)", extra="font-weight='bold'")]
    for i, est in enumerate(plan.estimates):
        y = top + i * row_h
        best = plan.best is not None and est.mode == plan.best.mode
        color = FITS if est.accelerator_gb <= plan.budget_gb else TOO_BIG
        body.append(_text(label_w - 6, y + 14, est.mode, "end", "font-weight='bold'" if best else ""))
        body.append(f"<rect x='{label_w}' y='{y + 3}' width='{max(est.accelerator_gb * scale, 1):.1f}' height='16' "
                    f"fill='{color}'><title>{escape(str(est))}</title></rect>")
        note = f"{est.accelerator_gb:.1f} GB · host {est.host_gb:.1f} GB" + ("  ★ recommended" if best else "")
        body.append(_text(label_w + est.accelerator_gb * scale + 6, y + 15, note))
    x = label_w + plan.budget_gb * scale
    bottom = top + len(plan.estimates) * row_h
    body.append(f"<line x1='{x:.1f}' y1='{top - 2}' x2='{x:.1f}' y2='{bottom}' stroke='#d93025' "
                "stroke-dasharray='4 3'/>")
    body.append(_text(x, bottom + 14, f"budget {plan.budget_gb:g} GB", "middle", "fill='#d93025'"))
    svg = _svg(label_w + bar_w + 176, bottom + 22, body, "memory plan")
    return f"<div class='wan22-chart'>{svg}<p>{escape(recommendation(plan))}</p></div>"


def recommendation(plan: MemoryPlan) -> str:
    """One sentence: the fastest mode within the budget, or that none fits."""
    if plan.best is None:
        return (f"No memory mode fits {plan.budget_gb:g} GB for {plan.label}: lower the size, the frames or the "
                "precision.")
    return (f"Recommended for {plan.budget_gb:g} GB: {plan.best.mode} ({plan.best.accelerator_gb:.1f} GB accelerator, "
            f"{plan.best.host_gb:.1f} GB host RAM) — sizes of {plan.label}. Estimates, not GPU measurements.")


def schedule_chart(schedule: Schedule) -> str:
    """Timestep of every step (dots coloured by expert, joined by a line), the boundary as a dashed line, a legend
    with the steps per expert. Returns HTML."""
    moe = schedule.boundary is not None
    left, top, plot_w, plot_h = 44, 12, 420, 150
    n = len(schedule.timesteps)
    x = [left + (plot_w * i / max(n - 1, 1)) for i in range(n)]
    y = [top + plot_h * (1 - t / 1000) for t in schedule.timesteps]
    body = [f"<line x1='{left}' y1='{top + plot_h}' x2='{left + plot_w}' y2='{top + plot_h}' stroke='#888'/>",
            f"<line x1='{left}' y1='{top}' x2='{left}' y2='{top + plot_h}' stroke='#888'/>",
            _text(left - 4, top + 4, "1000", "end"), _text(left - 4, top + plot_h + 4, "0", "end"),
            _text(left + plot_w / 2, top + plot_h + 28, "step", "middle"),
            _text(12, top + plot_h / 2, "t", "middle")]
    body.append("<polyline fill='none' stroke='#aaa' points='" +
                " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(x, y)) + "'/>")
    for i, (a, b, t, e) in enumerate(zip(x, y, schedule.timesteps, schedule.experts)):
        body.append(f"<circle cx='{a:.1f}' cy='{b:.1f}' r='3.5' fill='{_color(e, moe)}'>"
                    f"<title>step {i}: t={t:g}, {expert_name(e, moe)}</title></circle>")
    if moe:
        yb = top + plot_h * (1 - schedule.boundary / 1000)
        body.append(f"<line x1='{left}' y1='{yb:.1f}' x2='{left + plot_w}' y2='{yb:.1f}' stroke='#d93025' "
                    "stroke-dasharray='4 3'/>")
        body.append(_text(left + plot_w, yb - 4, f"boundary t={schedule.boundary:g}", "end", "fill='#d93025'"))
    body += _legend(schedule, moe, left, top + plot_h + 44)
    return f"<div class='wan22-chart'>{_svg(left + plot_w + 20, top + plot_h + 56, body, 'timestep schedule')}</div>"


def _legend(schedule: Schedule, moe: bool, x: float, y: float) -> list[str]:
    items = []
    for expert in dict.fromkeys(schedule.experts):
        count = schedule.experts.count(expert)
        items.append(f"<circle cx='{x + 5}' cy='{y - 4}' r='4' fill='{_color(expert, moe)}'/>")
        items.append(_text(x + 13, y, f"{expert_name(expert, moe)}: {count} step{'s' * (count != 1)}"))
        x += 190
    return items


def progress_strip(experts: list[str], done: int, moe: bool, status: str) -> str:
    """The run's progress: one cell per step (filled once done, coloured by expert), and a status line."""
    n = max(len(experts), 1)
    cell = min(18.0, 460 / n)
    body = []
    for i, expert in enumerate(experts):
        opacity = 1.0 if i < done else 0.2
        body.append(f"<rect x='{i * cell:.1f}' y='0' width='{max(cell - 1, 0.5):.1f}' height='14' "
                    f"fill='{_color(expert, moe)}' fill-opacity='{opacity}'><title>step {i}: "
                    f"{expert_name(expert, moe)}</title></rect>")
    strip = _svg(int(cell * n) + 2, 16, body, "steps") if experts else ""
    return f"<div class='wan22-progress'>{strip}<p class='wan22-status'>{escape(status)}</p></div>"
