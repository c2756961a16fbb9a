"""Tokenised distillation data: prompt, rationale and answer, with domain ids on every token.

One isomer item becomes one training sequence

    ``<prompt tokens> <rationale tokens, ending in "Answer: X"> <eos>``

with the prompt ``"Question: {question}\\nReasoning:"`` and the target
``" {rationale}"`` (the rationale of an isomer item ends with its answer line).
The labels copy the input ids on the target and the end-of-sequence token and are
``-100`` (ignored by the loss) on the prompt, so the loss covers the rationale, the
answer and the stop decision, never the question. The same prompt starts greedy
decoding at evaluation time.

Every position of a sequence carries the index of its item's domain in the list of
training domains (``-1`` on padding): the IGA hooks attribute each row of a layer's
gradient to that id, and the baselines read per-domain losses from it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch

from iga_theory.llm.isomers_lexicons import ALL_DOMAINS
from iga_theory.llm.isomers_schema import IsomerItem

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
PAD_DOMAIN = -1
PROMPT_TEMPLATE = "Question: {question}\nReasoning:"


def format_prompt(question: str) -> str:
    """The prompt of one item (also used for greedy decoding)."""
    return PROMPT_TEMPLATE.format(question=question)


def format_target(rationale: str) -> str:
    """The supervised continuation of the prompt: a space, then the rationale with its answer line."""
    return " " + rationale


@dataclass(frozen=True)
class EncodedExample:
    """One tokenised training sequence.

    Attributes
    ----------
    input_ids : tuple of int, length n
        Prompt, target and end-of-sequence token ids.
    prompt_length : int
        Number of prompt tokens (their labels are ignored).
    domain : int
        Index of the item's domain in the list of training domains.
    item_index : int
        Position of the item in the list it was encoded from.
    """

    input_ids: tuple[int, ...]
    prompt_length: int
    domain: int
    item_index: int

    @property
    def labels(self) -> tuple[int, ...]:
        """``-100`` on the prompt, the token ids on the target and the end-of-sequence token."""
        return (IGNORE_INDEX,) * self.prompt_length + self.input_ids[self.prompt_length:]


def encode_prompt(tokenizer, question: str) -> list[int]:
    """Token ids of the prompt of ``question``, as training and greedy decoding both use them.

    Encoded without special tokens; a tokenizer that adds a beginning-of-sequence token
    (``add_bos_token``) gets it in front.
    """
    ids = list(tokenizer(format_prompt(question), add_special_tokens=False)["input_ids"])
    if getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id] + ids
    return ids


def encode_item(tokenizer, item: IsomerItem, domain: int, item_index: int = 0) -> EncodedExample:
    """Tokenise one item: prompt and target separately (so the boundary is exact), then ``eos``."""
    prompt = encode_prompt(tokenizer, item.question)
    target = list(tokenizer(format_target(item.rationale), add_special_tokens=False)["input_ids"])
    return EncodedExample(tuple(prompt + target + [tokenizer.eos_token_id]), len(prompt), domain, item_index)


def domain_order(domains) -> list[str]:
    """Sort domain names: the library's domains in their canonical order, then others alphabetically."""
    known = [d for d in ALL_DOMAINS if d in domains]
    return known + sorted(set(domains) - set(known))


@dataclass
class DistillData:
    """Items split for distillation, with the training items tokenised by isomer set.

    Attributes
    ----------
    train_domains : list of str
        Domains of the ``train`` split; ids index into this list.
    heldout_domains : list of str
        Domains of the ``test_ood`` split.
    train_sets : list of list of EncodedExample
        One entry per training isomer set: its K renderings, in the order of
        ``train_domains``. Only sets with a rendering of at most ``max_length`` tokens
        in every training domain are kept, so every step sees the same problems in
        all K domains.
    test_id, test_ood : list of IsomerItem
        Evaluation items, in-domain and on held-out domains.
    dropped : int
        Training sets left out: a member longer than ``max_length`` or missing.
    """

    train_domains: list[str]
    heldout_domains: list[str]
    train_sets: list[list[EncodedExample]]
    test_id: list[IsomerItem]
    test_ood: list[IsomerItem]
    dropped: int = 0


def prepare_data(items: Sequence[IsomerItem], tokenizer, max_length: int,
                 max_eval_sets: int | None = None) -> DistillData:
    """Split items, tokenise the training split by isomer set and cap the test splits.

    Parameters
    ----------
    items : sequence of IsomerItem
        Must contain ``train`` items of at least 2 domains and ``test_id`` or
        ``test_ood`` items.
    tokenizer : transformers tokenizer
    max_length : int
        A training set with a rendering longer than this many tokens is left out
        (counted and logged).
    max_eval_sets : int, optional
        Keep the first ``max_eval_sets`` isomer sets (in file order) of each test split.

    Raises
    ------
    ValueError
        Fewer than 2 training domains, no complete training set, or no test items.
    """
    train_items = [item for item in items if item.split == "train"]
    train_domains = domain_order({item.domain for item in train_items})
    if len(train_domains) < 2:
        raise ValueError(
            f"the train split has {len(train_domains)} domain(s) {train_domains}; distillation with a "
            "cross-domain method needs at least 2 (generate sets with more training domains)")
    index_of = {domain: e for e, domain in enumerate(train_domains)}

    members: dict[str, dict[int, EncodedExample]] = {}
    for position, item in enumerate(train_items):
        members.setdefault(item.set_id, {})[index_of[item.domain]] = encode_item(
            tokenizer, item, index_of[item.domain], position)
    train_sets, dropped = [], 0
    for set_id, by_domain in members.items():
        renderings = [by_domain.get(e) for e in range(len(train_domains))]
        if any(x is None or len(x.input_ids) > max_length for x in renderings):
            dropped += 1
            continue
        train_sets.append(renderings)
    if dropped:
        # NOTE: a teacher file that rejected many rationales loses whole sets here; the
        # per-domain statistics need every domain in every step, which complete sets give.
        logger.warning("left out %d of %d training sets: a rendering is missing or longer than %d tokens "
                       "(data.max_length)", dropped, len(members), max_length)
    if not train_sets:
        raise ValueError(f"no training set has all {len(train_domains)} renderings within {max_length} tokens; "
                         "raise data.max_length or supply complete isomer sets")

    test_id = _first_sets([item for item in items if item.split == "test_id"], max_eval_sets)
    test_ood = _first_sets([item for item in items if item.split == "test_ood"], max_eval_sets)
    if not test_id and not test_ood:
        raise ValueError("the items have no test_id or test_ood split to evaluate on")
    heldout_domains = domain_order({item.domain for item in test_ood})
    logger.info("distillation data: %d training sets in %d domains, %d in-domain and %d held-out test items",
                len(train_sets), len(train_domains), len(test_id), len(test_ood))
    return DistillData(train_domains, heldout_domains, train_sets, test_id, test_ood, dropped)


def _first_sets(items: list[IsomerItem], max_sets: int | None) -> list[IsomerItem]:
    """Items of the first ``max_sets`` set ids, in order of first appearance (all when None)."""
    if max_sets is None:
        return items
    chosen: list[str] = []
    for item in items:
        if item.set_id not in chosen:
            if len(chosen) == max_sets:
                continue
            chosen.append(item.set_id)
    keep = set(chosen)
    return [item for item in items if item.set_id in keep]


def collate(examples: Sequence[EncodedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad examples into one batch.

    Returns
    -------
    dict with, each of shape ``(batch, max_len)``:
        ``input_ids`` (long; ``pad_id`` on padding), ``attention_mask`` (long; 0 on
        padding), ``labels`` (long; -100 on prompt and padding), ``domain_ids`` (long;
        the domain on every real token, -1 on padding).
    """
    if not examples:
        raise ValueError("cannot collate an empty batch")
    width = max(len(example.input_ids) for example in examples)
    batch = len(examples)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
    domain_ids = torch.full((batch, width), PAD_DOMAIN, dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        attention_mask[row, :n] = 1
        labels[row, :n] = torch.tensor(example.labels)
        domain_ids[row, :n] = example.domain
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "domain_ids": domain_ids}
