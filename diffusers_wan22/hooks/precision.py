"""Per-expert precision policies for the Wan 2.2 A14B mixture of experts: casts, fp8 storage, torchao weight-only.

Everything here runs diffusers' (or torchao's) own machinery on *one* expert at a time, so the two experts of a
`WanMoETransformer3DModel` can be stored differently (e.g. the high-noise expert in fp8, the low-noise one in bf16).

Policies (`set_expert_precision(moe, high=..., low=..., scope=...)`):

=====================  ===================================================================================
``"fp32"`` / ``"bf16"``  cast the whole expert (parameters, not buffers) as is; ``"fp16"`` keeps the model's
/ ``"fp16"``           ``_keep_in_fp32_modules`` in fp32, like diffusers' ``from_pretrained(torch_dtype=fp16)``.
                       Only ``scope="all"``: a cast changes the dtype the expert computes in.
``"fp8"``              float8_e4m3fn *storage*, compute in ``compute_dtype`` (bf16 by default): the expert is
                       cast to the compute dtype, then diffusers' layerwise casting
                       (`diffusers.hooks.apply_layerwise_casting`) is put on the selected ``nn.Linear`` layers,
                       which are upcast for their own forward only.
``"int8-weight-only"``  torchao ``Int8WeightOnlyConfig`` / ``Float8WeightOnlyConfig`` on the selected layers, after
``"fp8-weight-only"``   casting the expert to ``compute_dtype``. Needs ``torchao`` (``pip install
                       diffusers-wan22[quant]``); without it the call raises `QuantizationUnavailableError`.
=====================  ===================================================================================

Scopes (which ``nn.Linear`` layers a quantizing policy touches; biases, norms and modulation tables never are):

* ``"ffn"``: ``blocks.*.ffn`` (the two FFN projections of every block);
* ``"attn"``: ``blocks.*.attn1`` / ``attn2`` projections (q, k, v, out);
* ``"ffn+attn"``: both;
* ``"all"``: every ``nn.Linear`` except what diffusers' ``enable_layerwise_casting`` skips for this model (patch
  and condition embedders, norms, ``proj_out``, the ``_keep_in_fp32_modules``). For Wan this is the same set as
  ``"ffn+attn"``.

Nothing falls back silently: an unknown policy or scope, a partial scope with a cast policy, re-quantizing an
already quantized expert or a missing backend raise an error naming what was asked and what is possible.

The policy of each expert is recorded in the MoE config (``expert_precision``), so `save_pretrained` +
`from_pretrained` restore it: the cast / fp8 weights are saved as stored (fp8 tensors in safetensors) and the hooks
are re-applied after loading, which gives bit-identical outputs. torchao and GGUF experts cannot be saved by
diffusers 0.42 (tensor subclasses); `save_pretrained` refuses them.

GGUF experts are loaded by `quantizers/gguf.py`; this module only recognises them (`quantization_state`).

The functions take a MoE duck-typed (``get_expert``, ``loaded_experts``, ``config``, ``register_to_config``): the
model layer sits above the hooks and calls into them, never the other way round.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np
import torch
from diffusers.hooks import apply_layerwise_casting
from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN
from torch import nn

from .._compat import diffusers_hook_registry, disable_peft_input_autocast
from ..core.names import CAST_POLICY_NAMES, TORCHAO_POLICIES
from ..core.names import PRECISION_POLICIES as POLICIES
from ..core.names import PRECISION_SCOPES as SCOPES

CAST_POLICIES = dict(zip(CAST_POLICY_NAMES, (torch.float32, torch.bfloat16, torch.float16)))
FP8_STORAGE_DTYPE = torch.float8_e4m3fn
COMPUTE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_SCOPE_PATTERNS = {
    "ffn": (r"^blocks\.\d+\.ffn\.",),
    "attn": (r"^blocks\.\d+\.attn[12]\.",),
}
_SCOPE_PATTERNS["ffn+attn"] = _SCOPE_PATTERNS["ffn"] + _SCOPE_PATTERNS["attn"]
_ADAPTER_LAYER = re.compile(r"(^|\.)(lora_|lokr_|hada_)")  # PEFT adapter weights are never quantized
TORCHAO_HINT = "pip install 'diffusers-wan22[quant]' (torchao >= 0.15; measured with torchao 0.18.0)"


class QuantizationUnavailableError(RuntimeError):
    """The requested precision needs a backend (package, device) that is not available here."""


# ---------------------------------------------------------------------------------------------------- selection
def _layerwise_skip_patterns(model: nn.Module) -> tuple[str, ...]:
    """The module-name patterns diffusers' `ModelMixin.enable_layerwise_casting` skips for ``model``."""
    patterns = tuple(DEFAULT_SKIP_MODULES_PATTERN)
    patterns += tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    patterns += tuple(getattr(model, "_skip_layerwise_casting_patterns", None) or ())
    return patterns


def _skipped_by_default(name: str, patterns: tuple[str, ...]) -> bool:
    # diffusers tests each prefix on the way down ("condition_embedder", "condition_embedder.time_proj", ...)
    parts = name.split(".")
    prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return any(re.search(p, prefix) for p in patterns for prefix in prefixes)


def select_layers(expert: nn.Module, scope: str = "all") -> dict[str, nn.Linear]:
    """The ``nn.Linear`` layers (qualified name → module) a quantizing policy with ``scope`` touches."""
    _check_scope(scope)
    skip = _layerwise_skip_patterns(expert)
    selected = {}
    for name, module in expert.named_modules():
        if not isinstance(module, nn.Linear) or _ADAPTER_LAYER.search(name):
            continue
        if scope == "all":
            keep = not _skipped_by_default(name, skip)
        else:
            keep = any(re.search(p, name) for p in _SCOPE_PATTERNS[scope])
        if keep:
            selected[name] = module
    return selected


# ---------------------------------------------------------------------------------------------------- state
def _torchao_tensor_type() -> type | None:
    # torchao is optional (the [quant] extra) and slow to import: only looked up when an expert is inspected.
    try:
        from torchao.utils import TorchAOBaseTensor
    except Exception:  # noqa: BLE001 - torchao absent or broken: nothing here can be a torchao tensor
        return None
    return TorchAOBaseTensor


def quantization_state(expert: nn.Module) -> str | None:
    """How ``expert`` is already quantized: ``"layerwise"`` (diffusers hooks), ``"torchao"``, ``"gguf"`` or None."""
    if getattr(expert, "hf_quantizer", None) is not None:
        return getattr(expert.hf_quantizer.quantization_config.quant_method, "value", "quantized")
    for module in expert.modules():
        registry = diffusers_hook_registry(module)
        if registry is not None and registry.get_hook("layerwise_casting") is not None:
            return "layerwise"
    ao = _torchao_tensor_type()
    for p in expert.parameters():
        if ao is not None and isinstance(p, ao):
            return "torchao"
        if hasattr(p, "quant_type"):
            return "gguf"
    return None


def _flat_tensor_bytes(t: torch.Tensor) -> int:
    subclass = type(t) not in (torch.Tensor, nn.Parameter) and not hasattr(t, "quant_type")
    if subclass and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()  # torchao subclasses: int8/fp8 data + scales
        return sum(_flat_tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def parameter_bytes(module: nn.Module) -> int:
    """Bytes held by ``module``'s parameters as stored now (fp8 / int8 data, scales, GGUF blocks included)."""
    return sum(_flat_tensor_bytes(p) for p in module.parameters())


# ---------------------------------------------------------------------------------------------------- policies
def _check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise ValueError(f"Unknown scope {scope!r}; expected one of {SCOPES}.")


def resolve_compute_dtype(compute_dtype: torch.dtype | str | None) -> torch.dtype:
    if compute_dtype is None:
        return torch.bfloat16
    if isinstance(compute_dtype, str):
        if compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"Unknown compute dtype {compute_dtype!r}; expected one of {tuple(COMPUTE_DTYPES)}.")
        return COMPUTE_DTYPES[compute_dtype]
    if compute_dtype not in COMPUTE_DTYPES.values():
        raise ValueError(
            f"`compute_dtype` must be torch.bfloat16, torch.float16 or torch.float32; got {compute_dtype}.")
    return compute_dtype


def check_policy(policy: str, scope: str = "all", compute_dtype: torch.dtype | str | None = None) -> None:
    """Raise a ValueError for an unknown or unsupported (policy, scope, compute dtype) combination."""
    if policy not in POLICIES:
        raise ValueError(f"Unknown precision policy {policy!r}; expected one of {POLICIES} "
                         "(GGUF experts are loaded with `load_gguf_expert`, not set as a policy).")
    _check_scope(scope)
    if policy in CAST_POLICIES:
        if scope != "all":
            raise ValueError(
                f"Policy {policy!r} casts the whole expert (it sets the dtype the expert computes in), so it only "
                f"takes scope='all', not {scope!r}. To store only some layers in low precision, use 'fp8', "
                "'int8-weight-only' or 'fp8-weight-only' with that scope.")
        if compute_dtype is not None and resolve_compute_dtype(compute_dtype) != CAST_POLICIES[policy]:
            raise ValueError(f"Policy {policy!r} computes in {policy}; it cannot take compute_dtype={compute_dtype}.")
        return
    resolve_compute_dtype(compute_dtype)


def _cast_parameters(expert: nn.Module, dtype: torch.dtype, keep_fp32: bool) -> None:
    """Cast floating parameters in place (buffers such as RoPE tables are left as built, as diffusers' loaders do);
    with ``keep_fp32`` the model's ``_keep_in_fp32_modules`` stay float32."""
    keep = tuple(getattr(expert, "_keep_in_fp32_modules", None) or ()) if keep_fp32 else ()
    for name, p in expert.named_parameters():
        if not p.is_floating_point():
            continue
        target = torch.float32 if any(m in name.split(".") for m in keep) else dtype
        if p.dtype != target:
            p.data = p.data.to(target)


def _torchao_config(policy: str):
    # torchao is optional (the [quant] extra): imported only when a torchao policy is asked for.
    try:
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
    except Exception as e:  # noqa: BLE001 - missing, or built for another torch
        raise QuantizationUnavailableError(
            f"Policy {policy!r} needs torchao, which could not be imported here ({type(e).__name__}: {e}). "
            f"Install it with {TORCHAO_HINT}, or use 'fp8' (diffusers layerwise casting, no extra package)."
        ) from None
    return quantize_, (Int8WeightOnlyConfig() if policy == "int8-weight-only" else Float8WeightOnlyConfig())


def apply_precision(expert: nn.Module, policy: str, scope: str = "all",
                    compute_dtype: torch.dtype | str | None = None) -> dict[str, Any]:
    """Apply one precision ``policy`` to one expert (a `WanTransformer3DModel`) in place.

    Args:
        policy: one of `POLICIES` (see the module docstring).
        scope: which layers a quantizing policy touches (`SCOPES`); cast policies take ``"all"`` only.
        compute_dtype: dtype the expert computes in for ``fp8`` and the torchao policies (default bfloat16).

    Returns the record stored in the MoE config: ``{"policy", "scope", "compute_dtype", "layers"}``.
    """
    check_policy(policy, scope, compute_dtype)
    state = quantization_state(expert)
    if state is not None:
        raise ValueError(f"This expert is already quantized ({state}); a quantized expert cannot be re-quantized or "
                         "cast back losslessly. Reload it in full precision, then apply the new policy.")
    if policy in CAST_POLICIES:
        _cast_parameters(expert, CAST_POLICIES[policy], keep_fp32=policy == "fp16")
        record = {"policy": policy, "scope": "all", "compute_dtype": None, "layers": None}
        expert._wan22_precision = record
        return record

    compute = resolve_compute_dtype(compute_dtype)
    layers = select_layers(expert, scope)
    if not layers:
        raise ValueError(f"Scope {scope!r} selects no nn.Linear layer in this expert.")
    if policy in TORCHAO_POLICIES:
        quantize_, config = _torchao_config(policy)  # raises before anything is modified
    # Like diffusers' quantizers: the expert computes in `compute`, its `_keep_in_fp32_modules` stay fp32.
    _cast_parameters(expert, compute, keep_fp32=True)
    if policy == "fp8":
        for layer in layers.values():
            # No skip patterns: the hook goes on this very layer (the selection was made above).
            apply_layerwise_casting(layer, FP8_STORAGE_DTYPE, compute, skip_modules_pattern=None)
        disable_peft_input_autocast(expert)  # LoRA inputs must not be cast to fp8 (see diffusers' docstring)
    else:
        names = set(layers)
        quantize_(expert, config, filter_fn=lambda module, fqn: fqn in names)
    record = {"policy": policy, "scope": scope, "compute_dtype": str(compute).removeprefix("torch."),
              "layers": len(layers)}
    expert._wan22_precision = record
    return record


def set_expert_precision(moe, high: str | None = None, low: str | None = None, scope: str = "all",
                         compute_dtype: torch.dtype | str | None = None) -> dict[str, Any]:
    """Apply a precision policy per expert of a `WanMoETransformer3DModel` (``None`` leaves that expert unchanged).

    ``compute_dtype`` (default bfloat16) applies to the quantizing policies (fp8, torchao); a cast policy computes in
    its own dtype. Both requests are validated before either expert is touched. The result is recorded in
    ``moe.config.expert_precision`` (``{"high": record, "low": record}``) so saved pipelines restore it.
    """
    requested = {name: policy for name, policy in (("high", high), ("low", low)) if policy is not None}
    if not requested:
        raise ValueError("Pass a policy for `high` and/or `low`; expected one of " f"{POLICIES}.")
    # `compute_dtype` is for the quantizing policies of the call; with only cast policies it must agree with them.
    only_casts = all(p in CAST_POLICIES for p in requested.values())
    for name, policy in requested.items():
        check_policy(policy, scope, compute_dtype if only_casts or policy not in CAST_POLICIES else None)
        expert = moe.get_expert(name)
        if expert is None:
            raise ValueError(f"The {name}-noise expert is not loaded; it cannot take a precision policy.")
        state = quantization_state(expert)
        if state is not None:
            raise ValueError(f"The {name}-noise expert is already quantized ({state}); reload it in full precision "
                             "to apply another policy.")
        if policy in TORCHAO_POLICIES:
            _torchao_config(policy)
    records = dict(moe.config.get("expert_precision") or {})
    for name, policy in requested.items():
        records[name] = apply_precision(moe.get_expert(name), policy, scope,
                                        None if policy in CAST_POLICIES else compute_dtype)
    moe.register_to_config(expert_precision=records)
    return records


RESTORABLE_POLICIES = tuple(CAST_POLICIES) + ("fp8",)


def _restore_layerwise_storage(expert: nn.Module, record: Mapping[str, Any]) -> None:
    """Put an fp8 (layerwise-cast) expert back in its stored dtypes after a loader cast it (e.g. ``torch_dtype``)."""
    _cast_parameters(expert, resolve_compute_dtype(record.get("compute_dtype")), keep_fp32=True)
    for module in expert.modules():
        registry = diffusers_hook_registry(module)
        hook = registry.get_hook("layerwise_casting") if registry is not None else None
        if hook is not None:
            module.to(dtype=hook.storage_dtype)


def apply_stored_precision(moe, restorable_only: bool = False) -> None:
    """Apply the policies recorded in ``moe.config.expert_precision`` to experts that do not have them yet.

    Called by `WanMoETransformer3DModel.__init__` (``restorable_only=True``: cast and fp8 policies, on the freshly
    built, usually ``meta``, experts, so diffusers' loader then reads the saved fp8 / bf16 tensors into parameters
    of those very dtypes, without a full-precision copy) and after `from_pretrained` (which may have cast the
    parameters to a ``torch_dtype``: the stored dtypes are restored).
    """
    for name, record in (moe.config.get("expert_precision") or {}).items():
        expert = moe.get_expert(name)
        if record is None or expert is None:
            continue
        policy = record["policy"]
        if policy not in POLICIES:
            raise ValueError(f"The saved {name}-noise expert has precision {policy!r}, which cannot be restored "
                             f"from a pipeline folder (restorable: {POLICIES}).")
        if restorable_only and policy not in RESTORABLE_POLICIES:
            continue
        state = quantization_state(expert)
        if state is None:
            apply_precision(expert, policy, record["scope"], record.get("compute_dtype"))
        elif state == "layerwise" and policy == "fp8":
            _restore_layerwise_storage(expert, record)


def check_serializable(moe) -> None:
    """Raise if an expert's weights cannot be written by `save_pretrained` (torchao or GGUF tensors)."""
    for name in moe.loaded_experts:
        state = quantization_state(moe.get_expert(name))
        if state not in (None, "layerwise"):
            raise ValueError(
                f"The {name}-noise expert is quantized with {state}; diffusers 0.42 cannot save such weights in a "
                "pipeline folder. Save the full-precision pipeline and apply the policy after loading (or keep the "
                "GGUF files and load them with `load_gguf_expert`).")


def precision_report(moe) -> dict[str, dict[str, Any]]:
    """Per expert: its policy record, parameter bytes as stored, and the parameter count."""
    report = {}
    records = moe.config.get("expert_precision") or {}
    for name in moe.loaded_experts:
        expert = moe.get_expert(name)
        numel = sum(logical_numel(p) for p in expert.parameters())
        report[name] = {"precision": records.get(name), "parameter_bytes": parameter_bytes(expert),
                        "parameters": numel, "dtype": str(expert.dtype).removeprefix("torch.")}
    return report


def logical_numel(p: torch.Tensor) -> int:
    shape = getattr(p, "quant_shape", None)
    return int(np.prod(shape)) if shape is not None else p.numel()
