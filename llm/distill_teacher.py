"""``iga teacher``: rationales from a teacher causal LM, kept only when their answer verifies.

The teacher answers the questions of an isomer file in batches with greedy decoding.
Each generation is parsed with `parse_final_answer` (the text after the last
``Answer:``, normalised, never evaluated) and compared with the item's canonical
answer, which the isomer generator computed from the logical form. A matching
generation replaces the item's rationale (cut after its answer line); a wrong or
unparsable one drops the item. Items of the splits the teacher is not asked to
answer (by default every split but ``train``) are copied unchanged, so the output is
a complete isomer file for ``iga distill`` (``data.items_file``).

Resuming. Every generation is appended to a cache JSONL file (one record per item,
keyed by set id and domain, fsynced after each batch) before anything else happens;
a rerun skips the cached items and regenerates only the rest. The output file is
written atomically from the cache at the end.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from iga_theory.errors import check_positive_int
from iga_theory.runs import atomic_write_bytes
from iga_theory.llm.isomers_schema import (
    ANSWER_MARKER, SPLITS, IsomerFormatError, IsomerItem, parse_final_answer, write_jsonl,
)

logger = logging.getLogger(__name__)

INSTRUCTION = ("Solve the problem step by step. Finish with one line of the form "
               f"'{ANSWER_MARKER} <answer>', where the answer is yes, no or a number.")


def item_key(item: IsomerItem) -> str:
    """Cache key of an item: its set id and domain (unique within a valid isomer file)."""
    return f"{item.set_id}|{item.domain}"


def cut_after_answer(text: str) -> str:
    """Cut a generation after the line that contains its last ``Answer:`` marker."""
    start = text.lower().rfind(ANSWER_MARKER.lower())
    if start < 0:
        return text.strip()
    end = text.find("\n", start)
    return (text if end < 0 else text[:end]).strip()


@dataclass
class TeacherSummary:
    """Counts of one teacher run: items answered, kept (verified), rejected, copied unchanged."""

    answered: int
    kept: int
    rejected: int
    copied: int
    from_cache: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def read_cache(path: Path) -> dict[str, dict]:
    """Cached generations by key; a torn last line (a kill mid-write) is dropped."""
    if not path.exists():
        return {}
    cache = {}
    for line in path.read_text(encoding="utf-8").split("\n"):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("dropping a torn line of the teacher cache %s", path)
            continue
        cache[record["key"]] = record
    return cache


def repair_torn_tail(path: Path) -> None:
    """Cut a partial last line left by a kill, so that the next append starts on a new line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        logger.warning("removing a torn last line of %s", path)
        atomic_write_bytes(path, data[:data.rfind(b"\n") + 1])


def run_teacher(items: Sequence[IsomerItem], generate: Callable[[list[str]], list[str]], out_path: str | Path,
                cache_path: str | Path | None = None, splits: Sequence[str] = ("train",), batch_size: int = 16,
                teacher_name: str = "teacher", progress: bool = True) -> TeacherSummary:
    """Answer the questions of ``splits`` with ``generate`` and write the verified items.

    Parameters
    ----------
    items : sequence of IsomerItem
        A validated isomer file (`load_jsonl`).
    generate : callable
        ``generate(questions) -> texts``: one generated text per question, in order.
    out_path : path
        Isomer JSONL file to write: verified items of ``splits`` with the teacher's
        rationale, and the items of the other splits unchanged.
    cache_path : path, optional
        Cache JSONL (default ``out_path`` with suffix ``.cache.jsonl``).
    splits : sequence of str
        Splits the teacher answers.
    batch_size : int
        Questions per call of ``generate``.
    teacher_name : str
        Stored in the ``meta`` of every kept item.

    Returns
    -------
    TeacherSummary
    """
    batch_size = check_positive_int("batch_size", batch_size)
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown or not splits:
        raise ValueError(f"splits must be a non-empty subset of {list(SPLITS)}; got {list(splits)}")
    out_path = Path(out_path)
    cache_path = Path(cache_path) if cache_path is not None else out_path.with_suffix(".cache.jsonl")
    repair_torn_tail(cache_path)
    cache = read_cache(cache_path)
    targets = [item for item in items if item.split in splits]
    pending = [item for item in targets if item_key(item) not in cache]
    from_cache = len(targets) - len(pending)
    if from_cache:
        logger.info("teacher: %d of %d items already answered in %s", from_cache, len(targets), cache_path)

    # Generate batch by batch; each batch is appended to the cache and fsynced.
    with open(cache_path, "a", encoding="utf-8") as handle:
        for start in tqdm(range(0, len(pending), batch_size), desc="teacher", unit="batch", disable=not progress):
            batch = pending[start:start + batch_size]
            texts = generate([item.question for item in batch])
            if len(texts) != len(batch):
                raise ValueError(f"generate returned {len(texts)} texts for {len(batch)} questions")
            for item, text in zip(batch, texts):
                parsed = parse_final_answer(text)
                record = {"key": item_key(item), "generated": text, "parsed": parsed,
                          "verified": parsed is not None and parsed == item.answer}
                cache[record["key"]] = record
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    # Output: verified rationales for the answered splits, the other splits as they were.
    kept_items, kept, rejected, copied = [], 0, 0, 0
    for item in items:
        if item.split not in splits:
            kept_items.append(item)
            copied += 1
            continue
        record = cache[item_key(item)]
        if not record["verified"]:
            rejected += 1
            continue
        try:
            kept_items.append(replace(item, rationale=cut_after_answer(record["generated"]),
                                      meta={**item.meta, "teacher": teacher_name, "source_rationale": "teacher"}))
            kept += 1
        except IsomerFormatError as error:
            logger.warning("teacher rationale of %s rejected: %s", item_key(item), error)
            rejected += 1
    write_jsonl(kept_items, out_path)
    summary = TeacherSummary(answered=len(targets), kept=kept, rejected=rejected, copied=copied, from_cache=from_cache)
    logger.info("teacher: %s written to %s", summary.as_dict(), out_path)
    return summary


class HFTeacher:
    """Batched greedy generation with a causal LM loaded by ``from_pretrained``.

    Parameters
    ----------
    name_or_path : str
        Local folder or hub name (a hub name needs internet access); safetensors
        weights only.
    dtype : {"float32", "bfloat16", "float16"}
    device : torch.device
    max_new_tokens : int
    chat_template : bool
        Wrap each question with the tokenizer's chat template and `INSTRUCTION` (for
        instruction-tuned teachers); otherwise use the distillation prompt
        ``"Question: ...\\nReasoning:"``.
    tokenizer : str, optional
        Tokenizer folder or hub name (default ``name_or_path``).
    """

    def __init__(self, name_or_path: str, dtype: str = "float32", device: torch.device | None = None,
                 max_new_tokens: int = 256, chat_template: bool = False, tokenizer: str | None = None):
        from iga_theory.llm.distill_tokenizer import load_tokenizer
        from iga_theory.llm.distill_train import load_base_model

        self.device = device or torch.device("cpu")
        self.tokenizer = load_tokenizer(tokenizer or name_or_path)
        self.model = load_base_model(name_or_path, dtype, self.device).eval()
        self.max_new_tokens = check_positive_int("max_new_tokens", max_new_tokens)
        self.chat_template = chat_template
        if chat_template and not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"tokenizer of {name_or_path!r} has no chat template; drop --chat-template")

    def prompt_ids(self, question: str) -> list[int]:
        """Token ids of the teacher's prompt for ``question``."""
        if self.chat_template:
            messages = [{"role": "user", "content": f"{INSTRUCTION}\n\n{question}"}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        from iga_theory.llm.distill_data import encode_prompt

        return encode_prompt(self.tokenizer, question)

    @torch.no_grad()
    def __call__(self, questions: list[str]) -> list[str]:
        from iga_theory.llm.distill_eval import left_pad

        prompts = left_pad([self.prompt_ids(q) for q in questions], self.tokenizer.pad_token_id, self.device)
        output = self.model.generate(**prompts, max_new_tokens=self.max_new_tokens, do_sample=False,
                                     pad_token_id=self.tokenizer.pad_token_id,
                                     eos_token_id=self.tokenizer.eos_token_id)
        new = output[:, prompts["input_ids"].shape[1]:]
        return [self.tokenizer.decode(row.tolist(), skip_special_tokens=True) for row in new]

