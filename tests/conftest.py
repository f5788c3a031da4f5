"""Shared fixtures: tiny random components built offline, and the official-format fixture folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

OFFICIAL = Path(__file__).parent / "fixtures" / "official"


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-4, what: str = "") -> float:
    """Parity check used across the suite: max|actual - expected| <= rel * max|expected|. Returns the max |diff|."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual - expected).abs().max().item()
    bound = rel * expected.abs().max().item()
    assert diff <= bound, f"{what}: max|diff| {diff:.3e} > {rel:g} * max|ref| = {bound:.3e}"
    return diff


@pytest.fixture
def tiny_components():
    from diffusers_wan22.demo import build_tiny_components

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
