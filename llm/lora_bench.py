"""Benchmarks of one IGA LoRA training step against one plain LoRA step on the same tokens.

Registered in `iga_theory.benchmarks.REGISTRY` as ``lora_step``. Every timed function
runs a whole optimizer step on the same batch: forward pass, loss, backward pass and
AdamW step.

* ``plain``: PEFT LoRA with the model's own token-mean loss;
* ``tangent`` and ``full``: `LoraIGAProcessor` in that mode with the default
  configuration (placement ``update``, EMA remedy), through `LoraIGAOptimizer`;
* ``naive``: the direct way to get the full mode's numbers. One forward pass, then one
  backward pass per domain for the dense gradient of every LoRA layer's weight, the
  mask, a dense SVD per layer, the chain rule to the factors and the AdamW step.

Targets (ratios to ``plain``): ``<= 1.15`` for the tangent mode and ``<= 1.6`` for the
full mode; the naive way must be slower than the full mode (ratio naive / full >= 1).
On CPU the ratios are of process CPU time with one torch thread, because on a shared
machine the wall clock of one step varied by a factor of 2 between repeats; the
wall-clock times (default threads) are recorded beside them as ``wall_*``.
The model is a Llama-style model built from a config with random weights
(`lora_models.tiny_lora_model`), LoRA on ``q_proj`` and ``v_proj``; on a machine with
CUDA the model runs there in bfloat16.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from iga_theory.benchmarks.core import check_profile, machine_info, make_record, time_side_by_side
from iga_theory.llm.lora_hooks import find_lora_layers
from iga_theory.llm.lora_models import tiny_lora_model
from iga_theory.llm.lora_operator import LoraIGAConfig, pull_back, Direction
from iga_theory.llm.lora_processor import LoraIGAOptimizer, LoraIGAProcessor
from iga_theory.mask_torch import cross_domain_moments, mask_from_moments

# Model and batch per profile: hidden size, layers, heads, vocabulary, LoRA rank,
# sequences, tokens per sequence, domains.
STEP_SIZES = {
    "tiny": dict(hidden=64, layers=2, heads=4, vocab=256, r=4, batch=8, length=32, K=4),
    "quick": dict(hidden=256, layers=4, heads=4, vocab=2048, r=8, batch=16, length=128, K=4),
    "full": dict(hidden=512, layers=4, heads=8, vocab=4096, r=16, batch=16, length=256, K=4),
}
DEFAULT_REPEATS = {"tiny": 2, "quick": 5, "full": 5}
TANGENT_TARGET = 1.15
FULL_TARGET = 1.6


def _model(sizes: dict, device: str, dtype: torch.dtype):
    model = tiny_lora_model("llama", hidden_size=sizes["hidden"], n_layers=sizes["layers"], n_heads=sizes["heads"],
                            vocab_size=sizes["vocab"], max_positions=sizes["length"], r=sizes["r"],
                            lora_alpha=2.0 * sizes["r"], seed=0)
    return model.to(device=device, dtype=dtype)


def _adamw(model):
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)


def _plain_step(model, optimizer, x):
    def step():
        model(input_ids=x, labels=x).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return step


def _iga_step(model, optimizer, x, ids):
    def step():
        model(input_ids=x, labels=x, domain_ids=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return step


def _naive_step(model, optimizer, x, ids, K):
    """Per-domain dense weight gradients by K backward passes, mask, dense SVD, chain rule."""
    layers = find_lora_layers(model)
    weights = [ref.module.base_layer.weight for ref in layers]
    for weight in weights:
        weight.requires_grad_(True)
    config = LoraIGAConfig(mode="full", placement="gradient")

    def step():
        logits = model(input_ids=x).logits
        token = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), x[:, 1:].reshape(-1),
                                reduction="none").reshape(x.shape[0], -1)
        losses = [token[ids == e].mean() for e in range(K)]
        per_domain = [torch.autograd.grad(loss, weights, retain_graph=e < K - 1) for e, loss in enumerate(losses)]
        for i, ref in enumerate(layers):
            G = torch.stack([grads[i].float() for grads in per_domain]).reshape(K, -1)
            mu, s2 = cross_domain_moments(G)
            D = (mask_from_moments(mu, s2, K) * mu).reshape(ref.shape)
            U, S, Vh = torch.linalg.svd(D, full_matrices=False)
            r = ref.rank
            grad_B, grad_A = pull_back(ref, Direction(U[:, :r] * S[:r], Vh[:r]), D.dtype)
            ref.lora_B.grad = grad_B.to(ref.lora_B.dtype)
            ref.lora_A.grad = grad_A.to(ref.lora_A.dtype)
        optimizer.step()
        optimizer.zero_grad()
    return step


def time_cpu_side_by_side(functions: dict, repeats: int) -> dict[str, float]:
    """Return the minimum process CPU time of each function over ``repeats`` interleaved rounds, after one warm-up."""
    for function in functions.values():
        function()
    best = {name: float("inf") for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.process_time()
            function()
            best[name] = min(best[name], time.process_time() - start)
    return best


def bench_lora_step(profile: str = "full", repeats: int | None = None) -> list[dict]:
    """Time one IGA LoRA step (tangent and full modes, and the naive way) against plain LoRA."""
    check_profile(profile)
    repeats = DEFAULT_REPEATS[profile] if repeats is None else repeats
    sizes = dict(STEP_SIZES[profile])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    K = sizes["K"]

    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, sizes["vocab"], (sizes["batch"], sizes["length"]), generator=generator).to(device)
    ids = (torch.arange(sizes["batch"]) % K).to(device)

    steps = {}
    model = _model(sizes, device, dtype)
    steps["plain"] = _plain_step(model, _adamw(model), x)
    processors = {}
    for mode in ("tangent", "full"):
        model = _model(sizes, device, dtype)
        processors[mode] = LoraIGAProcessor(model, K, LoraIGAConfig(mode=mode))
        processors[mode].attach()
        steps[mode] = _iga_step(model, LoraIGAOptimizer(_adamw(model), processors[mode]), x, ids)
    model = _model(sizes, device, dtype)
    steps["naive"] = _naive_step(model, _adamw(model), x, ids, K)

    timed = {name: (lambda step=step: (step(), synchronize())) for name, step in steps.items()}
    if device == "cpu":
        # Process CPU time with one thread: other processes on a shared machine do not
        # count, and no thread pool spins while it waits.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            times = time_cpu_side_by_side(timed, repeats)
        finally:
            torch.set_num_threads(threads)
        wall = time_side_by_side(timed, repeats)
        times.update({f"wall_{name}": value for name, value in wall.items()})
        clock = "process CPU time, 1 thread"
    else:
        times = time_side_by_side(timed, repeats)
        clock = "wall clock"
    for processor in processors.values():
        processor.detach()

    sizes.update(device=device, target_modules=["q_proj", "v_proj"], placement="update", remedy="ema", clock=clock)
    machine = machine_info()
    dtype_name = str(dtype).replace("torch.", "")
    note = ("a tiny model spends most of its step in Python and framework overhead, which the "
            "per-layer hooks and the operator add to; the ratio falls as the model grows")
    return [
        make_record("lora_step_tangent", times["tangent"] / times["plain"], TANGENT_TARGET, "<=", sizes, dtype_name,
                    times, "IGA step, mode tangent / plain LoRA step, same tokens", note, machine=machine),
        make_record("lora_step_full", times["full"] / times["plain"], FULL_TARGET, "<=", sizes, dtype_name,
                    times, "IGA step, mode full / plain LoRA step, same tokens", note, machine=machine),
        make_record("lora_step_naive_vs_full", times["naive"] / times["full"], 1.0, ">=", sizes, dtype_name,
                    times, "naive step (one backward per domain, dense SVD per layer) / IGA full-mode step",
                    "the naive way's extra backward passes are cheap at this size", machine=machine),
    ]
