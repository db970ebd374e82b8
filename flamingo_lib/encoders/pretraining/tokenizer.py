"""A byte-level BPE tokenizer trained on report text, saved as a Hugging Face tokenizer.

Ids 0-3 are ``<s>``, ``<pad>``, ``</s>``, ``<unk>`` as in BioGPT's vocabulary; 4 and 5 are the
Flamingo tokens ``<image>`` and ``<EOC>``, already special added tokens, so that
:func:`flamingo_lib.modeling.backbones.language.flamingo_tokenizer` adding them again is a no-op and the ids do not
depend on who adds them. Byte-level: any text encodes (no ``<unk>`` ever), and a prefix space
is added so a report's first word is the same token whether it opens a text or follows a prompt.
"""

from __future__ import annotations

from collections.abc import Iterable

from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS: tuple[str, ...] = ("<s>", "<pad>", "</s>", "<unk>", "<image>", "<EOC>")


def train_bpe_tokenizer(
    documents: Iterable[str], vocab_size: int, model_max_length: int, min_frequency: int = 2,
    append_eos: bool = False,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``documents``.

    Args:
        documents: the training text (train split only: the caller's responsibility, see
            :func:`flamingo_lib.encoders.pretraining.corpus.lm_documents`).
        vocab_size: the largest vocabulary, special tokens and the 256 bytes included.
        model_max_length: the longest sequence the model takes (stored in the tokenizer).
        min_frequency: a merge needs a pair seen this often.
        append_eos: end every encoding with ``</s>`` too (a CLIP text tower pools there); the LM's
            tokenizer only prepends ``<s>``, so a prompt does not end in ``</s>``.

    Raises:
        ValueError: ``vocab_size`` cannot hold the special tokens and the byte alphabet.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(SPECIAL_TOKENS) + len(alphabet):
        raise ValueError(f"vocab_size={vocab_size} cannot hold {len(SPECIAL_TOKENS)} special tokens and "
                         f"{len(alphabet)} bytes")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False, initial_alphabet=alphabet,
        # normalized=False: "<image>" must match verbatim, as flamingo_tokenizer adds it.
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
    )
    tokenizer.train_from_iterator(documents, trainer)
    return wrap_tokenizer(tokenizer, model_max_length, append_eos)


def wrap_tokenizer(tokenizer: object, model_max_length: int, append_eos: bool) -> PreTrainedTokenizerFast:
    """A ``tokenizers.Tokenizer`` (trained as above) -> ``PreTrainedTokenizerFast`` that prepends
    ``<s>`` (and appends ``</s>`` with ``append_eos``)."""
    import copy

    from tokenizers import processors

    tokenizer = copy.deepcopy(tokenizer)
    single = "<s> $A </s>" if append_eos else "<s> $A"
    tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=single + " $B", special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        model_max_length=model_max_length,
    )
