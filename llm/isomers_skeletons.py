"""Registry of the logical skeletons and the vocabulary their templates write.

Eleven skeletons in three families:

- deductive: ``modus_ponens_chain`` (2-4 steps), ``modus_tollens`` (1-2 steps),
  ``syllogism_negation`` (2-3 quantified premises, one of them negative);
- relational: ``transitivity_chain`` (compare two of 3-5 ordered entities),
  ``ordering_rank`` (count the entities above one);
- quantitative: ``rate_total``, ``rate_inverse``, ``proportional_split``,
  ``percent_of``, ``percent_change``, ``base_rate`` (conditional probability from a
  base rate).

Each is defined in `isomers_logic` or `isomers_quant`; see `isomers_base.Skeleton` for
the contract.
"""

from __future__ import annotations

from iga_theory.llm.isomers_base import Skeleton
from iga_theory.llm.isomers_logic import LOGIC_SKELETONS
from iga_theory.llm.isomers_quant import QUANT_SKELETONS

SKELETONS: dict[str, Skeleton] = {skeleton.skeleton_id: skeleton
                                  for skeleton in LOGIC_SKELETONS + QUANT_SKELETONS}
SKELETON_IDS: tuple[str, ...] = tuple(SKELETONS)

# Every word that a skeleton template writes itself, in every domain: the shared,
# invariant part of an isomer set. No lexicon may use one of them as a content word,
# and the tests check that generated text holds no other words than these, function
# words, numerals and the words of the item's own lexicon.
TEMPLATE_WORDS: frozenset[str] = frozenset(
    "answer yes then so if were would be every no is not this how many of them are "
    "before top none count first total per for in that has and needed after does it "
    "have split between ratio go parts one part percent rise fall rises falls by now "
    "others test flags flagged what share".split()
)


def get_skeleton(skeleton_id: str) -> Skeleton:
    """Return the skeleton registered as ``skeleton_id``; raise ValueError naming the known ids."""
    if not isinstance(skeleton_id, str):
        raise TypeError(f"skeleton_id must be a string; got {type(skeleton_id).__name__}")
    try:
        return SKELETONS[skeleton_id]
    except KeyError:
        raise ValueError(
            f"unknown skeleton_id {skeleton_id!r}; known skeletons: {', '.join(SKELETON_IDS)}"
        ) from None
