"""Names shared by every layer: experts, official file names, tasks, memory modes, precision policies.

Plain strings and tuples only (no torch), so the memory planner and the command line's argument parsing can use
them without loading torch, diffusers or transformers.
"""

from __future__ import annotations

# The package name our classes report as their ``__module__``: `save_pretrained` records it in model_index.json
# (``["diffusers_wan22", "WanMoETransformer3DModel"]``), so saved folders keep loading whatever the file layout.
PACKAGE = "diffusers_wan22"

# ------------------------------------------------------------------------------------------ experts
HIGH = "high"  # the high-noise expert: runs while t >= boundary
LOW = "low"  # the low-noise expert: runs after the switch
EXPERTS = (HIGH, LOW)
EXPERT_CHOICES = (HIGH, LOW, "both")
# Attribute of each expert inside `WanMoETransformer3DModel` (and its key prefix in saved checkpoints).
EXPERT_ATTRS = {HIGH: "high_noise_expert", LOW: "low_noise_expert"}

# ------------------------------------------------------------------------------------------ official folders
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
TOKENIZER_DIR = "google/umt5-xxl"
VAE_FILES = {"2.1": "Wan2.1_VAE.pth", "2.2": "Wan2.2_VAE.pth"}
WAV2VEC_DIR = "wav2vec2-large-xlsr-53-english"
EXPERT_DIRS = {HIGH: "high_noise_model", LOW: "low_noise_model"}
# in_dim of an official DiT config.json -> the kind of model it is
OFFICIAL_DIT_CHANNELS = {16: "t2v", 36: "i2v", 48: "ti2v"}

# ------------------------------------------------------------------------------------------ diffusers folders
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
DIFFUSERS_INDEX = f"{DIFFUSERS_WEIGHTS}.index.json"
TRANSFORMERS_WEIGHTS = "model.safetensors"
MODEL_INDEX = "model_index.json"

# ------------------------------------------------------------------------------------------ memory modes
MEMORY_MODES = ("none", "model_offload", "expert_offload", "group_offload", "lazy_experts")

# ------------------------------------------------------------------------------------------ precision
CAST_POLICY_NAMES = ("fp32", "bf16", "fp16")
TORCHAO_POLICIES = ("int8-weight-only", "fp8-weight-only")
PRECISION_POLICIES = CAST_POLICY_NAMES + ("fp8",) + TORCHAO_POLICIES
PRECISION_SCOPES = ("all", "ffn", "attn", "ffn+attn")
DTYPE_NAMES = ("bf16", "fp16", "fp32")

# ------------------------------------------------------------------------------------------ samplers
SOLVERS = ("unipc", "dpm++")
MAX_INFERENCE_STEPS = 1000  # the largest `num_inference_steps` / `--sample_steps` accepted (the training grid)
RCM_SAMPLERS = ("sde", "ode")  # TurboDiffusion's rCM sampler (default SDE; ODE is its --ode)

# ------------------------------------------------------------------------------------------ TurboDiffusion
# TurboDiffusion's published expert files (plain and W8A8 "-quant"): TurboWan2.2-I2V-A14B-{high,low}-720P[-quant].pth
TURBO_EXPERT_FILE = "TurboWan2.2-I2V-A14B-{expert}-720P{suffix}.pth"
TURBO_QUANT_SUFFIX = "-quant"
TURBO_MAX_STEPS = 4  # TurboDiffusion's rCM grid: atan(sigma_max) + 3 mid times (RCMScheduler's default mid_times)
TURBO_SLA_TOPK = 0.1  # TurboDiffusion's default fraction of key blocks SLA keeps
