"""Worker for tests/test_turbo.py: ``python tests/_turbo_worker.py OUT.pt FULL_RUN_VARIANT VARIANT...``, started
with ``ONEDNN_MAX_CPU_ISA=AVX512_CORE``.

The bf16 Wan 2.1 VAE's convolutions go through oneDNN, whose bf16 kernels differ between CPU generations (AMX
tiles, AVX512-BF16 and plain AVX512 round differently). TurboDiffusion's goldens were made with the plain AVX512
kernels; oneDNN only honours the ISA cap when it is set before its first use, hence a separate process. The worker
saves, for each variant, the bf16 VAE condition of its resized image and the decode of its final latents, and for
the first one the whole run from image, prompt and seed.
"""

from __future__ import annotations

import sys

import torch

from turbo_support import COMPONENTS_DIR, golden, run_from_image

from diffusers_wan22.loaders.turbo import load_turbo_vae
from diffusers_wan22.pipelines.turbo import turbo_decode, turbo_image_condition
from diffusers_wan22.utils.turbo_image import turbo_first_frame


def main(out: str, full_run: str, variants: list[str]) -> None:
    vae = load_turbo_vae(COMPONENTS_DIR / "Wan2.1_VAE.pth")
    results = {"full_run": run_from_image(full_run)}
    for variant in variants:
        meta, g = golden(variant)
        condition = turbo_image_condition(vae, turbo_first_frame(g["image/resized_uint8"]), meta["sizes"]["num_frames"])
        results[variant] = {"condition": condition, "video": turbo_decode(vae, g["latent/final"])[0]}
    torch.save(results, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
