"""A byte-level BPE tokenizer trained locally with the ``tokenizers`` library.

The tokenizer of the built student (``model.name_or_path = null``). Pre-tokenisation
splits every digit into its own token before the GPT-2 byte-level split, so numbers
are spelled digit by digit (the arithmetic of the quantitative skeletons is then a
per-digit pattern, not a lookup of whole numbers). Byte-level BPE has no unknown
token: any text encodes, and decoding gives the text back exactly.

Special tokens: ``<pad>`` (id 0) and ``<eos>`` (id 1), which also serves as the
beginning-of-sequence token of the built model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

from iga_theory.errors import check_positive_int

logger = logging.getLogger(__name__)

PAD_TOKEN = "<pad>"
EOS_TOKEN = "<eos>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, EOS_TOKEN)
# The byte alphabet (256 symbols) and the special tokens must fit under the vocabulary size.
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it for transformers.

    Parameters
    ----------
    texts : iterable of str
        Training corpus; at least one non-empty text.
    vocab_size : int
        Target vocabulary size, special tokens included, at least `MIN_VOCAB_SIZE`.
        The result can be smaller when the corpus has fewer distinct merges.

    Returns
    -------
    transformers.PreTrainedTokenizerFast
        With ``pad_token = "<pad>"`` (id 0) and ``eos_token = bos_token = "<eos>"`` (id 1).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    vocab_size = check_positive_int("vocab_size", vocab_size)
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size must be at least {MIN_VOCAB_SIZE} (256 bytes and {len(SPECIAL_TOKENS)} special "
            f"tokens); got {vocab_size}")
    corpus = [text for text in texts if text]
    if not corpus:
        raise ValueError("texts is empty; pass at least one non-empty training text")

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=PAD_TOKEN,
                                      eos_token=EOS_TOKEN, bos_token=EOS_TOKEN)
    logger.info("trained a byte-level BPE tokenizer with %d tokens on %d texts", len(wrapped), len(corpus))
    return wrapped


def load_tokenizer(name_or_path: str | Path):
    """Load a tokenizer with ``AutoTokenizer.from_pretrained`` and give it a padding token.

    A tokenizer without a padding token (most base models) pads with its end-of-sequence
    token; padding positions are masked everywhere, so the choice does not change any loss.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    if tokenizer.eos_token_id is None:
        raise ValueError(
            f"tokenizer {str(name_or_path)!r} has no end-of-sequence token; the rationale targets end with "
            "it, so choose a tokenizer that defines eos_token")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
