"""Tiny, randomly initialised diffusers pipelines built from configs, fully offline.

Tests (ours and other engineers') need real pipelines that load, save, take LoRA adapters and make
images in well under a second on a CPU, without downloading anything. Everything here is built from
hand-written configs: the tokenizers too (a byte-level CLIP BPE vocabulary and a small T5 Unigram
vocabulary, built in memory with the ``tokenizers`` backend of transformers 5), so no hub id is ever
touched. The weights are random (seeded), so images are noise, but every code path is the real one.

Public builders: :func:`tiny_clip_tokenizer`, :func:`tiny_t5_tokenizer`, :func:`tiny_sd_pipeline`,
:func:`tiny_flux_pipeline`, :func:`tiny_kandinsky22_pipeline`, :func:`tiny_kandinsky3_pipeline`,
:func:`save_tiny_pipeline`, :func:`make_random_lora` and
:func:`single_torch_thread`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch

from db.errors import InputError

TinyFamily = Literal["sd", "flux", "kandinsky22", "kandinsky3"]

_WORDS = (
    "a",
    "an",
    "the",
    "of",
    "with",
    "and",
    "in",
    "image",
    "photo",
    "polyp",
    "colon",
    "chest",
    "x-ray",
    "lung",
    "endoscopy",
    "normal",
    "small",
    "large",
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-to-printable-character table (the standard byte-level BPE alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def tiny_clip_tokenizer(model_max_length: int = 77):
    """A byte-level CLIP BPE tokenizer with a hand-written vocabulary (~530 tokens, a few merges).

    Parameters
    ----------
    model_max_length
        Sequence length the tokenizer pads and truncates to (77, as real CLIP).

    Returns
    -------
    transformers.CLIPTokenizer
    """
    from transformers import CLIPTokenizer

    alphabet = list(_bytes_to_unicode().values())
    tokens = ["<|startoftext|>", "<|endoftext|>"] + alphabet + [c + "</w>" for c in alphabet]
    merges = [("p", "o"), ("po", "l"), ("pol", "y"), ("poly", "p</w>"), ("t", "h"), ("th", "e</w>")]
    tokens += ["".join(pair) for pair in merges]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def tiny_t5_tokenizer(model_max_length: int = 512):
    """A T5 (SentencePiece Unigram) tokenizer with a small hand-written vocabulary, no extra ids.

    Returns
    -------
    transformers.T5Tokenizer
    """
    from transformers import T5Tokenizer

    pieces = ["<pad>", "</s>", "<unk>", "▁"]
    pieces += ["▁" + w for w in _WORDS]
    pieces += [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)] + ["-", ".", ","]
    vocab = [(p, 0.0 if i < 3 else -float(i)) for i, p in enumerate(pieces)]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def _tiny_clip_text_encoder(vocab_size: int, hidden_size: int = 32, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=hidden_size,
        intermediate_size=37,
        layer_norm_eps=1e-5,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=vocab_size,
        max_position_embeddings=77,
        projection_dim=hidden_size,
    )
    torch.manual_seed(seed)
    return CLIPTextModel(config).eval()


def tiny_sd_pipeline(seed: int = 0, sample_size: int = 16):
    """A Stable Diffusion pipeline with a 2-level UNet, a 2-level VAE (factor 2) and a 2-layer CLIP.

    Parameters
    ----------
    seed
        Seed of the random weights (same seed, same pipeline).
    sample_size
        Latent size; the default image is ``2 * sample_size`` pixels square.

    Returns
    -------
    diffusers.StableDiffusionPipeline
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = tiny_clip_tokenizer()
    text_encoder = _tiny_clip_text_encoder(len(tokenizer), seed=seed)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=2 * sample_size,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_flux_pipeline(seed: int = 0, default_sample_size: int = 8):
    """A FLUX pipeline: a 1+1-block transformer, a 1-level VAE, a 2-layer CLIP and a 2-layer T5.

    Parameters
    ----------
    seed
        Seed of the random weights.
    default_sample_size
        Default latent size; the default image is ``default_sample_size`` pixels square (VAE factor 1).

    Returns
    -------
    diffusers.FluxPipeline
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    tokenizer = tiny_clip_tokenizer()
    tokenizer_2 = tiny_t5_tokenizer()
    text_encoder = _tiny_clip_text_encoder(len(tokenizer), seed=seed)
    torch.manual_seed(seed)
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_2),
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            dropout_rate=0.0,
            feed_forward_proj="gated-gelu",
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    ).eval()
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
        guidance_embeds=True,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=1,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipe.default_sample_size = default_sample_size
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _tiny_movq(seed: int):
    """The Kandinsky MoVQ (``VQModel`` with spatial norm), 2 levels (factor 2); 32 channels, as its
    ``SpatialNorm`` always uses 32 groups."""
    from diffusers import VQModel

    torch.manual_seed(seed)
    return VQModel(
        block_out_channels=[32, 32], down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"], in_channels=3,
        latent_channels=4, layers_per_block=1, norm_num_groups=8, norm_type="spatial", num_vq_embeddings=12,
        out_channels=3, up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"], vq_embed_dim=4,
    )  # fmt: skip


def tiny_kandinsky22_pipeline(seed: int = 0):
    """A Kandinsky 2.2 text-to-image (combined prior + decoder) pipeline with tiny random parts.

    The decoder UNet (2 levels, ``image_proj``/``image`` conditioning, 8 output channels as the real
    one's learned variance) takes 32-d CLIP image embeddings; the prior is a 1-layer ``PriorTransformer``
    on a 2-layer CLIP text encoder; the CLIP vision encoder sees 32 px; the MoVQ has factor 2.

    Returns
    -------
    diffusers.KandinskyV22CombinedPipeline
    """
    from diffusers import (
        DDPMScheduler,
        KandinskyV22CombinedPipeline,
        PriorTransformer,
        UnCLIPScheduler,
        UNet2DConditionModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    dim = 32
    tokenizer = tiny_clip_tokenizer()
    torch.manual_seed(seed)
    text_config = CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=dim, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tokenizer), projection_dim=dim,
    )  # fmt: skip
    text_encoder = CLIPTextModelWithProjection(text_config).eval()
    torch.manual_seed(seed)
    vision_config = CLIPVisionConfig(
        hidden_size=dim, image_size=32, patch_size=8, projection_dim=dim, intermediate_size=37,
        num_attention_heads=4, num_channels=3, num_hidden_layers=2,
    )  # fmt: skip
    image_encoder = CLIPVisionModelWithProjection(vision_config).eval()
    processor = CLIPImageProcessorPil(
        crop_size={"height": 32, "width": 32}, size={"shortest_edge": 32}, do_center_crop=True, do_normalize=True,
        do_resize=True, image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
    )  # fmt: skip
    torch.manual_seed(seed)
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=8, embedding_dim=dim, num_layers=1)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        in_channels=4, out_channels=8, addition_embed_type="image", block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", encoder_hid_dim=dim, encoder_hid_dim_type="image_proj",
        cross_attention_dim=dim, attention_head_dim=4, resnet_time_scale_shift="scale_shift", norm_num_groups=4,
        sample_size=16,
    )  # fmt: skip
    movq = _tiny_movq(seed)
    pipe = KandinskyV22CombinedPipeline(
        unet=unet,
        scheduler=DDPMScheduler(
            beta_schedule="linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, steps_offset=1
        ),
        movq=movq,
        prior_prior=prior,
        prior_image_encoder=image_encoder,
        prior_text_encoder=text_encoder,
        prior_tokenizer=tokenizer,
        prior_scheduler=UnCLIPScheduler(
            variance_type="fixed_small_log", prediction_type="sample", clip_sample=True, clip_sample_range=10.0
        ),
        prior_image_processor=processor,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_kandinsky3_pipeline(seed: int = 0):
    """A Kandinsky 3 pipeline: a 2-level ``Kandinsky3UNet``, a 2-layer T5 encoder, a factor-2 MoVQ.

    Returns
    -------
    diffusers.Kandinsky3Pipeline
    """
    from diffusers import DDPMScheduler, Kandinsky3Pipeline, Kandinsky3UNet
    from transformers import T5Config, T5EncoderModel

    tokenizer = tiny_t5_tokenizer(model_max_length=128)
    torch.manual_seed(seed)
    t5_config = T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, dropout_rate=0.0, feed_forward_proj="gated-gelu", pad_token_id=0,
        eos_token_id=1, decoder_start_token_id=0,
    )  # fmt: skip
    text_encoder = T5EncoderModel(t5_config).eval()
    torch.manual_seed(seed)
    unet = Kandinsky3UNet(
        in_channels=4, time_embedding_dim=4, groups=2, attention_head_dim=4, layers_per_block=3,
        block_out_channels=(32, 64), cross_attention_dim=4, encoder_hid_dim=32,
    )  # fmt: skip
    movq = _tiny_movq(seed)
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=False, thresholding=False, steps_offset=1)
    pipe = Kandinsky3Pipeline(tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, scheduler=scheduler, movq=movq)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextmanager
def single_torch_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block (tiny models on a shared CPU: threads only
    contend, and spin-waiting under load made them 20x slower in our measurements)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tiny_pipeline(family: TinyFamily, seed: int = 0):
    """The tiny pipeline of ``family`` (``sd``, ``flux``, ``kandinsky22`` or ``kandinsky3``)."""
    if family == "sd":
        return tiny_sd_pipeline(seed=seed)
    if family == "flux":
        return tiny_flux_pipeline(seed=seed)
    if family == "kandinsky22":
        return tiny_kandinsky22_pipeline(seed=seed)
    if family == "kandinsky3":
        return tiny_kandinsky3_pipeline(seed=seed)
    raise InputError(f"unknown tiny pipeline family {family!r}; expected sd, flux, kandinsky22 or kandinsky3")


def save_tiny_pipeline(family: TinyFamily, folder: Path, seed: int = 0) -> Path:
    """Build the tiny ``family`` pipeline and ``save_pretrained`` it into ``folder``; return ``folder``."""
    folder = Path(folder)
    tiny_pipeline(family, seed=seed).save_pretrained(folder)
    return folder


def _lora_targets(family: TinyFamily) -> Sequence[str]:
    if family == "sd":
        return ("to_q", "to_k", "to_v", "to_out.0")
    return ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj")


def make_random_lora(pipe, folder: Path, rank: int = 4, seed: int = 0, std: float = 0.5) -> Path:
    """Attach a random LoRA (peft) to the denoiser of ``pipe``, save it with ``save_lora_weights``.

    The adapter's ``B`` matrices are drawn with standard deviation ``std`` (peft initialises them to
    zero, which would make the adapter a no-op), so loading it visibly changes the output. The adapter
    is built on a copy of the denoiser: ``pipe`` itself is left untouched.

    Parameters
    ----------
    pipe
        A tiny SD or FLUX pipeline from this module.
    folder
        Where ``pytorch_lora_weights.safetensors`` is written.
    rank, seed, std
        LoRA rank, seed of the random weights, and spread of the ``B`` matrices.

    Returns
    -------
    Path
        ``folder``.
    """
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    family: TinyFamily = "flux" if hasattr(pipe, "transformer") and pipe.transformer is not None else "sd"
    denoiser = copy.deepcopy(pipe.transformer if family == "flux" else pipe.unet)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(_lora_targets(family)), init_lora_weights=True)
    adapter = "medsynth_random_lora"
    denoiser.add_adapter(config, adapter_name=adapter)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in denoiser.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    state = get_peft_model_state_dict(denoiser, adapter_name=adapter)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = "transformer_lora_layers" if family == "flux" else "unet_lora_layers"
    type(pipe).save_lora_weights(folder, **{key: state})
    return folder
