"""SLA (sparse-linear attention, thu-ml) as a diffusers attention processor for the Wan experts' self-attention.

TurboWan2.2 experts were fine-tuned with SLA in every block's self-attention. For queries/keys/values ``[B, H, L, D]``
(after the q/k RMS norms and RoPE), SLA computes

1. a **block map**: queries mean-pooled over 128-row blocks, keys centred (``k - mean_L(k)``) and mean-pooled over
   64-row blocks (a last, shorter block is averaged over its real rows); block scores ``pooled_q @ pooled_k^T``;
   each query block keeps its ``n = min(K, int(topk * K))`` best key blocks (``K = ceil(L / 64)``);
2. a **sparse branch**: exact softmax attention (scale ``D**-0.5``) of each query block over the keys of its kept
   blocks only;
3. a **linear branch** over all keys: ``phi = softmax over D`` for queries and keys,
   ``o_l = phi(q) @ (phi(k)^T v) / (1e-5 + phi(q) . sum_L phi(k))``, then the learned per-block ``proj_l`` (a
   ``D x D`` linear, stored in the checkpoints);
4. the sum ``o_s + o_l``.

`sparse_linear_attention` is the pure-PyTorch reference that defines these numerics (it runs anywhere, computes in
the input dtype). With ``n = 0`` (short sequences or small ``topk``) TurboDiffusion's kernel divides by a zero
softmax sum and returns NaN; here that case is refused with an error naming the smallest usable token count.
On CUDA, when thu-ml's `sparse_linear_attention` package is installed, its Triton kernel computes the sparse branch
(same block map, same numerics up to floating-point order).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

BLOCK_Q = 128  # TurboDiffusion's SLA query block (BLKQ) for the Wan experts
BLOCK_K = 64  # key block (BLKK)
SLA_KERNELS = ("auto", "reference", "triton")
# Upper bound on the gathered key/value elements per chunk of (batch x head) rows in the reference sparse branch.
# Small enough (16 MB of float32 keys) that a chunk's gathered keys and values are still in cache when attention
# reads them: on a 2-core CPU 1 << 22 made the sparse branch 1.7x faster than 1 << 25 at 8k-16k tokens, with
# identical results (the chunking changes no arithmetic: each query block's attention is computed whole).
_GATHER_BUDGET = 1 << 22


def sla_key_blocks(num_tokens: int, topk: float, block_k: int = BLOCK_K) -> int:
    """Key blocks each query block keeps: ``min(K, int(topk * K))`` with ``K = ceil(num_tokens / block_k)``."""
    total = math.ceil(num_tokens / block_k)
    return min(total, int(topk * total))


def check_sla_selects_blocks(num_tokens: int, topk: float, block_k: int = BLOCK_K) -> None:
    """Raise a clear error when SLA would keep zero key blocks (TurboDiffusion returns NaN there)."""
    if not 0.0 < topk <= 1.0:
        raise ValueError(f"`sla_topk` must be in (0, 1], got {topk}.")
    if sla_key_blocks(num_tokens, topk, block_k) == 0:
        need = math.ceil(1.0 / topk)  # smallest key-block count K with int(topk * K) >= 1
        while int(topk * need) < 1:  # float rounding of topk * K
            need += 1
        raise ValueError(
            f"SLA with sla_topk={topk} keeps 0 of {math.ceil(num_tokens / block_k)} key blocks for {num_tokens} "
            f"tokens (the sparse softmax would be empty); use at least {(need - 1) * block_k + 1} video tokens "
            f"(a larger video), a larger `sla_topk` (>= {1 / math.ceil(num_tokens / block_k):.3g}), or dense attention "
            "(`sla_topk=None`)."
        )


# ----------------------------------------------------------------------------------------------- reference numerics
def _block_means(x: torch.Tensor, block: int) -> torch.Tensor:
    """Mean over consecutive ``block`` rows of ``x [..., L, D]``; the last block averages only its real rows."""
    length = x.shape[-2]
    full = length // block
    means = x[..., : full * block, :].unflatten(-2, (full, block)).mean(dim=-2)  # a view: no copy of x
    if length % block:
        means = torch.cat([means, x[..., full * block:, :].mean(dim=-2, keepdim=True)], dim=-2)
    return means


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``x [..., L, D]`` zero-padded to ``rows`` rows (no copy when it has them already)."""
    return x if x.shape[-2] == rows else F.pad(x, (0, 0, 0, rows - x.shape[-2]))


def sla_block_map(q: torch.Tensor, k: torch.Tensor, topk: float, block_q: int = BLOCK_Q,
                  block_k: int = BLOCK_K) -> torch.Tensor:
    """Indices ``[B, H, ceil(L/block_q), n]`` of the key blocks each query block attends to (unsorted)."""
    n = sla_key_blocks(q.shape[-2], topk, block_k)
    if n == 0:
        check_sla_selects_blocks(q.shape[-2], topk, block_k)
    pooled_q = _block_means(q, block_q)
    pooled_k = _block_means(k - k.mean(dim=-2, keepdim=True), block_k)  # "smooth-k": centred keys
    scores = pooled_q @ pooled_k.transpose(-1, -2)
    return scores.topk(n, dim=-1, sorted=False).indices


def _sparse_chunk(q_blocks: torch.Tensor, k_blocks: torch.Tensor, v_blocks: torch.Tensor, lut: torch.Tensor,
                  length: int) -> torch.Tensor:
    """Sparse branch of query blocks ``[R, M, block_q, D]`` over their selected key blocks (``lut [R, M, n]``) of
    ``k_blocks``, ``v_blocks [R, Nk, block_k, D]`` (zero-padded past ``length`` keys)."""
    block_k = k_blocks.shape[2]
    r_idx = torch.arange(q_blocks.shape[0], device=q_blocks.device)[:, None, None]
    k_sel = k_blocks[r_idx, lut].flatten(2, 3)  # [R, M, n * block_k, D]
    v_sel = v_blocks[r_idx, lut].flatten(2, 3)
    mask = None
    if length % block_k:  # only the last key block has padding rows: hide them
        key_pos = lut[..., None] * block_k + torch.arange(block_k, device=lut.device)
        mask = (key_pos < length).flatten(2)[:, :, None, :]  # [R, M, 1, n * block_k]
    return F.scaled_dot_product_attention(q_blocks, k_sel, v_sel, attn_mask=mask)


def sparse_block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lut: torch.Tensor,
                           block_q: int = BLOCK_Q, block_k: int = BLOCK_K) -> torch.Tensor:
    """Softmax attention of each query block over its selected key blocks only; ``[B, H, L, D]``, input dtype.

    Work is split into chunks of (batch x head) rows and of query blocks so that the gathered keys and values of a
    chunk stay within a fixed element budget, whatever the sequence length.
    """
    b, h, length, dim = q.shape
    mq, n = lut.shape[-2], lut.shape[-1]
    nk = math.ceil(length / block_k)
    rows = b * h
    q_blocks = _pad_rows(q.reshape(rows, length, dim), mq * block_q).unflatten(1, (mq, block_q))
    k_blocks, v_blocks = (_pad_rows(t.reshape(rows, length, dim), nk * block_k).unflatten(1, (nk, block_k))
                          for t in (k, v))
    lut = lut.reshape(rows, mq, n)
    per_block = n * block_k * dim  # gathered key elements of one query block of one row
    blocks = max(1, _GATHER_BUDGET // per_block)  # query blocks per chunk, over all rows of the chunk
    row_step, block_step = max(1, blocks // mq), min(mq, blocks)
    if row_step >= rows:  # one chunk holds everything (short sequences): no output buffer to fill
        out = _sparse_chunk(q_blocks, k_blocks, v_blocks, lut, length)
        return out.flatten(1, 2)[:, :length].reshape(b, h, length, dim)
    out = torch.empty_like(q_blocks)
    for r in range(0, rows, row_step):
        for m in range(0, mq, block_step):
            rs, ms = slice(r, r + row_step), slice(m, m + block_step)
            out[rs, ms] = _sparse_chunk(q_blocks[rs, ms], k_blocks[rs], v_blocks[rs], lut[rs, ms], length)
    return out.flatten(1, 2)[:, :length].reshape(b, h, length, dim)


def linear_attention_branch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SLA's linear branch before ``proj_l``: softmax feature maps over the head dim, normalised linear attention."""
    phi_q, phi_k = q.softmax(dim=-1), k.softmax(dim=-1)
    kv = phi_k.transpose(-1, -2) @ v  # [B, H, D, D]
    k_sum = phi_k.sum(dim=-2)  # [B, H, D]
    # numerator and normaliser in one product: phi_q @ [kv | k_sum]
    both = phi_q @ torch.cat([kv, k_sum[..., None]], dim=-1)
    return both[..., :-1] / (1e-5 + both[..., -1:])


def sparse_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, proj_l: torch.nn.Linear, topk: float,
                            block_q: int = BLOCK_Q, block_k: int = BLOCK_K, kernel: str = "auto") -> torch.Tensor:
    """SLA of ``q, k, v [B, H, L, D]`` (see the module docstring); returns ``[B, H, L, D]`` in the input dtype."""
    lut = sla_block_map(q, k, topk, block_q, block_k)
    if _use_triton(kernel, q):
        o_s = _triton_sparse_attention(q, k, v, lut, block_q, block_k)
    else:
        o_s = sparse_block_attention(q, k, v, lut, block_q, block_k)
    o_l = linear_attention_branch(q, k, v)
    o_l = F.linear(o_l, proj_l.weight.to(o_l.dtype), None if proj_l.bias is None else proj_l.bias.to(o_l.dtype))
    return o_s + o_l


# ----------------------------------------------------------------------------------------------- optional kernel
def _use_triton(kernel: str, q: torch.Tensor) -> bool:
    if kernel not in SLA_KERNELS:
        raise ValueError(f"`kernel` must be one of {SLA_KERNELS}, got {kernel!r}.")
    if kernel == "reference" or q.device.type != "cuda":
        if kernel == "triton":
            raise ValueError("The SLA Triton kernel needs CUDA tensors; use kernel='reference' on this device.")
        return False
    available = _sla_kernel() is not None
    if kernel == "triton" and not available:
        raise ImportError("kernel='triton' needs thu-ml's `sparse_linear_attention` package (github.com/thu-ml/SLA).")
    return available


@functools.cache  # one import attempt per process, not one per block and step
def _sla_kernel():
    """thu-ml SLA's Triton forward (``sparse_linear_attention.kernel._attention``), or ``None`` if not installed.

    Imported lazily: it is an optional GPU-only dependency (it needs Triton) and importing it compiles nothing until
    first use. It is a private name of that package, used only here.
    """
    try:
        from sparse_linear_attention.kernel import _attention
    except ImportError:
        return None
    return _attention


def _triton_sparse_attention(q, k, v, lut, block_q, block_k) -> torch.Tensor:
    """The sparse branch through SLA's Triton kernel (which wants the 0/1 block map and the sorted-free LUT)."""
    nk = math.ceil(q.shape[-2] / block_k)
    block_map = torch.zeros(*lut.shape[:-1], nk, dtype=torch.int8, device=q.device).scatter_(-1, lut, 1)
    return _sla_kernel().apply(q.contiguous(), k.contiguous(), v.contiguous(), block_map, lut.contiguous(),
                               lut.shape[-1], block_q, block_k)


# ----------------------------------------------------------------------------------------------- processor
def _apply_rotary(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan RoPE on interleaved pairs ``(x[2i], x[2i+1])``, with diffusers' repeated cos / sin tables."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = freqs_cos[..., 0::2], freqs_sin[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2).type_as(x)


class SLAAttnProcessor(torch.nn.Module):
    """A diffusers attention processor running a Wan `WanAttention` self-attention (``attn1``) with SLA.

    The processor is a module holding the block's ``proj_l`` (diffusers registers module processors as
    ``attn1.processor``, so the weight's key is ``blocks.N.attn1.processor.proj_l.weight``). Projections, q/k norms and
    RoPE are the stock Wan ones; only the attention itself changes.

    Args:
        head_dim: the attention head size (``proj_l`` is ``head_dim x head_dim``).
        topk: fraction of key blocks each query block keeps (TurboDiffusion's ``--sla_topk``, default 0.1).
        block_q, block_k: SLA block sizes (128, 64 for the Turbo experts).
        kernel: ``"auto"`` (SLA's Triton kernel on CUDA when installed, else the reference), ``"reference"``,
            ``"triton"``.
    """

    def __init__(self, head_dim: int, topk: float = 0.1, block_q: int = BLOCK_Q, block_k: int = BLOCK_K,
                 kernel: str = "auto") -> None:
        super().__init__()
        if not 0.0 < topk <= 1.0:
            raise ValueError(f"`topk` must be in (0, 1], got {topk}.")
        if kernel not in SLA_KERNELS:
            raise ValueError(f"`kernel` must be one of {SLA_KERNELS}, got {kernel!r}.")
        self.topk, self.block_q, self.block_k, self.kernel = float(topk), int(block_q), int(block_k), kernel
        self.proj_l = torch.nn.Linear(head_dim, head_dim)

    def extra_repr(self) -> str:
        return f"topk={self.topk}, block_q={self.block_q}, block_k={self.block_k}, kernel={self.kernel!r}"

    def forward(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("SLAAttnProcessor runs self-attention only (no encoder states, no attention mask).")
        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query, key = _apply_rotary(query, *rotary_emb), _apply_rotary(key, *rotary_emb)
        out = sparse_linear_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), self.proj_l,
                                      self.topk, self.block_q, self.block_k, self.kernel)
        out = out.transpose(1, 2).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def use_sla_attention(transformer: torch.nn.Module, topk: float = 0.1, block_q: int = BLOCK_Q,
                      block_k: int = BLOCK_K, kernel: str = "auto") -> None:
    """Install an `SLAAttnProcessor` on every block's self-attention of a Wan transformer (``proj_l`` zero-initialised
    on the meta device when the model is; load the checkpoint's ``proj_l`` afterwards). Existing SLA processors only
    get the new settings (their ``proj_l`` is kept)."""
    for block in transformer.blocks:
        proc = block.attn1.processor
        if isinstance(proc, SLAAttnProcessor):
            proc.topk, proc.block_q, proc.block_k, proc.kernel = float(topk), int(block_q), int(block_k), kernel
            continue
        head_dim = block.attn1.inner_dim // block.attn1.heads
        with torch.device(block.attn1.norm_q.weight.device):  # meta stays meta; a real model gets real weights
            proc = SLAAttnProcessor(head_dim, topk, block_q, block_k, kernel)
        block.attn1.set_processor(proc)
