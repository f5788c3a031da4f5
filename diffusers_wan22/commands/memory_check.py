"""Will this run fit in memory? Decided before anything is loaded, without torch (`wan22 generate`, `wan22 plan`).

The model's sizes come from `core/model_specs.py` (config files and weight-file byte sizes). The memory planner
(`core/memory_planner.py`) predicts the peak host RAM / accelerator memory of the chosen memory mode, size and frame
count; a run predicted not to fit the machine is refused with a `CliError` naming the flag to change and the
predicted GB.
"""

from __future__ import annotations

from ..core.machine import host_memory_bytes
from ..core.memory_planner import GB, MemoryEstimate, ModelSpec, best_mode, estimate_memory
from .errors import CliError


# ------------------------------------------------------------------------------------------------ the check
def planned_peaks(spec: ModelSpec, width: int, height: int, frames: int, mode: str, on_cpu: bool, weight_bytes: int,
                  t5_cpu: bool = False) -> tuple[float, float]:
    """(accelerator bytes, host bytes) the planner predicts; on a CPU everything is host RAM (accelerator 0)."""
    est = estimate_memory(spec, height, width, frames, mode=mode, weight_bytes=weight_bytes,
                          execution="cpu" if on_cpu else "accelerator")
    if on_cpu or not t5_cpu:
        return est.accelerator_bytes, est.host_bytes
    # --t5_cpu: the text encoder never reaches the accelerator
    text = spec.text_encoder_params * weight_bytes if mode == "none" else 0
    return max(v for k, v in est.stages.items() if k != "text") - text, est.host_bytes


def check_memory(spec: ModelSpec, *, width: int, height: int, frames: int, mode: str | None, on_cpu: bool,
                 weight_bytes: int, t5_cpu: bool = False, accelerator_bytes: float | None = None,
                 host_bytes: float | None = None, size_flags: tuple[str, str] = ("--size", "--frame_num")) -> None:
    """Refuse a run the planner predicts does not fit: host RAM (``host_bytes``, default this machine's) and, on an
    accelerator, ``accelerator_bytes``. The error names the flag to change: ``--memory_mode`` when the model alone
    does not fit in that mode, else ``--size`` / ``--frame_num`` (whichever is further above the defaults)."""
    mode = mode or "none"
    host_bytes = host_memory_bytes() if host_bytes is None else host_bytes
    budgets = [("RAM", 1, host_bytes, "this machine has")]
    if not on_cpu and accelerator_bytes is not None:
        budgets.insert(0, ("accelerator memory", 0, accelerator_bytes, "the device has"))
    need = planned_peaks(spec, width, height, frames, mode, on_cpu, weight_bytes, t5_cpu)
    for what, i, budget, has in budgets:
        if budget is None or need[i] <= budget:
            continue
        floor = planned_peaks(spec, 16, 16, 1, mode, on_cpu, weight_bytes, t5_cpu)[i]
        have = f"{has} {budget / GB:.1f} GB; --no_memory_check runs anyway"
        if floor > budget:
            raise CliError("--memory_mode", f"--memory_mode {mode}: the model alone needs about {floor / GB:.1f} GB "
                                            f"of {what} (memory planner); {have}{_other_mode(spec, i, budget, on_cpu)}")
        flag = size_flags[0] if _area_ratio(width, height) >= frames / 81 else size_flags[1]
        raise CliError(flag, f"{flag}: {size_flags[0]} {width}*{height} with {size_flags[1]} {frames} needs about "
                             f"{need[i] / GB:.1f} GB of {what} (memory planner, memory mode {mode}); {have}; choose a "
                             f"smaller {size_flags[0]} or {size_flags[1]}")


def _area_ratio(width: int, height: int) -> float:
    return width * height / (1280 * 720)


def _other_mode(spec: ModelSpec, which: int, budget: float, on_cpu: bool) -> str:
    """A hint naming the memory mode that would fit, when one does."""
    if which == 0:
        est = best_mode(spec, 480, 832, 81, budget)
        return "" if est is None else f"; at 832*480 --memory_mode {est.mode} needs {est.accelerator_gb:.1f} GB"
    if spec.num_experts > 1:
        lazy: MemoryEstimate = estimate_memory(spec, 480, 832, 81, mode="lazy_experts",
                                               execution="cpu" if on_cpu else "accelerator")
        if lazy.host_bytes <= budget:
            return f"; --memory_mode lazy_experts needs about {lazy.host_gb:.1f} GB at 832*480"
    return ""
