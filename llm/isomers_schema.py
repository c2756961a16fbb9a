"""The isomer item, its JSONL schema, and the canonical answer format.

One JSON object per line, with these fields (all required except ``meta``):

- ``set_id`` (string): id of the isomer set, shared by all its members.
- ``skeleton_id`` (string, ``[a-z][a-z0-9_]*``): id of the logical skeleton.
- ``domain`` (string, ``[a-z][a-z0-9_]*``): semantic domain of this rendering.
- ``split`` (string): one of ``train``, ``validation``, ``test_id``, ``test_ood``.
- ``question`` (string): the problem text, without the answer marker.
- ``rationale`` (string): chain of thought ending with ``Answer: <answer>``.
- ``answer`` (string): the final answer in canonical form (see `normalize_answer`).
- ``variables`` (object): the logical form, which holds everything the verifier needs
  to recompute the answer.
- ``meta`` (object, optional): free-form annotations, for example the teacher model.

Within one set every item has the same skeleton_id, split, answer and variables, and
no two items share a domain. `load_jsonl` checks every line and all of these rules
and raises one `IsomerFormatError` that lists each problem with its line number and
field.

Canonical answers are short strings that a parser can compare without evaluating
anything: ``yes`` or ``no``; a decimal number with an optional leading ``-``, no
thousands separators, no leading zeros and no trailing zeros after the point (``12``,
``0.5``, ``-3.25``); or otherwise a short lowercase phrase with single spaces
(``aspirin``).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Iterable

from iga_theory.runs import atomic_write_bytes

SPLITS: tuple[str, ...] = ("train", "validation", "test_id", "test_ood")
REQUIRED_FIELDS: tuple[str, ...] = (
    "set_id", "skeleton_id", "domain", "split", "question", "rationale", "answer", "variables",
)
OPTIONAL_FIELDS: tuple[str, ...] = ("meta",)

ANSWER_MARKER = "Answer:"

# Generous caps that catch a wrong column or a runaway generation, not style limits:
# the generated items stay under 60 (question) and 80 (rationale) words.
MAX_TEXT_CHARS = 4000
MAX_ANSWER_CHARS = 40
MAX_ANSWER_WORDS = 4
MAX_ID_CHARS = 80
# Error messages list at most this many problems; `IsomerFormatError.errors` has all.
MAX_LISTED_ERRORS = 200

_SET_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
_NAME_ID = re.compile(r"[a-z][a-z0-9_]*")
# A whole answer that is a number: optional sign, digits (with or without thousands
# commas), optional fraction, optional percent suffix.
_NUMBER = re.compile(
    r"(?P<sign>[+-])?(?P<int>\d{1,3}(?:,\d{3})+|\d+)?(?:\.(?P<frac>\d+))?\s*(?:%|percent)?"
)
# A number at the start of a longer answer ("46 ml", "75 percent."), followed by the
# end, a space, a percent sign or a sentence mark; "3/4" does not match.
_LEADING_NUMBER = re.compile(
    r"(?P<num>[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)(?=$|\s|%|[.,;!?](?:\s|$))"
)
_LEADING_YES_NO = re.compile(r"(?P<word>yes|no)\b")
_EDGE_MARKS = " \t\"'`*_()[]"
_TRAILING_MARKS = ".!?;,:"


class IsomerFormatError(ValueError):
    """Malformed isomer items; ``errors`` lists each as ``(line, field, message)``.

    ``line`` is the 1-based line number in the file (``None`` for items that were not
    read from a file) and ``field`` the offending field (``None`` for a whole line).
    """

    def __init__(self, source: str, errors: list[tuple[int | None, str | None, str]]):
        self.source = source
        self.errors = list(errors)
        listed = [format_error(line, name, message) for line, name, message in errors[:MAX_LISTED_ERRORS]]
        more = len(errors) - len(listed)
        tail = f"\n  ... and {more} more (see the .errors attribute)" if more > 0 else ""
        super().__init__(
            f"{source}: {len(errors)} problem(s) in isomer items:\n  " + "\n  ".join(listed) + tail
        )


def format_error(line: int | None, name: str | None, message: str) -> str:
    """Format one item problem as ``line N, field 'x': message``."""
    where = [] if line is None else [f"line {line}"]
    if name is not None:
        where.append(f"field {name!r}")
    return (", ".join(where) + ": " if where else "") + message


# -- canonical answers --------------------------------------------------------------


def _canonical_number(text: str) -> str | None:
    """Return the canonical decimal string of ``text`` when it is a number, else None."""
    match = _NUMBER.fullmatch(text)
    if match is None or (match.group("int") is None and match.group("frac") is None):
        return None
    digits = (match.group("int") or "0").replace(",", "")
    if match.group("frac"):
        digits += "." + match.group("frac")
    try:
        value = Decimal(digits)
    except InvalidOperation:  # pragma: no cover - the regex admits only digits
        return None
    if match.group("sign") == "-":
        value = -value
    formatted = format(value.normalize(), "f")
    if "." in formatted:
        formatted = formatted.rstrip("0").rstrip(".")
    return "0" if formatted in ("-0", "") else formatted


def normalize_answer(text: str) -> str:
    """Return the canonical form of an answer string.

    Lowercases, collapses whitespace, strips quotes, brackets, markdown emphasis and
    trailing sentence marks; ``Yes.`` becomes ``yes``. A number loses its sign
    ``+``, thousands commas, leading and trailing zeros and a percent suffix:
    ``"1,200.50 %"`` becomes ``"1200.5"``. Anything else is returned cleaned but
    otherwise unchanged. Nothing is evaluated, so fractions such as ``3/4`` stay text.

    Parameters
    ----------
    text : str
        An answer as stored, or as a model wrote it after the answer marker.

    Returns
    -------
    str
        The canonical answer; the empty string when nothing is left.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a string; got {text!r} of type {type(text).__name__}")
    cleaned = " ".join(text.split()).lower()
    previous = None
    while cleaned != previous:  # peel nested marks such as '"yes."' or '**no**'
        previous = cleaned
        cleaned = cleaned.strip(_EDGE_MARKS).rstrip(_TRAILING_MARKS)
    number = _canonical_number(cleaned)
    return cleaned if number is None else number


def parse_final_answer(generated_text: str) -> str | None:
    """Extract the canonical final answer from a generated rationale.

    The answer is the text after the last ``Answer:`` (case-insensitive), up to the
    end of the first non-empty line after it. When it begins with ``yes``/``no`` or a
    number, only that is kept, so ``Answer: 46 ml`` gives ``46`` and
    ``Answer: yes, because ...`` gives ``yes``. Otherwise the text up to the first
    sentence end is normalized as a whole.

    Parameters
    ----------
    generated_text : str
        Text written by a model or a teacher, ending with ``Answer: X``.

    Returns
    -------
    str or None
        The answer in the form of `normalize_answer`, or None when there is no marker
        or nothing after it.
    """
    if not isinstance(generated_text, str):
        raise TypeError(
            f"generated_text must be a string; got {generated_text!r} of type "
            f"{type(generated_text).__name__}"
        )
    start = generated_text.lower().rfind(ANSWER_MARKER.lower())
    if start < 0:
        return None
    tail = generated_text[start + len(ANSWER_MARKER):].strip()
    tail = tail.splitlines()[0].strip() if tail else ""
    lowered = tail.lower().lstrip(_EDGE_MARKS)
    leading = _LEADING_YES_NO.match(lowered) or _LEADING_NUMBER.match(lowered)
    if leading is not None:
        return normalize_answer(leading.group(0))
    sentence_end = re.search(r"[.!?](?:\s|$)", tail)
    answer = normalize_answer(tail[:sentence_end.start()] if sentence_end else tail)
    return answer or None


# -- the item -----------------------------------------------------------------------


def _check_id(record: dict, name: str, pattern: re.Pattern, rule: str) -> list[tuple[str, str]]:
    value = record[name]
    if not isinstance(value, str):
        return [(name, f"must be a string; got {type(value).__name__} {value!r}")]
    if len(value) > MAX_ID_CHARS or pattern.fullmatch(value) is None:
        return [(name, f"must match {rule} (at most {MAX_ID_CHARS} characters); got {value!r}")]
    return []


def _check_text(record: dict, name: str) -> list[tuple[str, str]]:
    value = record[name]
    if not isinstance(value, str):
        return [(name, f"must be a string; got {type(value).__name__}")]
    if not value.strip():
        return [(name, "is empty")]
    if len(value) > MAX_TEXT_CHARS:
        return [(name, f"has {len(value)} characters; at most {MAX_TEXT_CHARS} are allowed")]
    return []


def _check_answer(record: dict) -> list[tuple[str, str]]:
    answer = record["answer"]
    if not isinstance(answer, str):
        return [("answer", f"must be a string; got {type(answer).__name__} {answer!r}")]
    canonical = normalize_answer(answer)
    if not canonical:
        return [("answer", "is empty")]
    if canonical != answer:
        return [("answer", f"{answer!r} is not canonical; write {canonical!r}")]
    if len(answer) > MAX_ANSWER_CHARS or len(answer.split()) > MAX_ANSWER_WORDS:
        return [("answer", f"{answer!r} is too long; answers have at most {MAX_ANSWER_WORDS} "
                           f"words and {MAX_ANSWER_CHARS} characters")]
    if parse_final_answer(f"{ANSWER_MARKER} {answer}") != answer:
        return [("answer", f"{answer!r} does not survive parse_final_answer; a phrase answer "
                           "must not begin with a number or with yes/no")]
    return []


def _json_value_problem(value: Any, where: str) -> str | None:
    """Describe the first part of ``value`` that does not round-trip through JSON, if any."""
    if value is None or isinstance(value, (str, bool, int)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where} is {value!r}; only finite numbers are allowed"
    if isinstance(value, list):
        for index, entry in enumerate(value):
            problem = _json_value_problem(entry, f"{where}[{index}]")
            if problem:
                return problem
        return None
    if isinstance(value, dict):
        for key, entry in value.items():
            if not isinstance(key, str):
                return f"{where} has the non-string key {key!r}"
            problem = _json_value_problem(entry, f"{where}[{key!r}]")
            if problem:
                return problem
        return None
    return f"{where} is a {type(value).__name__}; use JSON values only (object, list, string, number, bool, null)"


def _check_json_object(value: Any, name: str) -> list[tuple[str, str]]:
    if not isinstance(value, dict):
        return [(name, f"must be a JSON object; got {type(value).__name__}")]
    problem = _json_value_problem(value, name)
    return [(name, problem)] if problem else []


def validate_record(record: Any) -> list[tuple[str | None, str]]:
    """Return the schema problems of one decoded JSON line as ``(field, message)`` pairs.

    An empty list means the record is a valid item. Checks the field set, each
    field's type and format, the canonical answer, and that the rationale's final
    answer equals ``answer``.
    """
    if not isinstance(record, dict):
        return [(None, f"must be a JSON object; got {type(record).__name__}")]
    problems: list[tuple[str | None, str]] = []
    missing = [name for name in REQUIRED_FIELDS if name not in record]
    problems += [(name, "is missing") for name in missing]
    allowed = set(REQUIRED_FIELDS) | set(OPTIONAL_FIELDS)
    problems += [(name, f"is not a known field; allowed fields: {', '.join(REQUIRED_FIELDS + OPTIONAL_FIELDS)}")
                 for name in sorted(set(record) - allowed)]
    present = set(record) - set(missing)

    if "set_id" in present:
        problems += _check_id(record, "set_id", _SET_ID, "[A-Za-z0-9][A-Za-z0-9_.:-]*")
    for name in ("skeleton_id", "domain"):
        if name in present:
            problems += _check_id(record, name, _NAME_ID, "[a-z][a-z0-9_]*")
    if "split" in present and record["split"] not in SPLITS:
        problems.append(("split", f"must be one of {', '.join(SPLITS)}; got {record['split']!r}"))
    for name in ("question", "rationale"):
        if name in present:
            problems += _check_text(record, name)
    if "question" in present and isinstance(record["question"], str) \
            and ANSWER_MARKER.lower() in record["question"].lower():
        problems.append(("question", f"must not contain the answer marker {ANSWER_MARKER!r}"))
    answer_problems = _check_answer(record) if "answer" in present else []
    problems += answer_problems
    for name in ("variables", "meta"):
        if name in present:
            problems += _check_json_object(record[name], name)

    rationale_ok = "rationale" in present and not _check_text(record, "rationale")
    if rationale_ok and "answer" in present and not answer_problems:
        final = parse_final_answer(record["rationale"])
        if final is None:
            problems.append(("rationale", f"does not end with '{ANSWER_MARKER} <answer>'"))
        elif final != record["answer"]:
            problems.append(("rationale", f"its final answer {final!r} differs from answer "
                                          f"{record['answer']!r}"))
    return problems


@dataclass(frozen=True)
class IsomerItem:
    """One member of a Logical Isomer Set: a skeleton rendered in one domain.

    Construction validates every field as `validate_record` does and raises
    `IsomerFormatError` on the first invalid item. ``variables`` holds the logical
    form (JSON values only) and is shared by every member of the set.
    """

    set_id: str
    skeleton_id: str
    domain: str
    question: str
    rationale: str
    answer: str
    variables: dict
    split: str
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        record = self.to_record()
        record["meta"] = self.meta  # checked even when empty or of the wrong type
        problems = validate_record(record)
        if problems:
            raise IsomerFormatError(
                f"IsomerItem(set_id={self.set_id!r}, domain={self.domain!r})",
                [(None, name, message) for name, message in problems],
            )

    def to_record(self) -> dict:
        """Return the JSON object of this item, fields in schema order, ``meta`` only if set."""
        record = {
            "set_id": self.set_id, "skeleton_id": self.skeleton_id, "domain": self.domain,
            "split": self.split, "question": self.question, "rationale": self.rationale,
            "answer": self.answer, "variables": self.variables,
        }
        if self.meta:
            record["meta"] = self.meta
        return record

    @classmethod
    def from_record(cls, record: dict) -> "IsomerItem":
        """Build an item from a decoded JSON object (validated on construction)."""
        problems = validate_record(record)
        if problems:
            raise IsomerFormatError("record", [(None, name, message) for name, message in problems])
        return cls(**{name: record[name] for name in REQUIRED_FIELDS}, meta=record.get("meta", {}))


# -- checks across items --------------------------------------------------------------


def check_set_consistency(numbered: Iterable[tuple[int | None, IsomerItem]]) -> list[tuple[int | None, str, str]]:
    """Return ``(line, field, message)`` for each item that breaks its set's rules.

    Every member of a set must share skeleton_id, split, answer and variables with the
    set's first item, and no domain may occur twice in one set.
    """
    first: dict[str, tuple[int | None, IsomerItem]] = {}
    seen_domains: dict[tuple[str, str], int | None] = {}
    problems: list[tuple[int | None, str, str]] = []
    for line, item in numbered:
        key = (item.set_id, item.domain)
        if key in seen_domains:
            where = "" if seen_domains[key] is None else f" (line {seen_domains[key]})"
            problems.append((line, "domain", f"set {item.set_id!r} already has an item in domain "
                                             f"{item.domain!r}{where}"))
        else:
            seen_domains[key] = line
        if item.set_id not in first:
            first[item.set_id] = (line, item)
            continue
        first_line, reference = first[item.set_id]
        where = "its first item" if first_line is None else f"its first item on line {first_line}"
        for name in ("skeleton_id", "split", "answer", "variables"):
            mine, theirs = getattr(item, name), getattr(reference, name)
            if mine != theirs:
                values = "" if name == "variables" else f" ({mine!r} vs {theirs!r})"
                problems.append((line, name, f"differs within set {item.set_id!r} from {where}{values}"))
    return problems


# -- JSONL input and output -----------------------------------------------------------


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON; write a finite number")


def load_numbered_jsonl(path: str | os.PathLike) -> list[tuple[int, IsomerItem]]:
    """Read and validate an isomer JSONL file; return ``(line number, item)`` pairs.

    Blank lines are skipped. Every line is checked (JSON syntax, UTF-8, schema, the
    canonical answer, the rationale's final answer) and then every set's consistency;
    all problems are raised together.

    Raises
    ------
    IsomerFormatError
        Listing each problem as ``line N, field 'x': message``.
    ValueError
        When the file holds no item.
    """
    path = Path(path)
    raw = path.read_bytes()
    numbered: list[tuple[int, IsomerItem]] = []
    errors: list[tuple[int | None, str | None, str]] = []
    for line_no, raw_line in enumerate(raw.split(b"\n"), start=1):
        if not raw_line.strip():
            continue
        try:
            text = raw_line.decode("utf-8")
        except UnicodeDecodeError as error:
            errors.append((line_no, None, f"is not valid UTF-8 ({error.reason} at byte {error.start})"))
            continue
        try:
            record = json.loads(text, parse_constant=_reject_constant)
        except (json.JSONDecodeError, ValueError) as error:
            errors.append((line_no, None, f"is not valid JSON: {error}"))
            continue
        problems = validate_record(record)
        if problems:
            errors += [(line_no, name, message) for name, message in problems]
            continue
        numbered.append((line_no, IsomerItem(**{name: record[name] for name in REQUIRED_FIELDS},
                                             meta=record.get("meta", {}))))
    errors += check_set_consistency(numbered)
    if errors:
        raise IsomerFormatError(str(path), sorted(errors, key=lambda e: (e[0] or 0)))
    if not numbered:
        raise ValueError(f"{path} contains no isomer items; expected one JSON object per line")
    return numbered


def load_jsonl(path: str | os.PathLike) -> list[IsomerItem]:
    """Read and validate an isomer JSONL file; see `load_numbered_jsonl` for the checks."""
    return [item for _, item in load_numbered_jsonl(path)]


def dumps_item(item: IsomerItem) -> str:
    """Serialise one item as its JSONL line (no newline); byte-stable for equal items."""
    return json.dumps(item.to_record(), ensure_ascii=False, separators=(", ", ": "))


def write_jsonl(items: Iterable[IsomerItem], path: str | os.PathLike) -> Path:
    """Write items as UTF-8 JSONL, atomically (temporary file, fsync, ``os.replace``).

    The set rules of `check_set_consistency` are checked before anything is written,
    so a failed call leaves an existing file untouched. Returns the path written.
    """
    items = list(items)
    for index, item in enumerate(items):
        if not isinstance(item, IsomerItem):
            raise TypeError(f"items[{index}] must be an IsomerItem; got {type(item).__name__}")
    problems = check_set_consistency((None, item) for item in items)
    if problems:
        raise IsomerFormatError("items to write", problems)
    path = Path(path)
    payload = "".join(dumps_item(item) + "\n" for item in items).encode("utf-8")
    atomic_write_bytes(path, payload)
    return path
