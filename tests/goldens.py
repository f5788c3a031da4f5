"""Replaying a run recorded in the official goldens (`tests/fixtures/official/<variant>/golden.json`).

The fixtures store, for each official `generate()` run, its arguments and its initial noise. `replay_official_run`
feeds both to one of our pipelines, so the tests, `docs/make_quantization.py` and anyone comparing a modified
pipeline against the official code use the same call.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file


def load_golden(fixture: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """A fixture's golden outputs: (``golden.json``'s ``meta``, the tensors of ``golden.safetensors``)."""
    fixture = Path(fixture)
    return json.loads((fixture / "golden.json").read_text())["meta"], load_file(fixture / "golden.safetensors")


def replay_official_run(pipe, fixture: str | os.PathLike, run: str = "run_unipc", output_type: str = "latent"):
    """Call a text-to-video ``pipe`` with the prompt, size, frames, steps, guidance and noise of ``run``.

    Returns the pipeline output (final latents for ``output_type="latent"``). The official guidance pair is
    (low-noise, high-noise); ours is ``guidance_scale`` (high) and ``guidance_scale_2`` (low).
    """
    fixture = Path(fixture)
    kwargs = json.loads((fixture / "golden.json").read_text())["meta"]["runs"][run]["generate_kwargs"]
    noise = load_file(fixture / "golden.safetensors")[f"{run}/noise"]
    (width, height), (low, high) = kwargs["size"], kwargs["guide_scale"]
    pipe.set_progress_bar_config(disable=True)
    return pipe(kwargs["input_prompt"], negative_prompt=kwargs["n_prompt"] or None, height=height, width=width,
                num_frames=kwargs["frame_num"], num_inference_steps=kwargs["sampling_steps"], guidance_scale=high,
                guidance_scale_2=low, latents=torch.as_tensor(noise)[None].clone(), output_type=output_type)
