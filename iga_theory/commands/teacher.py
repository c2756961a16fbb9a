"""``iga teacher``: cache a teacher model's rationales for an isomer file, keeping only verified ones."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from iga_theory.llm.distill_config import DEVICES, DTYPES
from iga_theory.llm.isomers_schema import SPLITS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``teacher`` command."""
    parser = subparsers.add_parser(
        "teacher", help="generate teacher rationales for isomer questions and keep the verified ones",
        description="Run a causal LM (loaded with from_pretrained) over the questions of an isomer JSONL "
                    "file in batches with greedy decoding. A rationale is kept only when its final "
                    "'Answer:' matches the item's answer; other items of the answered splits are dropped. "
                    "Generations are cached, so an interrupted run resumes where it stopped.",
    )
    parser.add_argument("--model", required=True, metavar="NAME_OR_PATH",
                        help="teacher: local folder or hub name (a hub name needs internet); safetensors weights only")
    parser.add_argument("--tokenizer", metavar="NAME_OR_PATH", help="tokenizer (default: --model)")
    parser.add_argument("--items", required=True, type=Path, metavar="FILE", help="input isomer JSONL file")
    parser.add_argument("--out", required=True, type=Path, metavar="FILE",
                        help="output isomer JSONL file (verified teacher rationales, other splits unchanged)")
    parser.add_argument("--cache", type=Path, metavar="FILE",
                        help="cache of every generation (default: OUT with suffix .cache.jsonl)")
    parser.add_argument("--splits", nargs="+", default=["train"], choices=SPLITS, metavar="SPLIT",
                        help="splits the teacher answers (default: train)")
    parser.add_argument("--batch-size", type=int, default=16, metavar="N", help="questions per batch (default 16)")
    parser.add_argument("--max-new-tokens", type=int, default=256, metavar="N",
                        help="longest generated rationale, in tokens (default 256)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the teacher's weights")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="'auto': cuda when available, else cpu")
    parser.add_argument("--chat-template", action="store_true",
                        help="wrap questions in the tokenizer's chat template with an instruction "
                             "(for instruction-tuned teachers)")
    parser.add_argument("--threads", type=int, default=0, metavar="N", help="torch CPU threads (0: torch's default)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the items and the teacher, run it, print the counts; return the exit status."""
    import torch

    from iga_theory.llm.distill_teacher import HFTeacher, run_teacher
    from iga_theory.llm.distill_train import resolve_device
    from iga_theory.llm.isomers_schema import IsomerFormatError, load_jsonl

    if args.batch_size < 1 or args.max_new_tokens < 1 or args.threads < 0:
        print("error: --batch-size and --max-new-tokens must be >= 1 and --threads >= 0", file=sys.stderr)
        return 2
    if args.out.resolve() == args.items.resolve():
        print("error: --out must differ from --items (the input is read again on a resumed run)", file=sys.stderr)
        return 2
    try:
        items = load_jsonl(args.items)
        if args.threads:
            torch.set_num_threads(args.threads)
        teacher = HFTeacher(args.model, args.dtype, resolve_device(args.device), args.max_new_tokens,
                            args.chat_template, args.tokenizer)
        summary = run_teacher(items, teacher, args.out, args.cache, args.splits, args.batch_size,
                              teacher_name=args.model, progress=not args.no_progress)
    except (IsomerFormatError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    counts = summary.as_dict()
    print(f"answered {counts['answered']} ({counts['from_cache']} from the cache), kept {counts['kept']}, "
          f"rejected {counts['rejected']}, copied unchanged {counts['copied']} -> {args.out}")
    return 0
