"""Hooks on models: the per-expert offload hook, lazy experts (one expert in host RAM) and precision policies."""
