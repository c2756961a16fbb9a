"""Checks on isomer items: answer recomputation, held-out word leaks, summary counts."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Iterable, Sequence

from iga_theory.llm.isomers_lexicons import FUNCTION_WORDS, HELDOUT_DOMAINS, heldout_content_words, words_of
from iga_theory.llm.isomers_schema import SPLITS, IsomerItem
from iga_theory.llm.isomers_skeletons import SKELETONS, TEMPLATE_WORDS, get_skeleton

OOD_SPLIT = "test_ood"


def recompute_answer(skeleton_id: str, variables: dict) -> str:
    """Recompute the canonical answer of a logical form with its skeleton's solver.

    Raises
    ------
    ValueError
        When the skeleton is unknown, or the logical form is malformed or inconsistent
        (the message names the variable).
    """
    return get_skeleton(skeleton_id).solve(variables)


def verify_item(item: IsomerItem) -> bool:
    """Return whether ``item.answer`` equals the answer recomputed from ``item.variables``.

    Raises ValueError when the skeleton is unknown to this library (a user's own
    skeleton cannot be checked) or the logical form is malformed.
    """
    if not isinstance(item, IsomerItem):
        raise TypeError(f"item must be an IsomerItem; got {type(item).__name__}")
    return recompute_answer(item.skeleton_id, item.variables) == item.answer


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of `verify_items`.

    Attributes
    ----------
    verified : int
        Items whose stored answer equals the recomputed one.
    unknown_skeleton : int
        Items of skeletons this library does not define; they are not checked.
    problems : list of (int, str, str)
        ``(index, field, message)`` for each wrong answer or malformed logical form,
        ``index`` being the item's position in the input.
    """

    verified: int
    unknown_skeleton: int
    problems: list[tuple[int, str, str]]


def verify_items(items: Sequence[IsomerItem]) -> VerifyReport:
    """Recompute every answer; collect wrong answers and malformed logical forms."""
    verified = unknown = 0
    problems: list[tuple[int, str, str]] = []
    cache: dict[tuple[str, str], str | ValueError] = {}  # one solve per set, not per item
    for index, item in enumerate(items):
        if item.skeleton_id not in SKELETONS:
            unknown += 1
            continue
        key = (item.set_id, repr(item.variables))
        if key not in cache:
            try:
                cache[key] = recompute_answer(item.skeleton_id, item.variables)
            except ValueError as error:
                cache[key] = error
        result = cache[key]
        if isinstance(result, ValueError):
            problems.append((index, "variables", f"invalid logical form for {item.skeleton_id}: {result}"))
        elif result != item.answer:
            problems.append((index, "answer", f"stored answer {item.answer!r} differs from "
                                              f"{result!r}, recomputed from the variables"))
        else:
            verified += 1
    return VerifyReport(verified, unknown, problems)


@dataclass(frozen=True)
class Leak:
    """A held-out lexicon word found in an item outside the OOD split."""

    index: int
    set_id: str
    split: str
    field: str
    word: str
    heldout_domain: str


def find_lexicon_leaks(items: Sequence[IsomerItem],
                       heldout_domains: Sequence[str] = HELDOUT_DOMAINS) -> list[Leak]:
    """Find content words of the held-out lexicons in items outside ``test_ood``.

    The train, validation and in-domain test splits are all rendered in training
    domains, so a held-out word in any of them means a model could have seen the OOD
    surface. Words are matched whole and case-insensitively; function words are
    exempt.

    Returns
    -------
    list of Leak
        One entry per (item, field, word); empty when nothing leaks.
    """
    owner = heldout_content_words(tuple(heldout_domains))
    leaks: list[Leak] = []
    for index, item in enumerate(items):
        if item.split == OOD_SPLIT:
            continue
        for field in ("question", "rationale"):
            for word in sorted(set(words_of(getattr(item, field))) & owner.keys()):
                leaks.append(Leak(index, item.set_id, item.split, field, word, owner[word]))
    return leaks


def shared_surface_words(items: Iterable[IsomerItem],
                         ignore: frozenset[str] = FUNCTION_WORDS | TEMPLATE_WORDS) -> set[str]:
    """Return the words that occur both outside and inside the OOD split.

    Words in ``ignore`` (by default function words and the skeleton templates' words,
    which every domain shares by design) are left out, as are numerals. The result is
    empty for generated sets. For a user's own sets it lists the surface words that
    their OOD split shares with the training splits.
    """
    inside: set[str] = set()
    outside: set[str] = set()
    for item in items:
        target = inside if item.split == OOD_SPLIT else outside
        target.update(words_of(item.question))
        target.update(words_of(item.rationale))
    return (inside & outside) - set(ignore)


def _answer_order(answer: str) -> tuple:
    """Sort key that puts numbers first, in numeric order, then text answers."""
    try:
        return (0, Decimal(answer), "")
    except InvalidOperation:
        return (1, Decimal(0), answer)


def isomer_stats(items: Sequence[IsomerItem]) -> dict:
    """Summarise items: counts per skeleton, domain, split and answer, lengths, vocabulary.

    Returns
    -------
    dict
        ``n_items``, ``n_sets``; ``items_per_skeleton``, ``items_per_domain``,
        ``items_per_split``, ``items_per_answer`` and ``sets_per_split`` (name ->
        count); ``answers_per_split`` (split -> answer -> set count);
        ``max_question_words``, ``mean_question_words``, ``max_rationale_words``,
        ``mean_rationale_words`` (whitespace-separated words); ``vocabulary_size``
        (distinct lowercase words and numerals, punctuation stripped).
    """
    sets: dict[str, IsomerItem] = {}
    vocabulary: set[str] = set()
    question_words, rationale_words = [], []
    for item in items:
        sets.setdefault(item.set_id, item)
        question_words.append(len(item.question.split()))
        rationale_words.append(len(item.rationale.split()))
        for text in (item.question, item.rationale):
            vocabulary.update(token.strip(".,:;?!").lower() for token in text.split())
    answers_per_split: dict[str, Counter] = {split: Counter() for split in SPLITS}
    for item in sets.values():
        answers_per_split[item.split][item.answer] += 1
    count = len(question_words)
    return {
        "n_items": count,
        "n_sets": len(sets),
        "items_per_skeleton": dict(sorted(Counter(item.skeleton_id for item in items).items())),
        "items_per_domain": dict(sorted(Counter(item.domain for item in items).items())),
        "items_per_split": {split: sum(item.split == split for item in items) for split in SPLITS},
        "items_per_answer": dict(sorted(Counter(item.answer for item in items).items(),
                                         key=lambda entry: _answer_order(entry[0]))),
        "sets_per_split": {split: sum(answers_per_split[split].values()) for split in SPLITS},
        "answers_per_split": {
            split: dict(sorted(answers_per_split[split].items(), key=lambda entry: _answer_order(entry[0])))
            for split in SPLITS
        },
        "max_question_words": max(question_words, default=0),
        "mean_question_words": sum(question_words) / count if count else 0.0,
        "max_rationale_words": max(rationale_words, default=0),
        "mean_rationale_words": sum(rationale_words) / count if count else 0.0,
        "vocabulary_size": len(vocabulary - {""}),
    }
