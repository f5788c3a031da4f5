"""`wan22 plan`: the memory planner's predictions (arithmetic on parameter counts; nothing is loaded)."""

from __future__ import annotations

from ..core.memory_planner import GB, best_mode, plan_table, precision_fit_table
from ..core.model_specs import folder_spec, variant_spec
from .errors import CliError


def plan_spec(model: str, task: str):
    """The sizes of ``--model``: a variant name's real model, or a folder's config files (no weight read)."""
    spec = variant_spec(model) or folder_spec(model, task)
    if spec is None:
        raise CliError("--model", f"--model {model!r}: cannot read the model's sizes from its config files (try "
                                  "`wan22 info` on it)")
    return spec


def run(args) -> int:
    """`wan22 plan`: predicted peak accelerator memory and host RAM of every memory mode (or the precision table)."""
    width, height = args.size
    spec = plan_spec(args.model, args.task)
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
    name = args.model if args.model.lower() == args.task.lower() else f"{args.model} ({args.task})"
    print(f"{name}: {width}x{height}, {args.frame_num} frames, {label} (peaks, GB = 1e9 bytes)")
    print(plan_table(spec, height, width, args.frame_num, **kwargs))
    best = best_mode(spec, height, width, args.frame_num, args.budget_gb * GB, **kwargs)
    if best is None:
        print(f"No mode fits {args.budget_gb:g} GB of accelerator memory.")
    else:
        print(f"Fastest mode within {args.budget_gb:g} GB: {best.mode} ({best.accelerator_gb:.1f} GB accelerator, "
              f"{best.host_gb:.1f} GB host RAM).")
    print("Estimates from parameter counts and activation formulas (docs/memory.md); not measured on a GPU.")
    return 0
