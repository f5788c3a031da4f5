"""`wan22 plan`: the memory planner's predictions (arithmetic on parameter counts; nothing is loaded)."""

from __future__ import annotations

from pathlib import Path

from ..core.folders import read_json_object
from ..core.memory_planner import GB, SPECS, best_mode, plan_table, precision_fit_table
from ..utils.memory_specs import spec_from_config
from .validate import CliError


def _plan_spec(model: str):
    if model.lower() in SPECS:
        return SPECS[model.lower()]
    config = Path(model) / "transformer" / "config.json"
    if not config.exists():
        raise CliError(f"--model {model!r}: expected 't2v-A14B', 'i2v-A14B', 's2v-14B', 'animate-14B' or a saved "
                       "pipeline folder with transformer/config.json")
    cfg = read_json_object(config)
    return spec_from_config(cfg, moe=cfg.get("_class_name") == "WanMoETransformer3DModel")


def run(args) -> int:
    """`wan22 plan`: predicted peak accelerator memory and host RAM of every memory mode (or the precision table)."""
    width, height = args.size
    spec = _plan_spec(args.model)
    kwargs = dict(weight_bytes=4 if args.dtype == "fp32" else 2, batched_cfg=args.batched_cfg)
    if args.precision_table:
        budgets = sorted({24.0, 40.0, args.budget_gb})
        print(f"{args.model}, {args.frame_num} frames: fastest memory mode that fits each accelerator budget "
              f"(predicted peak GB; '-' = none fits)")
        print(precision_fit_table(spec, num_frames=args.frame_num, budgets_gb=budgets, **kwargs))
        print("Estimates (docs/memory.md, docs/quantization.md); not measured on a GPU.")
        return 0
    if args.precision is not None:
        kwargs.update(precision=args.precision, scope=args.scope)
    label = args.dtype if args.precision is None else f"{'/'.join(dict.fromkeys(args.precision))} ({args.scope})"
    print(f"{args.model}: {width}x{height}, {args.frame_num} frames, {label} (peaks, GB = 1e9 bytes)")
    print(plan_table(spec, height, width, args.frame_num, **kwargs))
    best = best_mode(spec, height, width, args.frame_num, args.budget_gb * GB, **kwargs)
    if best is None:
        print(f"No mode fits {args.budget_gb:g} GB of accelerator memory.")
    else:
        print(f"Fastest mode within {args.budget_gb:g} GB: {best.mode} ({best.accelerator_gb:.1f} GB accelerator, "
              f"{best.host_gb:.1f} GB host RAM).")
    print("Estimates from parameter counts and activation formulas (docs/memory.md); not measured on a GPU.")
    return 0
