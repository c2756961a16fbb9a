"""``iga isomers generate|validate|stats``: make, check and summarise isomer JSONL files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from iga_theory.llm.isomers_generate import DEFAULT_SPLIT_FRACTIONS, generate_items
from iga_theory.llm.isomers_lexicons import ALL_DOMAINS, HELDOUT_DOMAINS
from iga_theory.llm.isomers_schema import (
    SPLITS, IsomerFormatError, format_error, load_numbered_jsonl, write_jsonl,
)
from iga_theory.llm.isomers_skeletons import SKELETON_IDS
from iga_theory.llm.isomers_verify import find_lexicon_leaks, isomer_stats, verify_items

DEFAULT_SETS = 1000


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``isomers`` command group and its three actions."""
    parser = subparsers.add_parser(
        "isomers", help="generate, validate and summarise Logical Isomer Set JSONL files",
        description="Logical Isomer Sets: one logical skeleton rendered in several domains, "
                    "one JSON item per line (schema in docs/isomers.md).",
    )
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
    actions = parser.add_subparsers(dest="isomers_action", metavar="ACTION")

    generate = actions.add_parser("generate", help="write seeded isomer sets to a JSONL file")
    generate.add_argument("--out", required=True, type=Path, help="path of the JSONL file to write")
    generate.add_argument("--sets", type=int, default=DEFAULT_SETS,
                          help=f"number of isomer sets (default {DEFAULT_SETS}); each set gives one "
                               "item per domain of its split")
    generate.add_argument("--seed", type=int, default=0, help="non-negative random seed (default 0)")
    generate.add_argument("--domains", nargs="+", default=list(ALL_DOMAINS), metavar="DOMAIN",
                          help=f"domains to render (default all: {' '.join(ALL_DOMAINS)}); "
                               f"{' and '.join(HELDOUT_DOMAINS)} are held out and render only "
                               "the test_ood split")
    generate.add_argument("--skeletons", nargs="+", default=None, metavar="SKELETON",
                          help=f"skeleton ids to use (default all: {' '.join(SKELETON_IDS)})")
    defaults = " ".join(str(DEFAULT_SPLIT_FRACTIONS[s]) for s in SPLITS)
    generate.add_argument("--fractions", nargs=4, type=float, default=None,
                          metavar=("TRAIN", "VALIDATION", "TEST_ID", "TEST_OOD"),
                          help=f"relative share of sets per split (default {defaults}); "
                               "rescaled to sum to 1")
    generate.add_argument("--overwrite", action="store_true",
                          help="replace --out if it exists (default: stop with an error)")
    generate.set_defaults(func=run_generate)

    validate = actions.add_parser(
        "validate", help="check a JSONL file: schema, answers, set consistency, held-out leaks")
    validate.add_argument("file", type=Path, help="isomer JSONL file to check")
    validate.add_argument("--heldout-domains", nargs="+", default=list(HELDOUT_DOMAINS),
                          metavar="DOMAIN",
                          help="domains whose lexicon words must not occur outside test_ood "
                               f"(default {' '.join(HELDOUT_DOMAINS)})")
    validate.set_defaults(func=run_validate)

    stats = actions.add_parser("stats", help="count items per skeleton, domain, split and answer")
    stats.add_argument("file", type=Path, help="isomer JSONL file to summarise")
    stats.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    stats.set_defaults(func=run_stats)


def _load(path: Path):
    """Load a file for a command; print the problems and return None when it is invalid."""
    try:
        return load_numbered_jsonl(path)
    except IsomerFormatError as error:
        for line, name, message in error.errors:
            print(f"{path}: {format_error(line, name, message)}", file=sys.stderr)
        print(f"{path}: invalid, {len(error.errors)} problem(s)", file=sys.stderr)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
    return None


def run_generate(args: argparse.Namespace) -> int:
    """Generate isomer sets and write them atomically to ``--out``."""
    if args.out.exists() and not args.overwrite:
        print(f"error: {args.out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 1
    if not args.out.parent.is_dir():
        print(f"error: output folder {str(args.out.parent)!r} does not exist or is not a folder; "
              "create it or pass another --out", file=sys.stderr)
        return 1
    fractions = None if args.fractions is None else dict(zip(SPLITS, args.fractions))
    try:
        items = generate_items(args.sets, args.seed, args.domains, split_fractions=fractions,
                               skeletons=args.skeletons, progress=True)
    except (TypeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        write_jsonl(items, args.out)
    except OSError as error:
        print(f"error: cannot write {str(args.out)!r}: {error.strerror or error}; "
              "pass an --out in a folder you can write to", file=sys.stderr)
        return 1
    summary = isomer_stats(items)
    per_split = ", ".join(f"{split} {summary['sets_per_split'][split]}" for split in SPLITS)
    print(f"wrote {summary['n_items']} items in {summary['n_sets']} sets to {args.out} "
          f"(sets per split: {per_split})")
    return 0


def run_validate(args: argparse.Namespace) -> int:
    """Check a file; print every problem with its line number and return 1 if there is one."""
    numbered = _load(args.file)
    if numbered is None:
        return 1
    lines = [line for line, _ in numbered]
    items = [item for _, item in numbered]
    try:
        leaks = find_lexicon_leaks(items, args.heldout_domains)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    report = verify_items(items)
    problems = [(lines[index], name, message) for index, name, message in report.problems]
    problems += [(lines[leak.index], leak.field,
                  f"word {leak.word!r} of held-out domain {leak.heldout_domain} occurs in split {leak.split}")
                 for leak in leaks]
    for line, name, message in sorted(problems, key=lambda problem: problem[0]):
        print(f"{args.file}: {format_error(line, name, message)}", file=sys.stderr)
    n_sets = len({item.set_id for item in items})
    status = "invalid" if problems else "valid"
    print(f"{args.file}: {status}; {len(items)} items in {n_sets} sets, {report.verified} answers "
          f"verified, {report.unknown_skeleton} of unknown skeletons not verified, "
          f"{len(problems)} problem(s)")
    return 1 if problems else 0


def _print_counts(title: str, counts: dict) -> None:
    print(f"{title}:")
    width = max((len(str(key)) for key in counts), default=0)
    for key, value in counts.items():
        print(f"  {str(key):<{width}}  {value:>7}")


def run_stats(args: argparse.Namespace) -> int:
    """Print item counts per skeleton, domain, split and answer."""
    numbered = _load(args.file)
    if numbered is None:
        return 1
    summary = isomer_stats([item for _, item in numbered])
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{args.file}: {summary['n_items']} items in {summary['n_sets']} sets, "
          f"vocabulary {summary['vocabulary_size']} words")
    print(f"question words: mean {summary['mean_question_words']:.1f}, max {summary['max_question_words']}; "
          f"rationale words: mean {summary['mean_rationale_words']:.1f}, "
          f"max {summary['max_rationale_words']}")
    _print_counts("items per skeleton", summary["items_per_skeleton"])
    _print_counts("items per domain", summary["items_per_domain"])
    _print_counts("items per split", summary["items_per_split"])
    _print_counts("sets per split", summary["sets_per_split"])
    _print_counts("items per answer", summary["items_per_answer"])
    for split in SPLITS:
        if summary["answers_per_split"][split]:
            _print_counts(f"sets per answer in {split}", summary["answers_per_split"][split])
    return 0
