"""Replaying TurboDiffusion's recorded I2V runs (`tests/fixtures/turbo/<variant>/golden.*`) with our components.

Shared by `tests/test_turbo.py` and its subprocess worker `tests/_turbo_worker.py`. A run is: prompt -> umT5 (bf16,
eager) -> context; image -> uint8 resize -> bf16 Wan 2.1 VAE -> condition; seed -> noise -> `RCMScheduler` with the
expert of every step planned up front -> final latents.
"""

from __future__ import annotations

import json
from pathlib import Path

import PIL.Image
import torch
from diffusers.pipelines.wan.pipeline_wan import prompt_clean
from safetensors.torch import load_file

from diffusers_wan22.loaders.official_models import load_official_tokenizer
from diffusers_wan22.loaders.turbo import load_turbo_text_encoder, load_turbo_transformer, load_turbo_vae
from diffusers_wan22.pipelines.turbo import turbo_image_condition
from diffusers_wan22.schedulers.experts import plan_experts
from diffusers_wan22.schedulers.scheduling_rcm import RCMScheduler
from diffusers_wan22.utils.turbo_image import pil_to_uint8, turbo_first_frame, turbo_resize_uint8

FIXTURES = Path(__file__).parent / "fixtures" / "turbo"
TURBO_DIR = FIXTURES / "components"
# umT5, tokenizer and Wan 2.1 VAE of the Turbo goldens are byte-identical to the official I2V-A14B fixture's.
COMPONENTS_DIR = Path(__file__).parent / "fixtures" / "official" / "i2v_a14b"
VARIANTS = ("fp32_sla_ode", "fp32_sla_sde", "fp32_sla_quant_ode")
TEXT_LEN = 512


def golden(variant: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(golden.json, golden.safetensors tensors) of a recorded run."""
    folder = FIXTURES / variant
    return json.loads((folder / "golden.json").read_text()), load_file(folder / "golden.safetensors")


def turbo_transformer(meta: dict):
    """The two experts of a recorded run (plain or -quant, its SLA top-k), float32."""
    return load_turbo_transformer(TURBO_DIR, quantized=meta["quant_linear"], sla_topk=meta["sla_topk"])


def text_context(tokenizer, text_encoder, prompt: str) -> torch.Tensor:
    """umT5 context ``[1, 512, 4096]`` in the encoder's dtype: rows past the prompt's tokens are zero."""
    enc = tokenizer([prompt_clean(prompt)], padding="max_length", max_length=TEXT_LEN, truncation=True,
                    add_special_tokens=True, return_tensors="pt")
    with torch.no_grad():
        context = text_encoder(enc.input_ids, attention_mask=enc.attention_mask).last_hidden_state
    return context * enc.attention_mask[..., None].to(context.dtype)


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


def run_from_image(variant: str) -> dict[str, torch.Tensor]:
    """A recorded run from its image, prompt and seed with our components: resized image, context, condition and
    final latents."""
    meta, _ = golden(variant)
    tokenizer = load_official_tokenizer(COMPONENTS_DIR / "google" / "umt5-xxl")
    text_encoder = load_turbo_text_encoder(COMPONENTS_DIR / "models_t5_umt5-xxl-enc-bf16.pth")
    vae = load_turbo_vae(COMPONENTS_DIR / "Wan2.1_VAE.pth")
    height, width = meta["sizes"]["video_hw"]
    resized = turbo_resize_uint8(pil_to_uint8(PIL.Image.open(FIXTURES / variant / "image.png")), width, height)
    context = text_context(tokenizer, text_encoder, meta["prompt"])
    condition = turbo_image_condition(vae, turbo_first_frame(resized), meta["sizes"]["num_frames"])
    final = sample(turbo_transformer(meta), meta, context, condition, torch.Generator().manual_seed(meta["seed"]))
    return {"resized": resized, "context": context, "condition": condition, "final": final}
