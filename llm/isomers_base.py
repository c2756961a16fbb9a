"""Shared parts of the logical skeletons: seeded draws, the skeleton record, checks.

A skeleton is three functions around one logical form (the item's ``variables``).
``draw`` makes a logical form from seeded draws. ``solve`` recomputes the canonical
answer from a logical form alone. ``render`` writes the question and rationale of a
logical form in one domain's lexicon. ``solve`` reads user files too, so it validates
every variable it uses and raises ValueError naming it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Sequence

from iga_theory.llm.isomers_lexicons import Lexicon
from iga_theory.llm.isomers_schema import ANSWER_MARKER

YES, NO = "yes", "no"
ANSWER_KINDS: tuple[str, ...] = ("yes_no", "integer")
FAMILIES: tuple[str, ...] = ("deductive", "relational", "quantitative")


class Draws:
    """Seeded random draws that give the same values on every Python version.

    Every draw is built on ``random.Random.random()`` alone. The "Notes on
    reproducibility" of Python's random module promise that ``random()`` gives the
    same sequence for the same seed in later versions, and make no such promise for
    ``randrange``, ``choice`` or ``shuffle``. numpy's compatibility policy promises
    equal ``Generator`` streams only on the same build of numpy. A string seed is
    hashed with SHA-512 (the default seeding, version 2).

    Parameters
    ----------
    seed_material : str
        Any string; equal strings give equal draws.
    """

    def __init__(self, seed_material: str):
        self._random = random.Random(seed_material)

    def integer(self, low: int, high: int) -> int:
        """Draw an integer uniformly from ``low..high`` (both included)."""
        if high < low:
            raise ValueError(f"empty integer range [{low}, {high}]")
        span = high - low + 1
        return low + min(int(self._random.random() * span), span - 1)

    def coin(self) -> bool:
        """Draw True or False with equal probability."""
        return self._random.random() < 0.5

    def choice(self, options: Sequence[Any]) -> Any:
        """Draw one element of a non-empty sequence."""
        return options[self.integer(0, len(options) - 1)]

    def shuffled(self, options: Sequence[Any]) -> list[Any]:
        """Return a uniformly shuffled copy (Fisher-Yates)."""
        result = list(options)
        for index in range(len(result) - 1, 0, -1):
            other = self.integer(0, index)
            result[index], result[other] = result[other], result[index]
        return result

    def sample(self, options: Sequence[Any], k: int) -> list[Any]:
        """Draw ``k`` distinct elements in random order."""
        if not 0 <= k <= len(options):
            raise ValueError(f"cannot draw {k} distinct elements from {len(options)}")
        return self.shuffled(options)[:k]


@dataclass(frozen=True)
class Skeleton:
    """One logical skeleton: a family of problems with one reasoning pattern.

    Attributes
    ----------
    skeleton_id : str
        Stable id stored with every item.
    family : str
        ``"deductive"``, ``"relational"`` or ``"quantitative"``.
    answer_kind : str
        ``"yes_no"`` (the generator balances yes and no) or ``"integer"``.
    description : str
        One line for ``iga isomers stats`` and the docs.
    draw : callable
        ``draw(draws, target) -> variables``; ``target`` is the answer to aim for
        (``"yes"``/``"no"`` for yes/no skeletons, None otherwise).
    solve : callable
        ``solve(variables) -> answer``; raises ValueError on a malformed logical form.
    render : callable
        ``render(variables, lexicon) -> (question, rationale)``.
    """

    skeleton_id: str
    family: str
    answer_kind: str
    description: str
    draw: Callable[[Draws, str | None], dict]
    solve: Callable[[dict], str]
    render: Callable[[dict, Lexicon], tuple[str, str]]


# -- checks on logical forms read from files ----------------------------------------


def require(variables: Any, key: str) -> Any:
    """Return ``variables[key]``; raise ValueError when the key is missing."""
    if not isinstance(variables, dict):
        raise ValueError(f"variables must be a JSON object; got {type(variables).__name__}")
    if key not in variables:
        raise ValueError(f"variables[{key!r}] is missing")
    return variables[key]


def as_int(value: Any, where: str, low: int = 0, high: int | None = None) -> int:
    """Return ``value`` when it is an integer in ``[low, high]``; raise ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where} must be an integer; got {value!r}")
    if value < low or (high is not None and value > high):
        upper = "" if high is None else f" and <= {high}"
        raise ValueError(f"{where} must be >= {low}{upper}; got {value}")
    return value


def as_bool(value: Any, where: str) -> bool:
    """Return ``value`` when it is a JSON boolean; raise ValueError otherwise."""
    if not isinstance(value, bool):
        raise ValueError(f"{where} must be true or false; got {value!r}")
    return value


def as_list(value: Any, where: str, min_len: int = 0) -> list:
    """Return ``value`` when it is a list of at least ``min_len`` entries."""
    if not isinstance(value, list) or len(value) < min_len:
        raise ValueError(f"{where} must be a list of at least {min_len} entries; got {value!r}")
    return value


def integer_answer(value: Fraction, what: str) -> str:
    """Format an exact result as a canonical integer answer; raise when it is not whole."""
    if value.denominator != 1:
        raise ValueError(f"{what} is {value}, not a whole number; the logical form is inconsistent")
    return str(value.numerator)


# -- text ---------------------------------------------------------------------------


def sentence(text: str) -> str:
    """Capitalise the first letter of ``text`` and end it with a full stop."""
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith(("?", ".")) else ".")


def join_sentences(parts: Sequence[str]) -> str:
    """Join sentences (each capitalised and terminated) with single spaces."""
    return " ".join(sentence(part) for part in parts)


def with_article(noun: str) -> str:
    """Prefix ``noun`` with "a" or "an" by its first letter."""
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


def answer_line(answer: str) -> str:
    """Return the fixed final line of every rationale."""
    return f"{ANSWER_MARKER} {answer}"
