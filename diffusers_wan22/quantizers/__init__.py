"""Quantized expert formats: GGUF experts read through diffusers' GGUF quantizer."""
