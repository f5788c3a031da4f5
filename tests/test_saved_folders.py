"""Folders saved by an earlier layout of the package (main at f22e386) keep loading and give the same latents."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline
from PIL import Image
from safetensors.torch import load_file

import diffusers_wan22  # noqa: F401  (registers our classes with diffusers)
from conftest import assert_close_rel

SAVED = Path(__file__).parent / "fixtures" / "saved_f22e386"


def test_t2v_folder_saved_by_f22e386_loads_and_reproduces():
    pipe = DiffusionPipeline.from_pretrained(SAVED / "t2v_a14b")
    assert type(pipe).__name__ == "Wan22Pipeline"
    assert type(pipe.transformer).__name__ == "WanMoETransformer3DModel"
    pipe.set_progress_bar_config(disable=True)
    latents = pipe("Two cats boxing.", height=32, width=32, num_frames=5, num_inference_steps=4,
                   generator=torch.Generator().manual_seed(0), output_type="latent").frames
    # Reloaded (memory-mapped) weights may round differently in CPU kernels than the in-memory ones did.
    assert_close_rel(latents, load_file(SAVED / "goldens.safetensors")["t2v_a14b"], 1e-5, "saved t2v latents")


def test_s2v_folder_saved_by_f22e386_loads_and_reproduces():
    pipe = DiffusionPipeline.from_pretrained(SAVED / "s2v_14b")
    assert type(pipe).__name__ == "Wan22SpeechToVideoPipeline"
    pipe.set_progress_bar_config(disable=True)
    audio = np.load(SAVED / "s2v_audio.npy")
    out = pipe(Image.open(SAVED / "s2v_ref.png"), (audio, 16000), prompt="A woman is singing.", height=64,
               width=64, infer_frames=4, num_inference_steps=3, num_clips=1,
               generator=torch.Generator().manual_seed(0), output_type="latent")
    assert_close_rel(out.frames[0], load_file(SAVED / "goldens.safetensors")["s2v_14b"], 1e-5, "saved s2v latents")
