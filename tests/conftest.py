"""Shared fixtures: tiny random components built offline, and the official-format fixture folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

OFFICIAL = Path(__file__).parent / "fixtures" / "official"
# `docs/make_parity.py` sets this to collect every parity measurement into docs/parity.md.
PARITY_JSON = os.environ.get("WAN22_PARITY_JSON")
_MEASUREMENTS: list[dict] = []


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-4, what: str = "") -> float:
    """Parity check used across the suite: max|actual - expected| <= rel * max|expected|. Returns the max |diff|."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual - expected).abs().max().item()
    ref = expected.abs().max().item()
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
    _MEASUREMENTS.append({"test": test, "what": what, "max_abs_diff": diff, "max_abs_ref": ref, "rel_bound": rel})
    assert diff <= rel * ref, f"{what}: max|diff| {diff:.3e} > {rel:g} * max|ref| = {rel * ref:.3e}"
    return diff


def random_lora(expert, paths: tuple[str, ...], prefix: str = "transformer.", seed: int = 0,
                rank: int = 2) -> dict[str, torch.Tensor]:
    """A random LoRA (A/B pairs) for the Linear ``paths`` of every block of one Wan transformer, keys as Wan LoRA
    files hold them (``<prefix>blocks.<i>.<path>.lora_A.weight``)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i, block in enumerate(expert.blocks):
        for path in paths:
            layer = block.get_submodule(path)
            sd[f"{prefix}blocks.{i}.{path}.lora_A.weight"] = torch.randn(rank, layer.in_features, generator=g)
            sd[f"{prefix}blocks.{i}.{path}.lora_B.weight"] = torch.randn(layer.out_features, rank, generator=g)
    return sd


def pytest_sessionfinish(session, exitstatus):
    if PARITY_JSON and _MEASUREMENTS:
        Path(PARITY_JSON).write_text(json.dumps(_MEASUREMENTS, indent=1))


@pytest.fixture
def tiny_components():
    from diffusers_wan22 import build_tiny_components

    return build_tiny_components("t2v-A14B", seed=0)


@pytest.fixture
def tiny_pipe(tiny_components):
    from diffusers_wan22 import Wan22Pipeline

    return Wan22Pipeline(**tiny_components)


@pytest.fixture
def forward_counter():
    """Counts transformer forward calls of any module it is attached to."""

    class Counter:
        def __init__(self):
            self.calls: list[str] = []
            self._handles = []

        def attach(self, module: torch.nn.Module, name: str):
            self._handles.append(module.register_forward_pre_hook(lambda *_: self.calls.append(name)))
            return self

        def close(self):
            for h in self._handles:
                h.remove()

    counter = Counter()
    yield counter
    counter.close()
