"""Frozen causal LMs and their tokenizers: hub ids, local directories, or the tiny random BioGPT."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import AddedToken
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from flamingo_lib.modeling.backbones.registry import resolve_name
from flamingo_lib.modeling.config import EMBEDDED_LM, EMBEDDED_SMOLLM2, TINY_RANDOM_LM, FlamingoConfig

SUPPORTED_FAMILIES = ("biogpt", "gpt2", "opt", "llama", "mistral", "qwen2", "qwen3", "smollm3")
ALLOWED_LM = (
    f"{TINY_RANDOM_LM!r}, {EMBEDDED_LM!r}[@scale=S,seed=N], {EMBEDDED_SMOLLM2!r}, or a hub id / local "
    f"directory of a causal LM of a supported family ({', '.join(SUPPORTED_FAMILIES)})"
)


def resolve_lm(lm: str) -> str:
    """``lm`` itself, or for an ``embedded-*`` sentinel the cached directory it names (pretrained
    or converted into ``$FLAMINGO_CACHE_DIR/encoders`` on first use)."""
    from flamingo_lib.modeling.backbones.sentinels import parse_sentinel

    sentinel = parse_sentinel(lm)
    if sentinel is None:
        return lm
    if sentinel.name not in (EMBEDDED_LM, EMBEDDED_SMOLLM2):
        raise ValueError(f"lm={lm!r} names a vision encoder, not a language model; allowed: {ALLOWED_LM}")
    return resolve_name(lm)


def build_tiny_tokenizer() -> PreTrainedTokenizerBase:
    """A byte-level tokenizer with no merges (every byte one token): needs no training data.

    Ids 0-3 are ``<s>``, ``<pad>``, ``</s>``, ``<unk>`` as in BioGPT's vocabulary.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(specials + alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def build_tiny_lm(vocab_size: int, seed: int) -> PreTrainedModel:
    """A 2-layer, 64-wide BioGPT-architecture causal LM, weights deterministic from ``seed``."""
    from transformers import BioGptConfig, BioGptForCausalLM

    config = BioGptConfig(
        vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=512, bos_token_id=0, pad_token_id=1, eos_token_id=2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BioGptForCausalLM(config).eval()


def load_tokenizer(lm: str) -> PreTrainedTokenizerBase:
    """The LM's own tokenizer (before the Flamingo tokens are added)."""
    if lm == TINY_RANDOM_LM:
        return build_tiny_tokenizer()
    source = resolve_lm(lm)
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot load the tokenizer of lm={lm!r} ({error}); allowed: {ALLOWED_LM}") from error


def load_language_model(lm: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """Load the frozen causal LM named by ``lm`` in eval mode, its weights in ``dtype``.

    ``dtype`` is explicit because transformers 5 otherwise loads a checkpoint in the dtype it was
    saved in (most Llama-family hub checkpoints: bfloat16), which the float32 layers added
    around the LM would then meet unannounced.

    Raises:
        ValueError: ``lm`` cannot be loaded or is not of a supported family.
    """
    if lm == TINY_RANDOM_LM:
        return build_tiny_lm(len(build_tiny_tokenizer()), seed).to(dtype)
    source = resolve_lm(lm)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except (OSError, ValueError) as error:
        hint = " (set HF_HUB_OFFLINE=0 or pre-download it)" if not Path(source).exists() else ""
        raise ValueError(f"cannot load lm={lm!r}{hint}: {error}; allowed: {ALLOWED_LM}") from error
    if model.config.model_type not in SUPPORTED_FAMILIES:
        raise ValueError(f"lm={lm!r} is a {model.config.model_type!r} model; allowed: {ALLOWED_LM}")
    return model.eval()


def flamingo_tokenizer(config: FlamingoConfig) -> PreTrainedTokenizerBase:
    """The LM's tokenizer plus the dedicated ``<image>`` and ``<EOC>`` tokens (and a pad token).

    A dedicated added token, never a character: flamingo-mini located images by the id of
    ``"<"``, so "nodule <5 mm" gained a phantom image (docs/prior-art.md, 2).
    """
    tokenizer = load_tokenizer(config.lm)
    tokenizer.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in (config.image_token, config.eoc_token)],
        special_tokens=True,
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked by attention_mask, not by id
    return tokenizer
