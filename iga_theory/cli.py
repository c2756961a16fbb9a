"""The ``iga`` command line: one entry point, one subcommand per job.

Each subcommand lives in its own module, which defines ``register(subparsers)``
(adds the parser and sets ``func``) and is imported only when the command runs, so
``iga --help`` stays fast and the LLM extras are needed only by the LLM commands.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# Top-level modules of the ``llm`` extra; a command that needs a missing one gets an
# install hint instead of a traceback.
LLM_EXTRAS = frozenset({"transformers", "peft", "tokenizers", "accelerate"})

# Subcommand name -> (module defining ``register``, one-line summary for ``iga --help``).
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "report": ("iga_theory.commands.report", "run the synthetic experiments and write the PDF report"),
    "isomers": ("iga_theory.commands.isomers", "generate, validate and summarise Logical Isomer Set JSONL files"),
    "validate": ("iga_theory.commands.validate", "run the verification experiments of Theorems 1-3 and write a certificate"),
    "compare": ("iga_theory.commands.compare", "compare IGA with the invariance baselines on the synthetic benchmarks"),
    "bench": ("iga_theory.commands.bench", "time the operators against their performance targets; write bench.json"),
    "distill": ("iga_theory.commands.distill", "distil isomer-set rationales into LoRA adapters with ERM-SFT, IGA and baselines"),
    "teacher": ("iga_theory.commands.teacher", "generate teacher rationales for isomer questions and keep the verified ones"),
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """Build the top-level parser; register every subcommand, or only ``selected``."""
    parser = argparse.ArgumentParser(
        prog="iga",
        description="Invariant Gradient Alignment: theory checks, baselines and LoRA distillation.",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging verbosity of the library (default: INFO)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, summary) in SUBCOMMANDS.items():
        if selected is not None and name != selected:
            subparsers.add_parser(name, help=summary, add_help=False)
            continue
        module = importlib.import_module(module_name)
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``iga``; return the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((arg for arg in argv if arg in SUBCOMMANDS), None)
    parser = build_parser(selected)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    if args.command is None or not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # The reader of our output (for example `head`) closed the pipe: stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"\niga {args.command}: interrupted; finished work is stored in the output folder, "
              "and running the same command again resumes from it", file=sys.stderr)
        return 130
    except ModuleNotFoundError as error:
        if error.name not in LLM_EXTRAS:
            raise
        print(f"iga {args.command}: error: the package {error.name!r} is not installed; the LLM commands "
              "need the llm extra: pip install -e \".[llm]\" (or pip install \"iga-theory[llm]\")",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
