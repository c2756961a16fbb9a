"""Build a small causal LM from a config and pre-train it from scratch on generic lexicon text.

The ``tiny-cpu`` student cannot be downloaded, so it is made here: a Llama-style
decoder (`build_tiny_model`) with random weights, pre-trained by next-token
prediction on a corpus of generic sentences (`generic_corpus`). The corpus uses the
words of every domain lexicon, the held-out ones included, as the web text of a real
model would, in three kinds of sentence:

* statements about one domain's subject, entities, rates and quantities
  ("The loan is not secured.", "The pump moves 12 liters per minute.");
* arithmetic facts with the operations the quantitative rationales use
  ("7 * 4 = 28.", "56 - 14 = 42.", "42 / 14 = 3.", "20 * 60 / 100 = 12.");
* recap paragraphs that restate one of their statements after "So";
* nothing in question-and-rationale form: the reasoning patterns of the isomer
  skeletons are left for distillation to teach.

Pre-training is a plain AdamW loop over packed blocks with checkpoints and a per-step
JSONL log, resumable like the distillation loop.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from iga_theory.errors import check_positive_int
from iga_theory.llm.distill_checkpoint import (
    CheckpointManager, StepLog, capture_rng_state, load_trainable_state, restore_rng_state, trainable_state,
)
from iga_theory.llm.distill_config import ModelConfig, PretrainConfig
from iga_theory.llm.isomers_lexicons import ALL_DOMAINS, get_lexicon

logger = logging.getLogger(__name__)

# Range of the operands of the arithmetic facts. The quantitative skeletons draw rates,
# times and counts of this size, and their products and sums reach a few hundred.
ARITHMETIC_RANGE = (1, 30)
PERCENTS = (10, 20, 25, 30, 40, 50, 60, 70, 75, 80, 90)
# Shares of recap paragraphs among paragraphs and of arithmetic facts among the other sentences.
RECAP_SHARE = 0.25
ARITHMETIC_SHARE = 0.3


# ----- corpus ---------------------------------------------------------------------------------


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _domain_sentence(rng: np.random.Generator, domain: str) -> str:
    """Draw one generic statement in ``domain``'s lexicon."""
    lex = get_lexicon(domain)
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    n = int(rng.integers(2, 60))
    kind = int(rng.integers(8))
    if kind == 0:
        return f"The {lex.subject} is {pick(lex.predicates)}."
    if kind == 1:
        return f"The {lex.subject} is not {pick(lex.predicates)}."
    if kind == 2:
        return f"Some {lex.subject_plural} are {pick(lex.predicates)} and some are not."
    if kind == 3:
        first, second = rng.choice(len(lex.entities), size=2, replace=False)
        return _capitalise(f"{lex.entities[first]} is {lex.comparative} {lex.entities[second]}.")
    if kind == 4:
        return _capitalise(f"{lex.rate_agent} {lex.rate_verb} {n} {lex.rate_unit} per {lex.time_unit}.")
    if kind == 5:
        return f"The {lex.quantity} is {n} {lex.quantity_unit}."
    if kind == 6:
        return _capitalise(f"{pick(lex.recipients)} gets {n} {lex.quantity_unit}.")
    return f"There are {n} {lex.subject_plural} and {int(rng.integers(2, 9))} {lex.time_units}."


def _arithmetic_sentence(rng: np.random.Generator) -> str:
    """Draw one arithmetic fact with small operands."""
    low, high = ARITHMETIC_RANGE
    a, b = int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1))
    kind = int(rng.integers(5))
    if kind == 0:
        return f"{a} + {b} = {a + b}."
    if kind == 1:
        return f"{max(a, b)} - {min(a, b)} = {max(a, b) - min(a, b)}."
    if kind == 2:
        return f"{a} * {b} = {a * b}."
    if kind == 3:
        return f"{a * b} / {b} = {a}."
    whole = 20 * int(rng.integers(1, 11))
    percent = PERCENTS[int(rng.integers(len(PERCENTS)))]
    if whole * percent % 100:
        whole = 100
    return f"{whole} * {percent} / 100 = {whole * percent // 100}."


def _recap_paragraph(rng: np.random.Generator, domain: str) -> list[str]:
    """Two to four statements of one domain, then "So" and one of them again (teaches copying)."""
    statements = [_domain_sentence(rng, domain) for _ in range(int(rng.integers(2, 5)))]
    again = statements[int(rng.integers(len(statements)))]
    return statements + ["So " + again[:1].lower() + again[1:]]


def generic_corpus(n_sentences: int, seed: int = 0, domains=ALL_DOMAINS) -> list[str]:
    """Generate about ``n_sentences`` generic sentences (see the module docstring), in short paragraphs.

    A paragraph is 1 to 6 sentences of mixed domains and arithmetic, or (one time in
    four) a recap paragraph: statements of one domain, then "So" and one of them again.
    Such repetition is what teaches a language model to copy from its context.
    Deterministic in ``(n_sentences, seed, domains)``.
    """
    n_sentences = check_positive_int("n_sentences", n_sentences)
    rng = np.random.default_rng([seed, 0x5EED])
    domains = list(domains)
    paragraphs: list[str] = []
    written = 0
    while written < n_sentences:
        if rng.random() < RECAP_SHARE:
            sentences = _recap_paragraph(rng, domains[int(rng.integers(len(domains)))])
        else:
            sentences = []
            for _ in range(int(rng.integers(1, 7))):
                if rng.random() < ARITHMETIC_SHARE:
                    sentences.append(_arithmetic_sentence(rng))
                else:
                    sentences.append(_domain_sentence(rng, domains[int(rng.integers(len(domains)))]))
        paragraphs.append(" ".join(sentences))
        written += len(sentences)
    return paragraphs


def pack_blocks(token_ids: list[list[int]], eos_id: int, block_size: int) -> torch.Tensor:
    """Concatenate tokenised paragraphs, each followed by ``eos_id``, into full blocks.

    Returns a LongTensor of shape ``(n_blocks, block_size)``; the incomplete tail is dropped.
    """
    stream = [token for ids in token_ids for token in (*ids, eos_id)]
    n_blocks = len(stream) // block_size
    if n_blocks == 0:
        raise ValueError(
            f"the pre-training corpus has {len(stream)} tokens, fewer than one block of {block_size}; "
            "raise pretrain.n_sentences or lower pretrain.block_size")
    return torch.tensor(stream[:n_blocks * block_size], dtype=torch.long).reshape(n_blocks, block_size)


# ----- model -----------------------------------------------------------------------------------


def build_tiny_model(config: ModelConfig, tokenizer):
    """Build a Llama-style causal LM with random weights (seeded by ``config.init_seed``).

    Input and output embeddings are tied; the key-value heads equal the attention heads.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    llama_config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size, num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads, num_key_value_heads=config.n_heads,
        max_position_embeddings=config.max_positions, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.init_seed)
        model = LlamaForCausalLM(llama_config)
    return model


# ----- schedule and batch order (shared with distillation) -----------------------------------


def warmup_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                    kind: str = "cosine") -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps``, then ``constant``, ``linear`` or ``cosine`` decay to 0.

    Factor of the peak rate at step t (counted from 0):
    ``(t + 1) / warmup`` during warm-up, then with ``u = (t - warmup) / (total - warmup)``:
    1 (constant), ``1 - u`` (linear) or ``(1 + cos(pi u)) / 2`` (cosine).
    """
    decays = {
        "constant": lambda u: 1.0,
        "linear": lambda u: max(0.0, 1.0 - u),
        "cosine": lambda u: 0.5 * (1.0 + math.cos(math.pi * min(1.0, u))),
    }
    if kind not in decays:
        raise ValueError(f"schedule must be one of {sorted(decays)}; got {kind!r}")
    decay = decays[kind]

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return decay((step - warmup_steps) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def epoch_positions(n_items: int, batch_size: int, step: int, seed: int, stream: int = 0) -> tuple[np.ndarray, dict]:
    """Indices of the items of ``step``'s batch: a fresh seeded permutation of all items per epoch.

    The batch of step t takes positions ``t * b .. t * b + b - 1`` of the endless sequence
    formed by the permutations of epochs 0, 1, ...; the permutation of epoch e is drawn
    from ``(seed, stream, e)``. The batch order is thus a pure function of the step, so
    a resumed run needs only the step number to continue with the same data.

    Returns
    -------
    indices : ndarray, shape (batch_size,), int64
    position : dict with ``epoch`` and ``offset`` of the first item (for the log)
    """
    if n_items < 1:
        raise ValueError("no items to draw batches from; check the data split")
    start = step * batch_size
    positions = np.arange(start, start + batch_size)
    epochs = positions // n_items
    indices = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(epochs):
        permutation = np.random.default_rng([seed, stream, int(epoch)]).permutation(n_items)
        chosen = epochs == epoch
        indices[chosen] = permutation[positions[chosen] % n_items]
    return indices, {"epoch": int(epochs[0]), "offset": int(start % n_items)}


# ----- pre-training loop -----------------------------------------------------------------------


def pretrain(model, tokenizer, config: PretrainConfig, run_dir: str | Path, device: torch.device,
             progress: bool = True) -> dict:
    """Pre-train ``model`` in place by next-token prediction on `generic_corpus`; resumable.

    Checkpoints (all weights, optimizer, scheduler, generator states) go to
    ``run_dir/checkpoints`` and one JSONL record per step to ``run_dir/log.jsonl``. A
    call on a folder with a checkpoint continues from it.

    Returns
    -------
    dict with ``steps``, ``final_loss`` (mean of the last 10 steps), ``n_blocks``, ``seconds``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    paragraphs = generic_corpus(config.n_sentences, config.seed)
    encoded = tokenizer(paragraphs, add_special_tokens=False)["input_ids"]
    blocks = pack_blocks(encoded, tokenizer.eos_token_id, config.block_size)

    model.to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    scheduler = warmup_schedule(optimizer, config.warmup_steps, config.steps, "cosine")
    manager = CheckpointManager(run_dir / "checkpoints", keep=2)
    log = StepLog(run_dir / "log.jsonl")

    start = 0
    saved = manager.load()
    if saved is not None:
        start, parts, _ = saved
        load_trainable_state(model, parts["model"])
        optimizer.load_state_dict(parts["optimizer"])
        scheduler.load_state_dict(parts["scheduler"])
        restore_rng_state(parts["rng"])
        logger.info("pre-training resumes at step %d from %s", start, manager.root)
    log.truncate_after(start - 1)

    began = time.perf_counter()
    losses = []
    for step in tqdm(range(start, config.steps), desc="pre-training", unit="step", disable=not progress,
                     initial=start, total=config.steps):
        # Batch of packed blocks (batch_size, block_size); the model shifts the labels.
        indices, position = epoch_positions(len(blocks), config.batch_size, step, config.seed, stream=1)
        batch = blocks[torch.from_numpy(indices)].to(device)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        losses.append(loss.item())
        log.append({"step": step, "loss": losses[-1], "grad_norm": grad_norm,
                    "lr": scheduler.get_last_lr()[0], **position})
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
            log.sync()
            manager.save(step + 1, {"model": trainable_state(model), "optimizer": optimizer.state_dict(),
                                    "scheduler": scheduler.state_dict(), "rng": capture_rng_state()})
    log.close()
    model.eval()
    history = [record["loss"] for record in log.records()]
    return {"steps": config.steps, "final_loss": float(np.mean(history[-10:])) if history else None,
            "n_blocks": int(len(blocks)), "seconds": time.perf_counter() - began}
