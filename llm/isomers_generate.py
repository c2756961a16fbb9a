"""Seeded generation of Logical Isomer Sets and their split into train and test parts.

One isomer set is one logical form, drawn by a skeleton and rendered in every
selected domain of its split's group. Sets in ``train``, ``validation`` and
``test_id`` are rendered in the selected training domains, and sets in ``test_ood``
in the selected held-out domains. A set therefore never straddles splits, and no
held-out lexicon word reaches a non-OOD split.

Balance: skeletons take turns, so their set counts differ by at most one. A yes/no
skeleton's sets come in pairs with one ``yes`` and one ``no`` each, and a pair is
assigned to a split as a unit, so yes and no are equally frequent in every split and
skeleton (up to one unpaired set). Splits are assigned by largest deficit along a list
of pairs shuffled within each skeleton, which keeps each skeleton's share of every
split close to the split's fraction.
"""

from __future__ import annotations

import copy
import logging
import numbers
from typing import Mapping, Sequence

from tqdm.auto import tqdm

from iga_theory.errors import check_positive_int
from iga_theory.llm.isomers_base import NO, YES, Draws
from iga_theory.llm.isomers_lexicons import ALL_DOMAINS, HELDOUT_DOMAINS, get_lexicon
from iga_theory.llm.isomers_schema import SPLITS, IsomerItem
from iga_theory.llm.isomers_skeletons import SKELETON_IDS, get_skeleton

logger = logging.getLogger(__name__)

DEFAULT_SPLIT_FRACTIONS: dict[str, float] = {
    "train": 0.7, "validation": 0.1, "test_id": 0.1, "test_ood": 0.1,
}
# A generous cap; a million sets already take minutes and several GB of text.
MAX_SETS = 10**6


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    return int(seed)


def _check_domains(domains: Sequence[str]) -> tuple[str, ...]:
    if isinstance(domains, str):
        raise TypeError(f"domains must be a sequence of domain names, not the string {domains!r}")
    domains = list(domains)
    if not domains:
        raise ValueError(f"domains is empty; choose from {', '.join(ALL_DOMAINS)}")
    for domain in domains:
        get_lexicon(domain)  # raises on an unknown domain
    duplicates = sorted({d for d in domains if domains.count(d) > 1})
    if duplicates:
        raise ValueError(f"domains lists {', '.join(duplicates)} more than once")
    return tuple(d for d in ALL_DOMAINS if d in domains)  # canonical order, for stable files


def _check_skeletons(skeletons: Sequence[str] | None) -> tuple[str, ...]:
    if skeletons is None:
        return SKELETON_IDS
    if isinstance(skeletons, str):
        raise TypeError(f"skeletons must be a sequence of skeleton ids, not the string {skeletons!r}")
    chosen = list(skeletons)
    if not chosen:
        raise ValueError(f"skeletons is empty; choose from {', '.join(SKELETON_IDS)}")
    for skeleton_id in chosen:
        get_skeleton(skeleton_id)
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"skeletons lists an id more than once: {chosen}")
    return tuple(chosen)


def resolve_split_fractions(split_fractions: Mapping[str, float] | None,
                            domains: Sequence[str]) -> dict[str, float]:
    """Validate split fractions and renormalise them over the splits that have domains.

    ``test_ood`` needs a held-out domain among ``domains``, and the other splits need
    a training domain. A split without one gets fraction 0, and the rest are rescaled
    to sum to 1. Fractions are relative weights, so they need not sum to 1 on input.
    """
    fractions = dict(DEFAULT_SPLIT_FRACTIONS if split_fractions is None else split_fractions)
    unknown = sorted(set(fractions) - set(SPLITS))
    if unknown:
        raise ValueError(f"split_fractions has unknown split(s) {unknown}; known splits: {', '.join(SPLITS)}")
    for split in SPLITS:
        value = fractions.setdefault(split, 0.0)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < float("inf"):
            raise ValueError(f"split_fractions[{split!r}] must be a finite number >= 0; got {value!r}")
    has_heldout = any(d in HELDOUT_DOMAINS for d in domains)
    has_training = any(d not in HELDOUT_DOMAINS for d in domains)
    for split in SPLITS:
        available = has_heldout if split == "test_ood" else has_training
        if not available and fractions[split] > 0:
            logger.info("split %s gets no sets: no selected domain can render it", split)
            fractions[split] = 0.0
    total = sum(fractions.values())
    if total <= 0:
        raise ValueError(
            f"no split can receive sets: split_fractions {split_fractions} with domains "
            f"{list(domains)}; give test_ood a weight with a held-out domain, or another "
            "split with a training domain"
        )
    return {split: float(fractions[split]) / total for split in SPLITS}


def assign_splits(units: list[list[int]], fractions: Mapping[str, float]) -> dict[int, str]:
    """Assign each unit (a list of set indices) to a split by largest deficit.

    Walking the units in order, each goes to the split whose target count
    ``fraction * (sets so far + unit size)`` exceeds its current count the most. Ties
    go to the earlier split in `SPLITS`.
    """
    counts = dict.fromkeys(SPLITS, 0)
    assigned: dict[int, str] = {}
    placed = 0
    for unit in units:
        placed += len(unit)
        split = max(SPLITS, key=lambda s: (fractions[s] * placed - counts[s], -SPLITS.index(s)))
        counts[split] += len(unit)
        for index in unit:
            assigned[index] = split
    return assigned


def _draw_form(skeleton_id: str, seed: int, set_index: int, ordinal: int) -> dict:
    """Draw set ``set_index``'s logical form, the ``ordinal``-th set of its skeleton."""
    skeleton = get_skeleton(skeleton_id)
    target = None
    if skeleton.answer_kind == "yes_no":
        # Sets 2k and 2k+1 of a skeleton form pair k: one yes, one no, in a drawn order.
        yes_first = Draws(f"iga-isomers-pair:{seed}:{skeleton_id}:{ordinal // 2}").coin()
        target = YES if (ordinal % 2 == 0) == yes_first else NO
    variables = skeleton.draw(Draws(f"iga-isomers-set:{seed}:{set_index}"), target)
    answer = skeleton.solve(variables)
    if target is not None and answer != target:  # pragma: no cover - a draw bug
        raise RuntimeError(f"{skeleton_id} drew a logical form with answer {answer!r}, but the "
                           f"requested answer was {target!r}: {variables}")
    return variables


def generate_items(n_sets: int, seed: int = 0, domains: Sequence[str] = ALL_DOMAINS, *,
                   split_fractions: Mapping[str, float] | None = None,
                   skeletons: Sequence[str] | None = None,
                   progress: bool = False) -> list[IsomerItem]:
    """Generate ``n_sets`` Logical Isomer Sets as a flat list of items.

    The result depends only on the arguments: the same arguments give the same items,
    and `write_jsonl` of them the same bytes, on every platform and Python version.

    Parameters
    ----------
    n_sets : int
        Number of isomer sets, in ``1..MAX_SETS``. Each set yields one item per domain
        of its split's group (see the module docstring).
    seed : int
        Non-negative seed.
    domains : sequence of str
        Domains to render, from `ALL_DOMAINS`; output follows the order of
        `ALL_DOMAINS` whatever the order given.
    split_fractions : mapping, optional
        Relative weight of each split (default `DEFAULT_SPLIT_FRACTIONS`); see
        `resolve_split_fractions`.
    skeletons : sequence of str, optional
        Skeleton ids to use (default all, `SKELETON_IDS`), taking turns in this order.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    list of IsomerItem
        Ordered by set and, within a set, by domain.
    """
    n_sets = check_positive_int("n_sets", n_sets, upper=MAX_SETS)
    seed = _check_seed(seed)
    domains = _check_domains(domains)
    skeleton_ids = _check_skeletons(skeletons)
    fractions = resolve_split_fractions(split_fractions, domains)

    # Logical forms: skeletons take turns; yes/no answers alternate within pairs.
    forms: list[tuple[str, dict]] = []
    units: dict[str, list[list[int]]] = {skeleton_id: [] for skeleton_id in skeleton_ids}
    for set_index in range(n_sets):
        skeleton_id = skeleton_ids[set_index % len(skeleton_ids)]
        ordinal = set_index // len(skeleton_ids)
        forms.append((skeleton_id, _draw_form(skeleton_id, seed, set_index, ordinal)))
        if ordinal % 2 == 0:
            units[skeleton_id].append([set_index])
        else:
            units[skeleton_id][-1].append(set_index)

    # Splits: pairs shuffled within each skeleton, skeletons one after another.
    split_draws = Draws(f"iga-isomers-splits:{seed}")
    ordered_units = [unit for skeleton_id in skeleton_ids for unit in split_draws.shuffled(units[skeleton_id])]
    split_of = assign_splits(ordered_units, fractions)

    # Rendering: one item per domain of the set's split group.
    groups = {
        split: tuple(d for d in domains if (d in HELDOUT_DOMAINS) == (split == "test_ood"))
        for split in SPLITS
    }
    items: list[IsomerItem] = []
    width = max(6, len(str(n_sets - 1)))
    for set_index in tqdm(range(n_sets), desc="isomer sets", unit="set", disable=not progress):
        skeleton_id, variables = forms[set_index]
        skeleton = get_skeleton(skeleton_id)
        split = split_of[set_index]
        answer = skeleton.solve(variables)
        for domain in groups[split]:
            question, rationale = skeleton.render(variables, get_lexicon(domain))
            items.append(IsomerItem(
                set_id=f"set-{seed}-{set_index:0{width}d}", skeleton_id=skeleton_id, domain=domain,
                question=question, rationale=rationale, answer=answer,
                variables=copy.deepcopy(variables),
                split=split,
            ))
    logger.info("generated %d items in %d isomer sets (seed %d)", len(items), n_sets, seed)
    return items
