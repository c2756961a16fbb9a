"""Public interface of the Logical Isomer Sets, in one import.

Example
-------
>>> from iga_theory.llm.isomers_api import generate_items, parse_final_answer, verify_item
>>> items = generate_items(22, seed=0)
>>> all(verify_item(item) for item in items)
True
>>> parse_final_answer(items[0].rationale) == items[0].answer
True
"""

from iga_theory.llm.isomers_generate import DEFAULT_SPLIT_FRACTIONS, generate_items
from iga_theory.llm.isomers_lexicons import (
    ALL_DOMAINS, FUNCTION_WORDS, HELDOUT_DOMAINS, LEXICONS, TRAINING_DOMAINS, Lexicon, get_lexicon,
)
from iga_theory.llm.isomers_schema import (
    ANSWER_MARKER, SPLITS, IsomerFormatError, IsomerItem, load_jsonl, load_numbered_jsonl,
    normalize_answer, parse_final_answer, write_jsonl,
)
from iga_theory.llm.isomers_skeletons import SKELETON_IDS, SKELETONS, TEMPLATE_WORDS, get_skeleton
from iga_theory.llm.isomers_verify import (
    Leak, VerifyReport, find_lexicon_leaks, isomer_stats, recompute_answer, shared_surface_words,
    verify_item, verify_items,
)

__all__ = [
    "ALL_DOMAINS", "ANSWER_MARKER", "DEFAULT_SPLIT_FRACTIONS", "FUNCTION_WORDS", "HELDOUT_DOMAINS",
    "IsomerFormatError", "IsomerItem", "LEXICONS", "Leak", "Lexicon", "SKELETONS", "SKELETON_IDS",
    "SPLITS", "TEMPLATE_WORDS", "TRAINING_DOMAINS", "VerifyReport", "find_lexicon_leaks",
    "generate_items", "get_lexicon", "get_skeleton", "isomer_stats", "load_jsonl",
    "load_numbered_jsonl", "normalize_answer", "parse_final_answer", "recompute_answer",
    "shared_surface_words", "verify_item", "verify_items", "write_jsonl",
]
