"""W8A8 linear layers: TurboDiffusion's int8 weights *and* int8 activations with 128x128 block scales.

The published ``-quant`` TurboWan2.2 checkpoints store, for the 8 linears of every block, ``int8_weight`` (int8
``[out, in]``), ``scale`` (float32 ``[ceil(out/128), ceil(in/128)]``, block absmax / 128) and ``bias``. At run time
TurboDiffusion quantizes the activations the same way and multiplies block by block:

* the input is flattened to 2-D ``[M, K]`` and cut into 128x128 tiles (rows are tokens of *all* batch items, so a
  tile may span two videos); each tile gets ``amax = max(1e-8, max|x|)``, ``q = saturate(round_half_even(x *
  float32(128 / amax)))`` in ``[-128, 127]`` and the scale ``amax / 128``;
* for every 128-wide K block ``j`` the int8 products are summed in int32, converted to float32 and added to a float32
  accumulator times ``scale_x[row block, j] * scale_w[col block, j]`` (K blocks in increasing order);
* the result is cast to the input dtype and the bias added.

`w8a8_matmul` computes exactly that. The int32 block sums are exact whichever way they are computed (a 128-term
sum of int8 products stays below 2**21, so float32 represents every partial sum exactly); `torch._int_mm` computes
them as integers where it is available, otherwise a float32 matmul of the integer values does (same numbers). The
*dequantizing* path (``mode="dequantize"``: float weight = int8 * scale, activations left in float, like ComfyUI's
W8A16 port) is a different, approximate computation and is named as such.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._compat import int8_matmul, int8_matmul_available

BLOCK = 128  # TurboDiffusion's quantization tile (rows and columns) and GEMM K block
W8A8_MODES = ("auto", "int_mm", "reference", "dequantize")
_CHUNK_ELEMENTS = 1 << 26  # output elements per row chunk of `w8a8_matmul` (float32: 256 MB)


def int_mm_available(device: torch.device) -> bool:
    """Whether the int8 GEMM path (torch's ``_int_mm``, via `_compat`) can run on ``device`` (CPU and CUDA)."""
    return int8_matmul_available() and device.type in ("cpu", "cuda")


# ----------------------------------------------------------------------------------------------- block quantization
def _pad_to_blocks(x: torch.Tensor) -> torch.Tensor:
    """Zero-pad a 2-D tensor to whole 128x128 tiles (zeros change no absmax above the 1e-8 floor)."""
    rows, cols = x.shape
    return F.pad(x, (0, -cols % BLOCK, 0, -rows % BLOCK))


def quantize_blocks(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """TurboDiffusion's 128x128 block quantization of a 2-D tensor: (int8 values ``[M, K]``, float32 scales
    ``[ceil(M/128), ceil(K/128)]``).

    ``scale = amax / 128`` with ``amax = max(1e-8, max|tile|)``; values are ``x * float32(128 / amax)`` rounded half
    to even and saturated to ``[-128, 127]`` (so the absmax element maps to 127), computed in float32.
    """
    if x.ndim != 2:
        raise ValueError(f"quantize_blocks expects a 2-D tensor, got shape {tuple(x.shape)}.")
    rows, cols = x.shape
    padded = _pad_to_blocks(x.float())
    mb, kb = padded.shape[0] // BLOCK, padded.shape[1] // BLOCK
    tiles = padded.view(mb, BLOCK, kb, BLOCK)
    amax = tiles.abs().amax(dim=(1, 3)).clamp_min(1e-8)  # [mb, kb]
    inv = torch.full_like(amax, 128.0) / amax  # float32(128 / amax), as the CUDA kernel computes it
    q = torch.round(tiles * inv[:, None, :, None]).clamp_(-128, 127).to(torch.int8)
    return q.view(padded.shape)[:rows, :cols], amax / 128.0


def _k_blocks(q: torch.Tensor) -> torch.Tensor:
    """``[R, K]`` int8 -> ``[KB, R, 128]`` contiguous K blocks (zero-padded: zeros add nothing to the sums)."""
    rows, k = q.shape
    kb = math.ceil(k / BLOCK)
    return F.pad(q, (0, kb * BLOCK - k)).view(rows, kb, BLOCK).transpose(0, 1).contiguous()


def _block_sums(x_block: torch.Tensor, w_block: torch.Tensor, use_int_mm: bool) -> torch.Tensor:
    """Exact int8 dot products of one K block, ``[M, 128] x [N, 128] -> [M, N]`` as float32 (integers < 2**21)."""
    if use_int_mm:
        return int8_matmul(x_block, w_block.t()).to(torch.float32)
    return x_block.to(torch.float32) @ w_block.to(torch.float32).t()


def _w8a8_rows(x_rows: torch.Tensor, w_blocks: torch.Tensor, col_scale: torch.Tensor,
               use_int_mm: bool) -> torch.Tensor:
    """W8A8 product of a chunk of rows whose first row starts a 128-row quantization tile."""
    xq, xs = quantize_blocks(x_rows)
    x_blocks = _k_blocks(xq)
    # torch's CUDA int8 GEMM needs more than 16 rows; the float path gives the same integers for short inputs.
    use_int_mm = use_int_mm and (x_rows.device.type != "cuda" or x_rows.shape[0] > 16)
    row_scale = xs.repeat_interleave(BLOCK, dim=0)[: x_rows.shape[0]]  # [rows, KB]: scale of each token's tile
    out = torch.zeros(x_rows.shape[0], w_blocks.shape[1], dtype=torch.float32, device=x_rows.device)
    for j in range(w_blocks.shape[0]):  # K blocks in order: the float32 accumulation order of the kernel
        out += _block_sums(x_blocks[j], w_blocks[j], use_int_mm) * (row_scale[:, j, None] * col_scale[None, :, j])
    return out


def w8a8_matmul(x2d: torch.Tensor, weight_int8: torch.Tensor, weight_scale: torch.Tensor,
                use_int_mm: bool) -> torch.Tensor:
    """``x2d [M, K] @ W^T`` in TurboDiffusion's W8A8 scheme; float32 ``[M, N]`` (before bias and output cast).

    Rows are processed in chunks of whole 128-row tiles so the per-block temporaries stay near 256 MB.
    """
    m, n = x2d.shape[0], weight_int8.shape[0]
    w_blocks = _k_blocks(weight_int8)  # [KB, N, 128]
    col_scale = weight_scale.float().repeat_interleave(BLOCK, dim=0)[:n]  # [N, KB]: scale of each feature's tile
    rows = max(BLOCK, (_CHUNK_ELEMENTS // max(n, 1)) // BLOCK * BLOCK)
    if m <= rows:
        return _w8a8_rows(x2d, w_blocks, col_scale, use_int_mm)
    return torch.cat([_w8a8_rows(x2d[r:r + rows], w_blocks, col_scale, use_int_mm) for r in range(0, m, rows)])


def dequantize_weight(weight_int8: torch.Tensor, weight_scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The float weight ``int8 * block scale`` (what a W8A16 / dequantizing path multiplies with)."""
    n, k = weight_int8.shape
    scale = weight_scale.float().repeat_interleave(BLOCK, 0)[:n].repeat_interleave(BLOCK, 1)[:, :k]
    return (weight_int8.float() * scale).to(dtype)


# ----------------------------------------------------------------------------------------------- module
class W8A8Linear(torch.nn.Module):
    """A linear layer with TurboDiffusion's int8 weight + 128x128 block scales and int8 block-quantized activations.

    ``int8_weight`` (int8 ``[out, in]``) and ``scale`` (float32 ``[ceil(out/128), ceil(in/128)]``) are frozen
    parameters (so offload hooks, group offloading and lazy experts move and release them like any weight; the state
    dict keys are TurboDiffusion's) that keep their dtypes under ``module.to(dtype)``: the scales are float32 by
    design. ``bias`` follows the model's dtype, as a `torch.nn.Linear` bias does.

    Args:
        in_features, out_features: the linear's shape.
        bias: whether the layer has a bias.
        mode: ``"auto"`` (int8 GEMM via ``torch._int_mm`` where available, else ``"reference"``), ``"int_mm"``,
            ``"reference"`` (float32 matmul of the exact integer block sums: same numbers, any device), or
            ``"dequantize"`` (NOT W8A8: float weight = int8 * scale, float activations; an approximation).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, mode: str = "auto",
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        super().__init__()
        if mode not in W8A8_MODES:
            raise ValueError(f"`mode` must be one of {W8A8_MODES}, got {mode!r}.")
        self.in_features, self.out_features, self.mode = in_features, out_features, mode
        blocks = (math.ceil(out_features / BLOCK), math.ceil(in_features / BLOCK))
        self.int8_weight = torch.nn.Parameter(torch.zeros(out_features, in_features, dtype=torch.int8, device=device),
                                              requires_grad=False)
        self.scale = torch.nn.Parameter(torch.ones(blocks, dtype=torch.float32, device=device), requires_grad=False)
        self.bias = torch.nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device),
                                       requires_grad=False) if bias else None

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (int8 * scale) in the bias dtype: for inspection and weight-reading tools."""
        return dequantize_weight(self.int8_weight, self.scale, self.bias.dtype if self.bias is not None
                                 else torch.float32)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, mode={self.mode!r}"

    def _apply(self, fn, recurse: bool = True):
        # `module.to(torch.bfloat16)` must not round the float32 scales: move them with the int8 weight instead.
        scale = self._parameters.pop("scale")
        try:
            super()._apply(fn, recurse)
        finally:
            device = self.int8_weight.device
            moved = (torch.empty_like(scale, device=device) if scale.is_meta and device.type != "meta"
                     else scale.to(device))
            self._parameters["scale"] = torch.nn.Parameter(moved, requires_grad=False)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"W8A8Linear expects {self.in_features} input features, got shape {tuple(x.shape)}.")
        x2d = x.reshape(-1, self.in_features)  # TurboDiffusion tiles the flattened [tokens, features] matrix
        if self.mode == "dequantize":
            out = x2d @ dequantize_weight(self.int8_weight, self.scale, x.dtype).t()
        else:
            use_int_mm = self.mode == "int_mm" or (self.mode == "auto" and int_mm_available(x.device))
            out = w8a8_matmul(x2d, self.int8_weight, self.scale, use_int_mm).to(x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, mode: str = "auto") -> "W8A8Linear":
        """Quantize a float `torch.nn.Linear` with TurboDiffusion's weight scheme (as its quantize script does)."""
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, mode=mode,
                    dtype=linear.weight.dtype, device=linear.weight.device)
        q, s = quantize_blocks(linear.weight.detach())
        layer.int8_weight.data.copy_(q)
        layer.scale.data.copy_(s)
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach())
        return layer


def w8a8_modules(model: torch.nn.Module) -> list[tuple[str, W8A8Linear]]:
    """Every `W8A8Linear` of ``model`` with its qualified name."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, W8A8Linear)]


def set_w8a8_mode(model: torch.nn.Module, mode: str) -> None:
    """Switch the compute path of every `W8A8Linear` in ``model`` (see `W8A8Linear` for the modes)."""
    if mode not in W8A8_MODES:
        raise ValueError(f"`mode` must be one of {W8A8_MODES}, got {mode!r}.")
    for _, module in w8a8_modules(model):
        module.mode = mode
