"""Replaying TurboDiffusion's recorded I2V runs (`tests/fixtures/turbo/<variant>/golden.*`) with our components.

Shared by `tests/test_turbo.py` and its subprocess worker `tests/_turbo_worker.py`. A run is: prompt -> umT5 (bf16,
eager) -> context; image -> uint8 resize -> bf16 Wan 2.1 VAE -> condition; seed -> noise -> `RCMScheduler` with the
expert of every step planned up front -> final latents. `run_pipeline` does all of it through
`Wan22ImageToVideoPipeline.from_turbo`; `sample` is the bare sampling loop, for runs fed TurboDiffusion's own context
and condition.
"""

from __future__ import annotations

import json
from pathlib import Path

import PIL.Image
import torch
from safetensors.torch import load_file

from diffusers_wan22 import RCMScheduler, Wan22ImageToVideoPipeline, load_turbo_transformer, plan_experts

FIXTURES = Path(__file__).parent / "fixtures" / "turbo"
TURBO_DIR = FIXTURES / "components"
# umT5, tokenizer and Wan 2.1 VAE of the Turbo goldens are byte-identical to the official I2V-A14B fixture's.
COMPONENTS_DIR = Path(__file__).parent / "fixtures" / "official" / "i2v_a14b"
VARIANTS = ("fp32_sla_ode", "fp32_sla_sde", "fp32_sla_quant_ode")


def golden(variant: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(golden.json, golden.safetensors tensors) of a recorded run."""
    folder = FIXTURES / variant
    return json.loads((folder / "golden.json").read_text()), load_file(folder / "golden.safetensors")


def turbo_transformer(meta: dict):
    """The two experts of a recorded run (plain or -quant, its SLA top-k), float32."""
    return load_turbo_transformer(TURBO_DIR, quantized=meta["quant_linear"], sla_topk=meta["sla_topk"])


def sample(transformer, meta: dict, context: torch.Tensor, condition: torch.Tensor,
           generator: torch.Generator) -> torch.Tensor:
    """The rCM sampling loop of a recorded run: initial noise from ``generator``, one expert call per step."""
    scheduler = RCMScheduler(sigma_max=meta["sigma_max"], sampler="ode" if meta["ode"] else "sde")
    scheduler.set_timesteps(meta["num_steps"])
    experts = plan_experts(scheduler.timesteps, transformer.boundary_timestep)
    noise = torch.randn((1, 16, *condition.shape[2:]), generator=generator, dtype=torch.float32)
    x = scheduler.scale_initial_noise(noise)
    for i, t in enumerate(scheduler.timesteps):
        model_input = torch.cat([x.float(), condition.float()], dim=1)
        with torch.no_grad():
            v = transformer(model_input, t.expand(1), context.float(), expert=experts[i], return_dict=False)[0]
        x = scheduler.step(v, t, x, generator=generator).prev_sample
    return x.float()


def turbo_pipeline(meta: dict):
    """`Wan22ImageToVideoPipeline.from_turbo` for a recorded run (its files, SLA top-k and sampler)."""
    pipe = Wan22ImageToVideoPipeline.from_turbo(TURBO_DIR, quantized=meta["quant_linear"], sla_topk=meta["sla_topk"],
                                                components=COMPONENTS_DIR, sampler="ode" if meta["ode"] else "sde")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_pipeline(pipe, variant: str, **kwargs):
    """A recorded run through the pipeline: its image, prompt, size, frame count and seed."""
    meta, _ = golden(variant)
    height, width = meta["sizes"]["video_hw"]
    return pipe(PIL.Image.open(FIXTURES / variant / "image.png"), meta["prompt"], height=height, width=width,
                num_frames=meta["sizes"]["num_frames"], generator=torch.Generator().manual_seed(meta["seed"]),
                **{"output_type": "latent", **kwargs})
