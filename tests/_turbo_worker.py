"""Worker for tests/test_turbo.py: ``python tests/_turbo_worker.py OUT.pt VARIANT...``, started with
``ONEDNN_MAX_CPU_ISA=AVX512_CORE``.

The bf16 Wan 2.1 VAE's convolutions go through oneDNN, whose bf16 kernels differ between CPU generations (AMX
tiles, AVX512-BF16 and plain AVX512 round differently). TurboDiffusion's goldens were made with the plain AVX512
kernels; oneDNN only honours the ISA cap when it is set before its first use, hence a separate process. For each
run the worker saves the pipeline's final latents from image, prompt and seed, its condition, and the bf16 decode
of TurboDiffusion's first latent frame.
"""

from __future__ import annotations

import sys

import PIL.Image
import torch
from turbo_support import FIXTURES, golden, run_pipeline, turbo_pipeline


def main(out: str, variants: list[str]) -> None:
    results = {}
    for variant in variants:
        meta, g = golden(variant)
        pipe = turbo_pipeline(meta)
        first = pipe.turbo_first_frame(PIL.Image.open(FIXTURES / variant / "image.png"), *meta["sizes"]["video_hw"][::-1])
        results[variant] = {"final": run_pipeline(pipe, variant).frames,
                            "condition": pipe.turbo_condition(first, meta["sizes"]["num_frames"], 1, "cpu")["condition"],
                            # causal decoder: latent frame 0 alone decodes to video frame 0, bit for bit
                            "video": pipe.vae_decode(g["latent/final"][:, :, :1])[0]}
    torch.save(results, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
