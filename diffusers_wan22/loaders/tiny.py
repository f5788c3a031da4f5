"""A small random-weight Wan 2.2 pipeline built offline, for the demo and the tests.

Every component is the real class (trained-in-place Unigram tokenizer, `UMT5EncoderModel`, two
`WanTransformer3DModel` experts in a `WanMoETransformer3DModel`, `AutoencoderKLWan`, UniPC), only tiny and random,
so the whole pipeline runs end to end on a CPU in about a second. Random weights generate noise, not video content.
"""

from __future__ import annotations

from collections import Counter

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    T5TokenizerFast,
    UMT5Config,
    UMT5EncoderModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
)

from ..core.variants import DEFAULT_NEGATIVE_PROMPT, get_variant
from ..models.transformer_wan_moe import WanMoETransformer3DModel
from ..models.transformer_wan_s2v import WanS2VTransformer3DModel
from ..schedulers.official import official_scheduler

_CORPUS = [
    "Two cats boxing on a stage.",
    "A dog running fast along the beach at sunset.",
    "An astronaut riding a horse on the moon, cinematic lighting.",
    "Waves crash against the rocks while seagulls fly overhead.",
    "A bowl of ramen steaming on a wooden table, close-up shot.",
    DEFAULT_NEGATIVE_PROMPT,
]


def _tiny_unigram_vocab() -> list[tuple[str, float]]:
    """A deterministic Unigram vocabulary: specials, every corpus character, then the corpus words.

    Built by counting rather than by `UnigramTrainer`, whose result changes from process to process (it depends on
    Python's hash seed), which would give each process of a multi-process run different token ids.
    """
    words = Counter("▁" + w for line in _CORPUS for w in line.split())
    chars = Counter(c for w, n in words.items() for c in w for _ in range(n))
    pieces = [(c, -2.0 - 1.0 / (1 + n)) for c, n in sorted(chars.items())]
    pieces += [(w, -1.0 - 1.0 / (1 + n)) for w, n in sorted(words.items()) if len(w) > 1]
    return [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + pieces


def build_tiny_tokenizer() -> T5TokenizerFast:
    """A T5-style Unigram tokenizer made offline (ids: pad 0, eos 1, unk 2, like umt5), identical in every process."""
    tok = Tokenizer(models.Unigram(_tiny_unigram_vocab(), unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    tokenizer = T5TokenizerFast(
        tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0
    )
    tokenizer.model_max_length = 512
    return tokenizer


def build_tiny_text_encoder(vocab_size: int, d_model: int = 32) -> UMT5EncoderModel:
    config = UMT5Config(
        vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", dropout_rate=0.0,
    )
    return UMT5EncoderModel(config).eval()


def tiny_transformer_kwargs(in_channels: int = 16, out_channels: int = 16, text_dim: int = 32) -> dict:
    return dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=in_channels,
        out_channels=out_channels, text_dim=text_dim, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )


def _randomize_(module: torch.nn.Module, generator: torch.Generator, scale: float = 0.2) -> None:
    # Fresh Wan transformers output exactly zero (zero-initialised head); give every weight some signal.
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * scale)


def build_tiny_vae(z_dim: int = 16, seed: int = 0) -> AutoencoderKLWan:
    """A tiny `AutoencoderKLWan` (Wan 2.1 layout for ``z_dim=16``, Wan 2.2 for 48), the same for the same seed."""
    with torch.random.fork_rng(devices=[]):  # default init draws from the global RNG: pin it, leave it untouched
        torch.manual_seed(seed)
        return _tiny_vae(z_dim)


def _tiny_vae(z_dim: int) -> AutoencoderKLWan:
    if z_dim == 16:  # Wan 2.1 VAE layout (A14B)
        return AutoencoderKLWan(
            base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
        ).eval()
    return AutoencoderKLWan(  # Wan 2.2 VAE layout (TI2V-5B): 2x2 patchify, 16x spatial compression
        base_dim=3, z_dim=48, in_channels=12, out_channels=12, is_residual=True, patch_size=2,
        latents_mean=[0.0] * 48, latents_std=[1.0] * 48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        scale_factor_spatial=16, scale_factor_temporal=4, temperal_downsample=[False, True, True],
    ).eval()


def build_tiny_components(variant: str = "t2v-A14B", seed: int = 0, moe: bool = True) -> dict:
    """Random tiny components for ``Wan22Pipeline(**components)`` / ``Wan22ImageToVideoPipeline(**components)``
    (variant ``"t2v-A14B"``, ``"i2v-A14B"`` or ``"ti2v-5B"``), or ``Wan22SpeechToVideoPipeline(**components)``
    (``"s2v-14B"``: a tiny S2V transformer and a tiny wav2vec2 with its feature extractor)."""
    defaults = get_variant(variant)
    generator = torch.Generator().manual_seed(seed)
    tokenizer = build_tiny_tokenizer()
    text_encoder = build_tiny_text_encoder(vocab_size=len(tokenizer))
    _randomize_(text_encoder, generator, scale=0.5)
    if variant == "s2v-14B":
        return dict(tokenizer=tokenizer, text_encoder=text_encoder, **_tiny_s2v_parts(generator))
    channels = 48 if defaults.vae_version == "2.2" else 16
    in_channels = channels + 20 if variant == "i2v-A14B" else channels  # I2V: + 4 mask + 16 image-latent channels
    kwargs = tiny_transformer_kwargs(in_channels=in_channels, out_channels=channels)
    if moe and defaults.boundary_ratio is not None:
        experts = [WanTransformer3DModel(**kwargs).eval() for _ in range(2)]
        for expert in experts:
            _randomize_(expert, generator)
        transformer = WanMoETransformer3DModel.from_experts(*experts, boundary_ratio=defaults.boundary_ratio)
    else:
        transformer = WanTransformer3DModel(**kwargs).eval()
        _randomize_(transformer, generator)
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer,
                vae=build_tiny_vae(channels, seed), scheduler=official_scheduler(variant))


def _tiny_s2v_parts(generator: torch.Generator) -> dict:
    """Transformer, VAE, scheduler and audio stack of a tiny S2V-14B (4 wav2vec2 layers → 5 hidden states)."""
    audio_config = Wav2Vec2Config(
        vocab_size=32, hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
        conv_dim=(16,) * 7, do_stable_layer_norm=True, feat_extract_norm="layer", num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        feat_proj_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0,
    )
    audio_encoder = Wav2Vec2ForCTC(audio_config).eval()
    _randomize_(audio_encoder, generator, scale=0.1)
    kwargs = tiny_transformer_kwargs()
    transformer = WanS2VTransformer3DModel(
        **kwargs, pose_channels=16, audio_dim=16, num_audio_layers=audio_config.num_hidden_layers + 1,
        num_audio_tokens=4, audio_inject_layers=[0, 1],
    ).eval()
    _randomize_(transformer, generator)
    return dict(
        transformer=transformer, vae=build_tiny_vae(16, int(generator.initial_seed())),
        scheduler=official_scheduler("s2v-14B"),
        audio_encoder=audio_encoder,
        audio_processor=Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                                 do_normalize=True, return_attention_mask=True),
    )
