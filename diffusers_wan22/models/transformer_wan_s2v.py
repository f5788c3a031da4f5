"""Wan 2.2 S2V-14B (speech-to-video) transformer, built from diffusers' Wan blocks.

The backbone is the Wan 2.1/2.2 DiT (diffusers' patch embedding, condition embedder, rotary tables, blocks, output
head — same tensors, same names). What S2V adds, and what this file implements:

* one sequence of three token kinds: the noisy video (plus the pose latents through ``pose_embedding``), the
  reference image latent, and FramePack motion tokens packed from the 19 latent frames that precede the clip;
  a learned token-type embedding marks each kind;
* per-token 3-D rotary positions: video frames 0..F-1, the reference at a fixed frame index (30), motion frames
  at negative indices (older = more negative);
* "zero timestep": reference and motion tokens are modulated with t = 0, only the video tokens with t;
* a causal audio encoder over all wav2vec2 hidden layers that gives, per latent frame, 5 audio tokens and one
  global vector, and audio injectors (AdaLN on the global vector + cross-attention on the tokens) after the
  configured blocks, on the video tokens of each frame only.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import AttentionMixin
from diffusers.models.cache_utils import CacheMixin
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import AdaLayerNorm, FP32LayerNorm
from diffusers.models.transformers.transformer_wan import (
    WanAttention,
    WanAttnProcessor,
    WanRotaryPosEmbed,
    WanTimeTextImageEmbedding,
    WanTransformerBlock,
)
from torch import nn

# Token kinds, in sequence order (also the rows of `token_type_embedding`).
VIDEO, REFERENCE, MOTION = 0, 1, 2
REFERENCE_FRAME_INDEX = 30  # the official model places the reference image at rotary frame 30
MOTION_BUCKETS = (1, 2, 16)  # FramePack: newest 1 latent frame at full res, next 2 at 2x, oldest 16 at 4x
MOTION_STRIDES = (1, 2, 4)


def _nonaffine_ln(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)


class CausalConv1d(nn.Conv1d):
    """A 1-D convolution that only looks back in time (left padding by replicating the first frame)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.kernel_size[0] - 1, 0), mode="replicate"))


class WanS2VAudioEncoder(nn.Module):
    """wav2vec2 hidden states → per latent frame ``num_tokens + 1`` audio tokens and one global audio vector.

    The layers are mixed with learned softmax-like weights (SiLU, normalised), then two strided causal convolutions
    bring the video frame rate down 4x (one step per latent frame). The local branch splits its channels into
    ``num_tokens`` streams and appends a learned padding token; the global branch ends in a linear layer.
    """

    def __init__(self, audio_dim: int, dim: int, num_layers: int = 25, num_tokens: int = 4, need_global: bool = True):
        super().__init__()
        self.num_tokens = num_tokens
        self.layer_weights = nn.Parameter(torch.full((1, num_layers, 1, 1), 0.01))
        self.conv1_local = CausalConv1d(audio_dim, dim // 4 * num_tokens, 3)
        self.conv1_global = CausalConv1d(audio_dim, dim // 4, 3) if need_global else None
        self.conv2 = CausalConv1d(dim // 4, dim // 2, 3, stride=2)
        self.conv3 = CausalConv1d(dim // 2, dim, 3, stride=2)
        self.final_linear = nn.Linear(dim, dim) if need_global else None
        self.norm1, self.norm2, self.norm3 = _nonaffine_ln(dim // 4), _nonaffine_ln(dim // 2), _nonaffine_ln(dim)
        self.padding_tokens = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def _downsample(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, T] after the first conv → [N, T/4, dim]: norm/SiLU around two strided causal convs."""
        x = F.silu(self.norm1(x.transpose(1, 2))).transpose(1, 2)
        x = F.silu(self.norm2(self.conv2(x).transpose(1, 2))).transpose(1, 2)
        return F.silu(self.norm3(self.conv3(x).transpose(1, 2)))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``features`` [B, layers, C, T] → (global [B, T', 1, D] or None, local tokens [B, T', num_tokens+1, D])."""
        weights = F.silu(self.layer_weights.float())
        x = ((features.float() * weights) / weights.sum(dim=1, keepdim=True)).sum(dim=1)  # [B, C, T]
        x = x.to(self.conv1_local.weight.dtype)  # mixed in float32, convolved in the model's dtype
        batch = x.shape[0]
        local = self.conv1_local(x)  # [B, n*C', T]
        local = local.unflatten(1, (self.num_tokens, -1)).flatten(0, 1)  # [(B n), C', T]
        local = self._downsample(local).unflatten(0, (batch, self.num_tokens)).transpose(1, 2)  # [B, T', n, D]
        padding = self.padding_tokens.expand(batch, local.shape[1], 1, -1)
        local = torch.cat([local, padding.to(local.dtype)], dim=2)
        if self.conv1_global is None:
            return None, local
        glob = self.final_linear(self._downsample(self.conv1_global(x)))  # [B, T', D]
        return glob.unsqueeze(2), local


class WanS2VAudioInjector(nn.Module):
    """Adds audio to the video tokens of each latent frame: AdaLN on the global vector, cross-attention on tokens."""

    def __init__(self, dim: int, num_heads: int, eps: float, adain: bool = True):
        super().__init__()
        self.norm = AdaLayerNorm(embedding_dim=dim, output_dim=2 * dim, chunk_dim=1) if adain else _nonaffine_ln(dim)
        self.attn = WanAttention(dim=dim, heads=num_heads, dim_head=dim // num_heads, eps=eps,
                                 cross_attention_dim_head=dim // num_heads, processor=WanAttnProcessor())

    def forward(self, video_tokens: torch.Tensor, audio_tokens: torch.Tensor,
                audio_global: torch.Tensor | None) -> torch.Tensor:
        """``video_tokens`` [(B F), N, D], ``audio_tokens`` [(B F), K, D], ``audio_global`` [(B F), D] → residual."""
        if isinstance(self.norm, AdaLayerNorm):
            normed = self.norm(video_tokens, temb=audio_global)
        else:
            normed = self.norm(video_tokens)
        return self.attn(normed, audio_tokens)


class WanS2VMotionPacker(nn.Module):
    """FramePack: the 19 latent frames before the clip become few tokens, coarser the older they are."""

    def __init__(self, in_channels: int, dim: int, drop_mode: str = "padd"):
        super().__init__()
        if drop_mode not in ("padd", "drop"):
            raise ValueError(f"framepack_drop_mode must be 'padd' or 'drop'; got {drop_mode!r}.")
        self.drop_mode = drop_mode
        self.proj_1x = nn.Conv3d(in_channels, dim, kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.proj_2x = nn.Conv3d(in_channels, dim, kernel_size=(2, 4, 4), stride=(2, 4, 4))
        self.proj_4x = nn.Conv3d(in_channels, dim, kernel_size=(4, 8, 8), stride=(4, 8, 8))

    def forward(self, motion_latents: torch.Tensor, add_last_motion: int = 2
                ) -> tuple[torch.Tensor, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
        """``motion_latents`` [B, C, Fm, H, W] → tokens [B, N, D] and the rotary positions of each token group.

        ``add_last_motion`` 2 uses all three groups; 1 hides the newest frame, 0 also the 2x group (zeroed in
        'padd' mode, removed in 'drop' mode).
        """
        b, c, fm, h, w = motion_latents.shape
        total = sum(MOTION_BUCKETS)
        buffer = motion_latents.new_zeros(b, c, total, h, w)
        keep = min(total, fm)
        if keep:
            buffer[:, :, -keep:] = motion_latents[:, :, -keep:]  # right-aligned: the newest frame is last
        hidden = len(MOTION_BUCKETS) - 1 - add_last_motion  # how many of the newest groups are hidden
        if hidden > 0 and self.drop_mode == "padd":
            buffer[:, :, -sum(MOTION_BUCKETS[:hidden]):] = 0
        parts = buffer.split(list(MOTION_BUCKETS[::-1]), dim=2)[::-1]  # newest group first
        tokens, positions = [], []
        start = 0
        for i, (part, proj, frames, stride) in enumerate(
            zip(parts, (self.proj_1x, self.proj_2x, self.proj_4x), MOTION_BUCKETS, MOTION_STRIDES)
        ):
            start -= frames
            if i < hidden and self.drop_mode == "drop":
                continue
            tokens.append(proj(part).flatten(2).transpose(1, 2))
            positions.append(_packed_positions(start, frames, stride, h // 2, w // 2))
        return torch.cat(tokens, dim=1), positions


def _sampled(first: int, extent: int, count: int) -> np.ndarray:
    """``count`` integer positions spread over ``[first, first + extent - 1]`` (official rounding: truncation)."""
    return np.linspace(first, first + extent - 1, count).astype(int)


def _packed_positions(start: int, frames: int, stride: int, grid_h: int, grid_w: int):
    """Rotary positions (frame, row, column) of a FramePack group starting ``-start`` frames back in time.

    Packed tokens keep the full-resolution extent: a 4x group of 16 frames sits at 4 frame positions spread over
    its 16 frames and at rows/columns spread over the whole patch grid. Negative frames are mirrored positives.
    """
    f = -np.linspace(-start, -start - frames + 1, frames // stride).astype(int)
    return f, _sampled(0, grid_h, grid_h // stride), _sampled(0, grid_w, grid_w // stride)


class WanS2VTransformerBlock(WanTransformerBlock):
    """diffusers' Wan block with two modulation sets: one for the first ``num_video_tokens`` tokens, one after."""

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, temb: torch.Tensor,
                rotary_emb: tuple[torch.Tensor, torch.Tensor], num_video_tokens: int | None = None) -> torch.Tensor:
        if temb.ndim != 4:  # a plain Wan modulation: fall back to the stock block
            return super().forward(hidden_states, encoder_hidden_states, temb, rotary_emb)
        n = hidden_states.shape[1] if num_video_tokens is None else num_video_tokens
        mod = (self.scale_shift_table.unsqueeze(1) + temb.float()).unbind(2)  # 6 x [B, 2, D]
        shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = mod

        norm = _modulate(self.norm1(hidden_states.float()), scale_msa, shift_msa, n).type_as(hidden_states)
        attn_output = self.attn1(norm, None, None, rotary_emb)
        hidden_states = (hidden_states.float() + _gate(attn_output, gate_msa, n)).type_as(hidden_states)

        norm = self.norm2(hidden_states.float()).type_as(hidden_states)
        hidden_states = hidden_states + self.attn2(norm, encoder_hidden_states, None, None)

        norm = _modulate(self.norm3(hidden_states.float()), c_scale_msa, c_shift_msa, n).type_as(hidden_states)
        ff_output = self.ffn(norm)
        return (hidden_states.float() + _gate(ff_output.float(), c_gate_msa, n)).type_as(hidden_states)


def _modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, n: int) -> torch.Tensor:
    """``x * (1 + scale) + shift`` with segment 0 of scale/shift ([B, 2, D]) on ``x[:, :n]`` and segment 1 after."""
    return torch.cat([x[:, :n] * (1 + scale[:, :1]) + shift[:, :1], x[:, n:] * (1 + scale[:, 1:]) + shift[:, 1:]], 1)


def _gate(x: torch.Tensor, gate: torch.Tensor, n: int) -> torch.Tensor:
    return torch.cat([x[:, :n] * gate[:, :1], x[:, n:] * gate[:, 1:]], dim=1)


class WanS2VTransformer3DModel(ModelMixin, ConfigMixin, PeftAdapterMixin, CacheMixin, AttentionMixin):
    r"""The Wan 2.2 S2V-14B denoiser: a Wan DiT conditioned on a reference image, motion frames, audio and pose.

    Args mirror `WanTransformer3DModel` plus:
        pose_channels (`int`): latent channels of the pose condition (0 = no pose encoder).
        audio_dim (`int`): wav2vec2 hidden size (1024 for wav2vec2-large).
        num_audio_layers (`int`): number of wav2vec2 hidden states mixed (25 = embeddings + 24 layers).
        num_audio_tokens (`int`): audio token streams per latent frame (a learned padding token makes one more).
        audio_inject_layers (`list[int]`): blocks after which audio is injected.
        enable_adain (`bool`): modulate injected tokens with the frame's global audio vector.
        zero_timestep (`bool`): reference and motion tokens see t = 0.
        add_last_motion (`bool`): whether the newest motion groups may be used at all.
        framepack_drop_mode (`str`): ``"padd"`` zeroes hidden motion groups, ``"drop"`` removes their tokens.
        image_dim: always ``None`` (no CLIP image branch); present so diffusers' Wan LoRA loader can read it.
    """

    _supports_gradient_checkpointing = True
    _skip_layerwise_casting_patterns = ["patch_embedding", "pose_embedding", "condition_embedder", "norm",
                                        "audio_encoder", "motion_packer"]
    _no_split_modules = ["WanS2VTransformerBlock"]
    _keep_in_fp32_modules = ["rope", "time_embedder", "scale_shift_table", "norm1", "norm2", "norm3"]
    _repeated_blocks = ["WanS2VTransformerBlock"]

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, ...] = (1, 2, 2),
        num_attention_heads: int = 40,
        attention_head_dim: int = 128,
        in_channels: int = 16,
        out_channels: int = 16,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 13824,
        num_layers: int = 40,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
        rope_max_seq_len: int = 1024,
        pose_channels: int = 16,
        audio_dim: int = 1024,
        num_audio_layers: int = 25,
        num_audio_tokens: int = 4,
        audio_inject_layers: Sequence[int] = (0, 4, 8, 12, 16, 20, 24, 27, 30, 33, 36, 39),
        enable_adain: bool = True,
        zero_timestep: bool = True,
        add_last_motion: bool = True,
        framepack_drop_mode: str = "padd",
        image_dim: int | None = None,
    ) -> None:
        super().__init__()
        if image_dim is not None:  # kept in the config only because diffusers' Wan LoRA loader reads it
            raise ValueError(f"S2V has no image-embedding branch; image_dim must be None, got {image_dim}.")
        dim = num_attention_heads * attention_head_dim
        bad = [i for i in audio_inject_layers if not 0 <= i < num_layers]
        if bad:
            raise ValueError(f"audio_inject_layers {bad} are outside the {num_layers} blocks.")
        self.rope = WanRotaryPosEmbed(attention_head_dim, patch_size, rope_max_seq_len)
        self.patch_embedding = nn.Conv3d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.pose_embedding = (
            nn.Conv3d(pose_channels, dim, kernel_size=patch_size, stride=patch_size) if pose_channels else None
        )
        self.condition_embedder = WanTimeTextImageEmbedding(
            dim=dim, time_freq_dim=freq_dim, time_proj_dim=dim * 6, text_embed_dim=text_dim
        )
        self.token_type_embedding = nn.Embedding(3, dim)
        self.motion_packer = WanS2VMotionPacker(in_channels, dim, framepack_drop_mode)
        self.audio_encoder = WanS2VAudioEncoder(audio_dim, dim, num_audio_layers, num_audio_tokens, enable_adain)
        self.audio_injectors = nn.ModuleList(
            [WanS2VAudioInjector(dim, num_attention_heads, eps, enable_adain) for _ in audio_inject_layers]
        )
        self.blocks = nn.ModuleList(
            [WanS2VTransformerBlock(dim, ffn_dim, num_attention_heads, qk_norm, cross_attn_norm, eps)
             for _ in range(num_layers)]
        )
        self.norm_out = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.proj_out = nn.Linear(dim, out_channels * math.prod(patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)
        self.gradient_checkpointing = False

    def enable_cache(self, config) -> None:
        """Not supported: diffusers' block caches skip or replay blocks, but S2V adds audio *between* blocks (after
        the configured blocks, on the video tokens), which a replayed residual would miss or count twice."""
        raise NotImplementedError(
            f"{type(config).__name__} is not supported on WanS2VTransformer3DModel: block caches skip blocks, and "
            "S2V injects audio between them. Run without a cache (or use fewer steps / batched_cfg=True)."
        )

    # ------------------------------------------------------------------ rotary positions
    def rotary_for(self, groups: list[tuple[np.ndarray, np.ndarray, np.ndarray]], device) -> tuple[torch.Tensor, ...]:
        """cos/sin tables [1, S, 1, head_dim] for token groups given as (frames, rows, columns) position grids.

        A negative frame index rotates backwards (sin negated), which is how motion frames sit "before" the clip.
        The tables depend only on the positions, so they are built once per layout and device (every denoising step
        and both guidance branches reuse them) from the rotary buffers, on their device.
        """
        key = (str(device), self.rope.freqs_cos.dtype, tuple(tuple(map(tuple, group)) for group in groups))
        cache = self.__dict__.setdefault("_rotary_cache", {})
        if key not in cache:
            if len(cache) >= 8:  # a handful of layouts per call (clip 0 without motion tokens, later clips with)
                cache.clear()
            cache[key] = self._build_rotary(groups, device)
        return cache[key]

    def _build_rotary(self, groups, device) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.rope
        dev = r.freqs_cos.device
        cos_t, cos_h, cos_w = r.freqs_cos.split([r.t_dim, r.h_dim, r.w_dim], dim=1)
        sin_t, sin_h, sin_w = r.freqs_sin.split([r.t_dim, r.h_dim, r.w_dim], dim=1)
        cos_parts, sin_parts = [], []
        for f, h, w in groups:
            f_idx, h_idx, w_idx = (torch.as_tensor(np.abs(v), device=dev) for v in (f, h, w))
            sign = torch.as_tensor(np.sign(f) + (f == 0), device=dev, dtype=sin_t.dtype)[:, None]
            shape = (len(f), len(h), len(w), -1)
            for out, (t_, h_, w_) in ((cos_parts, (cos_t[f_idx], cos_h[h_idx], cos_w[w_idx])),
                                      (sin_parts, (sin_t[f_idx] * sign, sin_h[h_idx], sin_w[w_idx]))):
                out.append(torch.cat([
                    t_[:, None, None].expand(shape), h_[None, :, None].expand(shape), w_[None, None, :].expand(shape)
                ], dim=-1).flatten(0, 2))
        return torch.cat(cos_parts)[None, :, None].to(device), torch.cat(sin_parts)[None, :, None].to(device)

    # ------------------------------------------------------------------ forward
    def encode_audio(self, audio_embeds: torch.Tensor, motion_frames: Sequence[int]):
        """Audio tokens per latent frame of the clip: the motion context is audio-padded with the first frame."""
        pad = audio_embeds[..., :1].expand(*audio_embeds.shape[:-1], motion_frames[0])
        audio_global, audio_tokens = self.audio_encoder(torch.cat([pad, audio_embeds], dim=-1))
        drop = motion_frames[1]
        return (None if audio_global is None else audio_global[:, drop:]), audio_tokens[:, drop:]

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        ref_latents: torch.Tensor,
        motion_latents: torch.Tensor,
        audio_embeds: torch.Tensor,
        pose_latents: torch.Tensor | None = None,
        motion_frames: Sequence[int] = (73, 19),
        drop_motion_frames: bool = False,
        add_last_motion: int = 2,
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
    ):
        """Predict the flow velocity of the clip's video latents.

        Args:
            hidden_states: noisy video latents [B, C, F, H, W].
            timestep: [B] diffusion timesteps.
            encoder_hidden_states: text embeddings [B, L, text_dim].
            ref_latents: reference image latent [B, C, 1, H, W].
            motion_latents: latents of the frames before the clip [B, C, Fm, H, W] (zeros for the first clip).
            audio_embeds: wav2vec2 features of the clip [B, num_audio_layers, audio_dim, frames].
            pose_latents: pose video latents [B, pose_channels, F, H, W]; ``None`` = no pose (zeros).
            motion_frames: (pixel frames, latent frames) of the motion context, (73, 19) officially.
            drop_motion_frames: leave the motion tokens out (the official first clip).
            add_last_motion: 2 uses all FramePack groups, 1 hides the newest frame, 0 also the 2x group.
        """
        batch, _, frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.config.patch_size
        grid = (frames // p_t, height // p_h, width // p_w)

        audio_global, audio_tokens = self.encode_audio(audio_embeds, motion_frames)
        if audio_tokens.shape[1] != grid[0]:
            raise ValueError(f"audio gives {audio_tokens.shape[1]} latent frames but the video has {grid[0]}: pass "
                             f"4 audio frames per latent frame (got {audio_embeds.shape[-1]} for {frames}).")

        hidden, num_video, rotary_emb = self._embed_tokens(hidden_states, ref_latents, motion_latents, pose_latents,
                                                          grid, drop_motion_frames, add_last_motion)
        temb, context, block_temb = self._embed_time_and_text(timestep, encoder_hidden_states, batch)

        injector_of = {layer: i for i, layer in enumerate(self.config.audio_inject_layers)}
        audio_tokens = audio_tokens.flatten(0, 1)  # [(B F), K, D]
        audio_global = None if audio_global is None else audio_global.flatten(0, 2)  # [(B F), D]
        for index, block in enumerate(self.blocks):
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden = self._gradient_checkpointing_func(block, hidden, context, block_temb, rotary_emb, num_video)
            else:
                hidden = block(hidden, context, block_temb, rotary_emb, num_video)
            if index in injector_of:
                hidden = self._inject_audio(hidden, num_video, grid[0], injector_of[index], audio_tokens, audio_global)

        shift, scale = (self.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
        hidden = hidden[:, :num_video]
        hidden = (self.norm_out(hidden.float()) * (1 + scale) + shift).type_as(hidden)
        hidden = self.proj_out(hidden)
        hidden = hidden.reshape(batch, *grid, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        output = hidden.flatten(6, 7).flatten(4, 5).flatten(2, 3)
        return Transformer2DModelOutput(sample=output) if return_dict else (output,)

    def _embed_tokens(self, hidden_states, ref_latents, motion_latents, pose_latents, grid, drop_motion_frames: bool,
                      add_last_motion: int):
        """[video (+ pose) | reference | FramePack motion] tokens with their type embeddings, the number of video
        tokens, and the rotary tables of the whole layout."""
        p_t, p_h, p_w = self.config.patch_size
        video = self.patch_embedding(hidden_states)
        if self.pose_embedding is not None:
            # Without pose the official model still adds the pose encoder's response to zeros: its bias.
            video = video + (self.pose_embedding(pose_latents.to(video.dtype)) if pose_latents is not None
                             else self.pose_embedding.bias.to(video.dtype)[None, :, None, None, None])
        video = video.flatten(2).transpose(1, 2)
        ref = self.patch_embedding(ref_latents).flatten(2).transpose(1, 2)
        ref_grid = ref_latents.shape[-2] // p_h, ref_latents.shape[-1] // p_w
        groups = [(np.arange(grid[0]), np.arange(grid[1]), np.arange(grid[2])),
                  (np.array([REFERENCE_FRAME_INDEX]), np.arange(ref_grid[0]), np.arange(ref_grid[1]))]
        types = self.token_type_embedding.weight
        parts = [video + types[VIDEO].to(video.dtype), ref + types[REFERENCE].to(ref.dtype)]
        if not drop_motion_frames:
            effective = int(self.config.add_last_motion) * int(add_last_motion)
            motion, motion_groups = self.motion_packer(motion_latents.to(video.dtype), effective)
            parts.append(motion + types[MOTION].to(motion.dtype))
            groups += motion_groups
        return torch.cat(parts, dim=1), video.shape[1], self.rotary_for(groups, hidden_states.device)

    def _embed_time_and_text(self, timestep, encoder_hidden_states, batch: int):
        """Time: video tokens see t, reference and motion tokens t = 0 (zero_timestep), in one embedder call.
        Returns (temb of the head, text context, per-block modulation [B, 2, 6, D])."""
        t_all = torch.cat([timestep.reshape(-1), timestep.new_zeros(1)])
        temb, timestep_proj, context, _ = self.condition_embedder(t_all, encoder_hidden_states)
        timestep_proj = timestep_proj.unflatten(1, (6, -1))  # [B+1, 6, D]
        other = timestep_proj[batch:] if self.config.zero_timestep else timestep_proj[:batch]
        block_temb = torch.stack([timestep_proj[:batch], other.expand(batch, -1, -1)], dim=1)
        return temb[:batch], context, block_temb

    def _inject_audio(self, hidden, num_video: int, num_frames: int, injector: int, audio_tokens, audio_global):
        """Residual audio cross-attention on the video tokens, each latent frame attending to its own audio."""
        video = hidden[:, :num_video].unflatten(1, (num_frames, -1)).flatten(0, 1)  # [(B F), N, D]
        residual = self.audio_injectors[injector](video, audio_tokens, audio_global)
        residual = residual.unflatten(0, (hidden.shape[0], num_frames)).flatten(1, 2)
        return torch.cat([hidden[:, :num_video] + residual, hidden[:, num_video:]], dim=1)
