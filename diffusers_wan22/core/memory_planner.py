"""Memory planner: predicted peak accelerator memory and peak host RAM of a Wan 2.2 generation, per memory mode.

Pure arithmetic on parameter counts and shapes, so it runs without weights (a `ModelSpec` from known counts, from a
config built on the ``meta`` device, or from a loaded pipeline). The formulas, with ``b`` = bytes per element of
the compute dtype (2 for bf16/fp16):

Tokens of one transformer forward (patch ``(1, 2, 2)``, VAE stride ``(4, 8, 8)``)::

    F_lat = (num_frames - 1) / 4 + 1,   N = B * F_lat * (H / 16) * (W / 16)    (B = 2 with batched CFG, else 1)

DiT activations (inference, no autograd; memory-efficient/flash attention, so no N x N matrix)::

    attention phase = N * d * (7 b + 16)       x, norm out, q, k, v, attention out, projection (compute dtype)
                                               + fp32 norm upcast and three fp32 RoPE temporaries (4 x 4 bytes)
    FFN phase       = N * (2 f b + d (3 b + 8)) hidden + GELU output (f wide), x, norm out, FFN out, two fp32 sums
    act_dit         = max(attention phase, FFN phase) + N * head_dim * 8 (RoPE cos/sin, fp32)

Text encoder (UMT5-XXL, L = 512 tokens, d_t = 4096, f_t = 10240): ``act_te = L * (2 f_t + 6 d_t) * 4`` (fp32 worst
case) plus the two prompt embeddings. VAE decode (Wan VAE decodes one latent frame -> 4 video frames at a time and
keeps 2 cached frames per causal conv)::

    act_vae = C_top * H' * W' * b * (K_LIVE * 4 + K_CACHE)    C_top = 96, K_LIVE = 6, K_CACHE = 30
    output  = 3 * num_frames * H * W * 4                        (decoded video, fp32 after post-processing)

where ``H' x W'`` is the full frame, or one tile (256 x 256, diffusers' default) with VAE tiling.

Peaks per mode (``E`` = bytes of one expert, ``T`` text encoder, ``V`` VAE, ``G`` largest offload group =
one transformer block, ``U`` an expert's non-block parameters; weights in ``weight_dtype``)::

    none            accel = T + 2E + V + max(act_te, act_dit, act_vae)          host = O + T + 2E + V (load)
    model_offload   accel = max(T + act_te, 2E + act_dit, V + act_vae)          host = O + T + 2E + V
                    (stock diffusers: the MoE container is one component, both experts move together)
    expert_offload  accel = max(T + act_te, E + act_dit, V + act_vae)           host = O + T + 2E + V
    group_offload   accel = max(T + act_te, G + U + act_dit, V + act_vae)       host = O + T + 2E + V
                    (block level, one block per group; UMT5 and the VAE have no top-level ModuleList, so each is
                    one group; ``prefetch`` (CUDA streams) adds one block group)
    lazy_experts    accel = as expert_offload                                    host = O + T + V + E
                    (the prefetch reads the next expert into the OS page cache: reclaimable, not process RSS)

``O`` is the host overhead of the process (interpreter, torch, diffusers, transformers; CUDA adds more on a GPU
machine). With ``execution="cpu"`` the model runs in host RAM: the accelerator figure is 0 and host RAM is
``O + max over stages (resident weights + that stage's activations)``.

Precision policies (``precision=``, per expert; see `diffusers_wan22.hooks.precision`): an expert's bytes are::

    E = P * bytes(policy)                                 cast policies (fp32 4, bf16 / fp16 2)
    E = Q * bytes(policy) + (P - Q) * weight_bytes        quantizing policies, Q = weights of the scoped Linears:
                                                          ffn: L * 2 d f,  attn: L * 8 d^2,  all = ffn+attn

with ``bytes(policy)`` from `POLICY_BYTES` (fp8 / int8 / fp8 weight-only 1; GGUF block sizes, e.g. Q8_0 34/32,
Q4_K 144/256; ``w8a8``, TurboDiffusion's ``-quant`` experts, 1 + a float32 scale per 128x128 block). A quantizing policy adds one upcast layer (the largest scoped Linear, twice in the compute dtype:
dequantized copy + cast) to the DiT activations. Not counted: the per-row scales of torchao (< 0.1 % at d = 5120),
biases, and the ``_keep_in_fp32_modules`` kept in fp32 (~29 M parameters per A14B expert).

These are estimates: activation coefficients come from reading the diffusers 0.42.1 Wan code paths, not from GPU
measurements; the allocator's fragmentation and the CUDA context (~0.5-1 GB) are not included.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .names import CAST_POLICY_NAMES, MEMORY_MODES, PRECISION_SCOPES

GB = 1e9
MODES = MEMORY_MODES

# Activation coefficients (see the module docstring).
ATTN_BYTES_PER_DIM = (7, 16)  # (times b, plus fp32 bytes)
VAE_TOP_CHANNELS = 96
VAE_K_LIVE = 6
VAE_K_CACHE = 30
VAE_TILE = 256
TEXT_LEN = 512
HOST_OVERHEAD = 0.45 * GB  # Python + torch + diffusers + transformers, measured on the CPU box (docs/memory.md)


@dataclass(frozen=True)
class ModelSpec:
    """Sizes the planner needs. Parameter counts are per expert (``num_experts`` = 2 for A14B, 1 for dense)."""

    expert_params: int
    block_params: int
    num_layers: int
    num_experts: int
    text_encoder_params: int
    vae_params: int
    dim: int
    ffn_dim: int
    num_heads: int
    text_encoder_dim: int = 4096
    text_encoder_ffn: int = 10240
    text_encoder_block_params: int = 0
    vae_top_channels: int = VAE_TOP_CHANNELS
    vae_stride: tuple[int, int] = (4, 8)  # temporal, spatial
    patch: tuple[int, int, int] = (1, 2, 2)
    latent_channels: int = 16
    # S2V: reference + FramePack motion tokens ride along the video tokens, 2.5 latent frames' worth (ref 1, newest
    # motion frame 1, the 2x and 4x groups 1/4 each); and wav2vec2, kept in float32.
    context_token_frames: float = 0.0
    audio_encoder_params: int = 0
    # Animate: the CLIP visual tower (runs once per call, in the weight dtype).
    image_encoder_params: int = 0

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


# The real Wan 2.2 T2V-A14B (two 14.29B experts, dim 5120, 40 layers, 40 heads; UMT5-XXL 5.68B; Wan 2.1 VAE 127M).
A14B = ModelSpec(
    expert_params=14_288_491_584, block_params=351_394_304, num_layers=40, num_experts=2,
    text_encoder_params=5_680_910_336, text_encoder_block_params=5_680_910_336 // 24, vae_params=126_892_531,
    dim=5120, ffn_dim=13824, num_heads=40,
)
# I2V-A14B: the same experts with a 36-channel patch embedding (16 noise + 4 mask + 16 image-latent channels).
I2V_A14B = replace(A14B, expert_params=14_288_901_184)
# S2V-14B: one 16.30B transformer (the Wan blocks plus audio encoder/injectors, pose, FramePack), same UMT5 and VAE,
# wav2vec2-large-xlsr-53 (~315M parameters, approximate: not read from a checkpoint here).
S2V_14B = replace(A14B, expert_params=16_295_755_609, num_experts=1, context_token_frames=2.5,
                  audio_encoder_params=315_000_000)
# Animate-14B: one 17.27B transformer (I2V-style blocks with image cross-attention, 8 face adapters, motion and face
# encoders; counted on meta from the official config), the reference latent frame riding along each clip's tokens,
# and the open-clip ViT-H/14 visual tower (630.8M). Frames are per clip (77 by default).
ANIMATE_14B = replace(A14B, expert_params=17_274_816_884, block_params=403_838_464, num_experts=1,
                      context_token_frames=1.0, image_encoder_params=630_766_080)
SPECS = {"t2v-a14b": A14B, "a14b": A14B, "i2v-a14b": I2V_A14B, "s2v-14b": S2V_14B, "animate-14b": ANIMATE_14B}

# ---------------------------------------------------------------------------------------------------- precision
# Bytes per stored parameter of the layers a policy covers (the whole expert for the cast policies). GGUF entries are
# GGML block sizes (bytes per block / values per block), as in `gguf.GGML_QUANT_SIZES`.
POLICY_BYTES = {
    "fp32": 4.0, "bf16": 2.0, "fp16": 2.0,
    "fp8": 1.0, "int8-weight-only": 1.0, "fp8-weight-only": 1.0,
    "gguf-q8_0": 34 / 32, "gguf-q6_k": 210 / 256, "gguf-q5_k": 176 / 256, "gguf-q5_0": 22 / 32,
    "gguf-q4_k": 144 / 256, "gguf-q4_0": 18 / 32, "gguf-q3_k": 110 / 256, "gguf-q2_k": 84 / 256,
    "w8a8": 1.0 + 4 / (128 * 128),
}
# W8A8 computes from int8 weights (no dequantized copy); its transient is the float32 temporaries of one row chunk
# of the block GEMM (`quantizers/w8a8.py`: 2**26 output elements, int32 sums, float copy, scaled product).
W8A8_TRANSIENT = 3 * 2**26 * 4
PLAN_SCOPES = PRECISION_SCOPES
# Rows of `precision_fit_table`: (high, low, scope).
TABLE_POLICIES = (
    ("bf16", "bf16", "all"), ("fp8", "fp8", "ffn"), ("fp8", "bf16", "all"), ("fp8", "fp8", "all"),
    ("int8-weight-only", "int8-weight-only", "all"), ("gguf-q8_0", "gguf-q8_0", "all"),
    ("gguf-q4_k", "gguf-q4_k", "all"),
)


def scoped_params(spec: ModelSpec, scope: str = "all") -> int:
    """Weights (per expert) of the Linear layers a quantizing policy with ``scope`` covers (biases excluded)."""
    if scope not in PLAN_SCOPES:
        raise ValueError(f"Unknown scope {scope!r}; expected one of {PLAN_SCOPES}.")
    ffn = spec.num_layers * 2 * spec.dim * spec.ffn_dim
    attn = spec.num_layers * 8 * spec.dim * spec.dim
    return {"ffn": ffn, "attn": attn, "ffn+attn": ffn + attn, "all": ffn + attn}[scope]


def _check_plan_policy(policy: str) -> None:
    if policy not in POLICY_BYTES:
        raise ValueError(f"Unknown precision policy {policy!r}; expected one of {tuple(POLICY_BYTES)}.")


def expert_weight_bytes(spec: ModelSpec, policy: str | None, scope: str = "all", weight_bytes: float = 2) -> float:
    """Bytes of one expert stored under ``policy`` (``None``: every parameter in ``weight_bytes``)."""
    if policy is None:
        return spec.expert_params * weight_bytes
    _check_plan_policy(policy)
    if policy in CAST_POLICY_NAMES:
        return spec.expert_params * POLICY_BYTES[policy]
    q = scoped_params(spec, scope)
    return q * POLICY_BYTES[policy] + (spec.expert_params - q) * weight_bytes


def _block_weight_bytes(spec: ModelSpec, policy: str | None, scope: str, weight_bytes: float) -> float:
    if policy is None:
        return spec.block_params * weight_bytes
    if policy in CAST_POLICY_NAMES:
        return spec.block_params * POLICY_BYTES[policy]
    q = scoped_params(spec, scope) // spec.num_layers
    return q * POLICY_BYTES[policy] + (spec.block_params - q) * weight_bytes


def _upcast_bytes(spec: ModelSpec, policy: str | None, scope: str, b: int) -> float:
    """Transient of a quantizing policy: the largest scoped Linear dequantized and cast to the compute dtype."""
    if policy is None or policy in CAST_POLICY_NAMES:
        return 0.0
    if policy == "w8a8":
        return W8A8_TRANSIENT
    largest = spec.dim * spec.ffn_dim if scope in ("all", "ffn", "ffn+attn") else spec.dim * spec.dim
    return 2 * largest * b


def _expert_policies(spec: ModelSpec, precision) -> list[str | None]:
    if precision is None or isinstance(precision, str):
        return [precision] * spec.num_experts
    policies = list(precision)
    if len(policies) != 2:
        raise ValueError(f"`precision` must be a policy or a (high, low) pair; got {precision!r}.")
    return policies[: spec.num_experts]


@dataclass
class MemoryEstimate:
    """Predicted peaks (bytes) of one generation in ``mode``, with the stage breakdown they come from."""

    mode: str
    accelerator_bytes: float
    host_bytes: float
    stages: dict = field(default_factory=dict)
    tokens: int = 0

    @property
    def accelerator_gb(self) -> float:
        return self.accelerator_bytes / GB

    @property
    def host_gb(self) -> float:
        return self.host_bytes / GB

    def __str__(self) -> str:
        return (f"{self.mode:15s} accelerator {self.accelerator_gb:7.1f} GB   host RAM {self.host_gb:7.1f} GB   "
                f"({self.tokens} tokens)")


def dit_tokens(spec: ModelSpec, height: int, width: int, num_frames: int, batch: int = 1) -> int:
    t, s = spec.vae_stride
    pt, ph, pw = spec.patch
    frame_tokens = (height // s // ph) * (width // s // pw)
    frames = ((num_frames - 1) // t + 1) // pt
    return batch * int(frames * frame_tokens + spec.context_token_frames * frame_tokens)


def dit_activation_bytes(spec: ModelSpec, tokens: int, b: int) -> float:
    attn = tokens * spec.dim * (ATTN_BYTES_PER_DIM[0] * b + ATTN_BYTES_PER_DIM[1])
    ffn = tokens * (2 * spec.ffn_dim * b + spec.dim * (3 * b + 8))
    return max(attn, ffn) + tokens * spec.head_dim * 8


def vae_decode_bytes(spec: ModelSpec, height: int, width: int, num_frames: int, b: int, tiling: bool) -> float:
    h, w = (min(height, VAE_TILE), min(width, VAE_TILE)) if tiling else (height, width)
    act = spec.vae_top_channels * h * w * b * (VAE_K_LIVE * spec.vae_stride[0] + VAE_K_CACHE)
    return act + 3 * num_frames * height * width * 4


def estimate_memory(
    spec: ModelSpec,
    height: int,
    width: int,
    num_frames: int,
    mode: str = "expert_offload",
    weight_bytes: int = 2,
    compute_bytes: int | None = None,
    batch: int = 1,
    batched_cfg: bool = False,
    vae_tiling: bool | None = None,
    prefetch: bool = False,
    execution: str = "accelerator",
    host_overhead: float = HOST_OVERHEAD,
    precision: str | tuple[str | None, str | None] | None = None,
    scope: str = "all",
) -> MemoryEstimate:
    """Peak accelerator memory and host RAM of one call (see the module docstring for every formula).

    Args:
        spec: model sizes (`A14B`, `spec_from_config`, `spec_from_pipeline`).
        mode: one of ``none``, ``model_offload``, ``expert_offload``, ``group_offload``, ``lazy_experts``.
        weight_bytes / compute_bytes: bytes per parameter and per activation element (bf16: 2; fp32: 4).
        batched_cfg: conditional and unconditional branches in one batch of 2 (doubles DiT activations).
        vae_tiling: tiled VAE decode (default: on for every mode but ``none``).
        prefetch: group offload with streams (one more group on the accelerator). The lazy-experts prefetch
            does not change the process's host RAM (it warms the OS page cache).
        execution: ``"accelerator"`` or ``"cpu"`` (the model runs in host RAM, as in the CPU benchmark).
        precision: expert precision policy (`POLICY_BYTES`), one for both experts or ``(high, low)``; ``None``
            stores every expert parameter in ``weight_bytes``. ``scope``: the layers a quantizing policy covers.
    """
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}; expected one of {MODES}.")
    b = compute_bytes or weight_bytes
    tiling = (mode != "none") if vae_tiling is None else vae_tiling
    tokens = dit_tokens(spec, height, width, num_frames, batch * (2 if batched_cfg else 1))
    policies = _expert_policies(spec, precision)
    experts = [expert_weight_bytes(spec, p, scope, weight_bytes) for p in policies]
    E = max(experts)  # the larger expert is what one-expert-at-a-time modes must hold
    T = spec.text_encoder_params * weight_bytes
    V = spec.vae_params * weight_bytes
    G = max(_block_weight_bytes(spec, p, scope, weight_bytes) for p in policies)
    U = (spec.expert_params - spec.num_layers * spec.block_params) * weight_bytes  # embeddings, head, tables
    act_te = batch * TEXT_LEN * (2 * spec.text_encoder_ffn + 6 * spec.text_encoder_dim) * 4
    embeds = 2 * batch * TEXT_LEN * spec.dim * b + 2 * batch * TEXT_LEN * spec.text_encoder_dim * 4
    latents = 4 * batch * spec.latent_channels * dit_tokens(spec, height, width, num_frames, 1) * 4 * 3
    act_dit = (dit_activation_bytes(spec, tokens, b) + embeds + latents
               + max(_upcast_bytes(spec, p, scope, b) for p in policies))
    act_vae = batch * vae_decode_bytes(spec, height, width, num_frames, b, tiling)
    moe_resident = sum(experts)
    A = spec.audio_encoder_params * 4 + spec.image_encoder_params * weight_bytes  # wav2vec2 fp32 (official), CLIP not
    all_weights = T + moe_resident + V + A

    if mode == "none":
        stages = {"text": all_weights + act_te, "denoise": all_weights + act_dit, "decode": all_weights + act_vae}
        host_weights = {"text": all_weights, "denoise": all_weights, "decode": all_weights}
    elif mode == "model_offload":
        stages = {"text": T + act_te, "denoise": moe_resident + act_dit, "decode": V + act_vae}
        host_weights = dict.fromkeys(stages, all_weights)
    elif mode == "expert_offload":
        stages = {"text": T + act_te, "denoise": E + act_dit, "decode": V + act_vae}
        host_weights = dict.fromkeys(stages, all_weights)
    elif mode == "group_offload":
        extra = 2 if prefetch else 1
        # Block-level groups are the *top-level* ModuleLists: UMT5 (blocks under `encoder`) and the VAE have none,
        # so each is onloaded whole; an expert is onloaded one block (+ its non-block parameters) at a time.
        stages = {"text": T + act_te, "denoise": extra * G + U + act_dit, "decode": V + act_vae}
        host_weights = dict.fromkeys(stages, all_weights)
    else:  # lazy experts (+ per-expert offload)
        stages = {"text": T + act_te, "denoise": E + act_dit, "decode": V + act_vae}
        resident = T + V + E  # the prefetch fills the OS page cache (reclaimable), not the process
        host_weights = dict.fromkeys(stages, resident)

    if execution == "cpu":
        # One memory: resident host weights plus the activations of the running stage.
        acts = {"text": act_te, "denoise": act_dit, "decode": act_vae}
        host = host_overhead + max(host_weights[k] + acts[k] for k in acts)
        return MemoryEstimate(mode, 0.0, host, {k: host_weights[k] + acts[k] for k in acts}, tokens)
    host = host_overhead + max(host_weights.values())
    return MemoryEstimate(mode, max(stages.values()), host, stages, tokens)


def estimate_all(spec: ModelSpec, height: int, width: int, num_frames: int, **kwargs) -> list[MemoryEstimate]:
    """`estimate_memory` for every mode that applies (lazy experts need two experts)."""
    return [estimate_memory(spec, height, width, num_frames, mode=m, **kwargs) for m in applicable_modes(spec)]


def applicable_modes(spec: ModelSpec) -> tuple[str, ...]:
    return MODES if spec.num_experts > 1 else tuple(m for m in MODES if m != "lazy_experts")


def best_mode(spec: ModelSpec, height: int, width: int, num_frames: int, budget_bytes: float, **kwargs):
    """The first mode (fastest first: none, model, expert, lazy, group) whose accelerator peak fits the budget."""
    order = ("none", "model_offload", "expert_offload", "lazy_experts", "group_offload")
    for mode in (m for m in order if m in applicable_modes(spec)):
        est = estimate_memory(spec, height, width, num_frames, mode=mode, **kwargs)
        if est.accelerator_bytes <= budget_bytes:
            return est
    return None


def plan_table(spec: ModelSpec, height: int, width: int, num_frames: int, **kwargs) -> str:
    """A plain-text table of every mode's predicted peaks (used by ``wan22 plan`` and docs/memory.md)."""
    rows = [f"{'mode':15s} {'accelerator GB':>15s} {'host RAM GB':>12s}"]
    for est in estimate_all(spec, height, width, num_frames, **kwargs):
        rows.append(f"{est.mode:15s} {est.accelerator_gb:15.1f} {est.host_gb:12.1f}")
    return "\n".join(rows)


def _policy_label(high: str | None, low: str | None, scope: str) -> str:
    quantizing = any(p not in (None, *CAST_POLICY_NAMES) for p in (high, low))
    name = high if high == low else f"{high}/{low}"
    return f"{name} ({scope})" if quantizing and scope != "all" else name


def precision_fit_table(spec: ModelSpec, sizes=((832, 480), (1280, 720)), num_frames: int = 81,
                        budgets_gb=(24.0, 40.0), policies=TABLE_POLICIES, markdown: bool = False, **kwargs) -> str:
    """Which precision policies fit which accelerator budget: per (policy, size, budget), the fastest memory mode
    that fits (`best_mode`) and its predicted peak, or ``-`` when none does.

    ``policies``: ``(high, low, scope)`` rows (default `TABLE_POLICIES`). Sizes are ``(width, height)``.
    """
    header = ["policy (high/low)", "weights GB (2 experts)"] + [
        f"{w}x{h}x{num_frames} <= {g:g} GB" for (w, h) in sizes for g in budgets_gb]
    rows = []
    for high, low, scope in policies:
        weights = sum(expert_weight_bytes(spec, p, scope, kwargs.get("weight_bytes", 2)) for p in
                      _expert_policies(spec, (high, low)))
        cells = [_policy_label(high, low, scope), f"{weights / GB:.1f}"]
        for w, h in sizes:
            for budget in budgets_gb:
                est = best_mode(spec, h, w, num_frames, budget * GB, precision=(high, low), scope=scope, **kwargs)
                cells.append("-" if est is None else f"{est.mode} {est.accelerator_gb:.1f}")
        rows.append(cells)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows)
