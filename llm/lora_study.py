"""Which placement of the mask suits LoRA under AdamW: a measurement on a synthetic LM task.

Task. Tokens ``0 .. 2n-1`` of a vocabulary of ``2n``. On the *shared* tokens
``0 .. n-1`` every domain follows the same rule, ``next = (x + 1) mod n``. On the
*domain* tokens ``n .. 2n-1`` domain ``e`` follows its own random permutation
``next = n + pi_e(x - n)``; the only fact all domains share there is that the next
token is again a domain token. Training sequences follow their domain's rule with
probability ``1 - jump`` per position and jump to a uniform random token otherwise.

Evaluation on an unseen domain (a new permutation), with rule-following sequences:

* ``shared_loss``: mean token loss on sequences of shared tokens (what every domain
  agrees on; lower is better, 0 is perfect);
* ``domain_loss``: mean token loss on sequences of domain tokens. The invariant
  predictor puts probability ``1 / n`` on each domain token and scores ``log n``. A
  model that learnt the training domains' permutations puts its mass on their
  successors, so it does worse than that on a new permutation.

Runs: plain LoRA (the ERM baseline) and IGA in both placements, all under AdamW with
the same seed, data and learning rate. Run ``python -m iga_theory.llm.lora_study`` to
print the table that docs/llm.md reports.
"""

from __future__ import annotations

import argparse
import json
import logging
import math

import torch

from iga_theory.llm.lora_models import tiny_lora_model
from iga_theory.llm.lora_operator import LoraIGAConfig
from iga_theory.llm.lora_processor import LoraIGAOptimizer, LoraIGAProcessor

logger = logging.getLogger(__name__)

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def make_domains(n: int, n_domains: int, seed: int) -> list[torch.Tensor]:
    """Draw one random permutation of ``0 .. n-1`` per domain (the last one is held out)."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randperm(n, generator=generator) for _ in range(n_domains)]


def sample(n: int, permutation: torch.Tensor, n_sequences: int, length: int, jump: float,
           generator: torch.Generator, start: str = "any") -> torch.Tensor:
    """Sequences of one domain: shape ``(n_sequences, length)``, int64."""
    x = torch.empty(n_sequences, length, dtype=torch.long)
    low, high = {"any": (0, 2 * n), "shared": (0, n), "domain": (n, 2 * n)}[start]
    x[:, 0] = torch.randint(low, high, (n_sequences,), generator=generator)
    for t in range(1, length):
        previous = x[:, t - 1]
        shared = previous < n
        following = torch.where(shared, (previous + 1) % n, n + permutation[(previous - n).clamp(min=0)])
        jumps = torch.rand(n_sequences, generator=generator) < jump
        random_tokens = torch.randint(0, 2 * n, (n_sequences,), generator=generator)
        x[:, t] = torch.where(jumps, random_tokens, following)
    return x


def evaluate(model, n: int, permutation: torch.Tensor, seed: int) -> dict[str, float]:
    """Held-out losses on rule-following sequences of the unseen domain."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    model.eval()
    with torch.no_grad():
        for start in ("shared", "domain"):
            x = sample(n, permutation, 64, 16, 0.0, generator, start=start)
            logits = model(input_ids=x).logits[:, :-1]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
            out[f"{start}_loss"] = float(loss)
    model.train()
    return out


def masked_share(processor: LoraIGAProcessor, outcomes: dict, before: dict, threshold: float = 0.5) -> float:
    """Share of the step's first-order weight move that lands on coordinates with mask < threshold.

    ``||move[m < threshold]|| / ||move||`` over all layers, with the move
    ``s (dB A + B dA)`` expressed in each layer's tangent coordinates at the old point
    (mode ``tangent``). A placement that honours the mask shrinks the moves there by
    their mask values. Where Adam undoes the mask, they stay about as large as the rest.
    """
    from iga_theory.llm.lora_operator import domain_vectors

    masked_energy = 0.0
    total_energy = 0.0
    for ref in processor.layers:
        basis, outcome = outcomes[ref.name]
        B_old, A_old = before[ref.name]
        dB = ref.lora_B.detach() - B_old
        dA = ref.lora_A.detach() - A_old
        move = ref.scaling * (dB @ A_old + B_old @ dA)
        coords = domain_vectors("tangent", {"GV": (move @ basis.V.Y)[None], "UG": (basis.U.Y.T @ move)[None]},
                                basis)[0]
        masked = outcome.mask < threshold
        masked_energy += float(coords[masked].square().sum())
        total_energy += float(coords.square().sum())
    return math.sqrt(masked_energy / total_energy) if total_energy > 0 else 0.0


def run(method: str, steps: int = 300, n: int = 8, n_domains: int = 4, per_domain: int = 8, length: int = 16,
        jump: float = 0.2, lr: float = 1e-2, seed: int = 0, mode: str = "tangent",
        tau: float | None = None) -> dict[str, float]:
    """Train one method and return its held-out losses (and, for IGA, the masked share of its moves).

    Parameters
    ----------
    method : {"plain", "gradient", "update"}
        Plain LoRA, or IGA with that placement.
    tau : float or None
        IGA's conflict threshold; None takes the default for the number of domains.
    """
    permutations = make_domains(n, n_domains + 1, seed)
    model = tiny_lora_model("llama", hidden_size=64, n_layers=2, n_heads=4, vocab_size=2 * n, r=8,
                            lora_alpha=16.0, target_modules=ALL_LINEAR, seed=seed)
    inner = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    processor = None
    if method == "plain":
        optimizer = inner
    else:
        processor = LoraIGAProcessor(model, n_domains, LoraIGAConfig(mode=mode, placement=method, tau=tau))
        processor.attach()
        optimizer = LoraIGAOptimizer(inner, processor)
    shares = []

    generator = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        x = torch.cat([sample(n, permutations[e], per_domain, length, jump, generator) for e in range(n_domains)])
        ids = torch.arange(n_domains).repeat_interleave(per_domain)
        if processor is None:
            loss = model(input_ids=x, labels=x).loss
        else:
            loss = model(input_ids=x, labels=x, domain_ids=ids).loss
        loss.backward()
        if processor is not None and mode == "tangent":
            # Prepare the step here so that its masks and bases can be read afterwards.
            processor.prepare_step()
            outcomes = processor.prepared_outcomes
            before = processor.snapshot_factors()
            optimizer.step()
            shares.append(masked_share(processor, outcomes, before))
        else:
            optimizer.step()
        optimizer.zero_grad()
    if processor is not None:
        processor.detach()

    result = evaluate(model, n, permutations[-1], seed + 2)
    result["invariant_domain_loss"] = math.log(n)
    if processor is not None:
        result["mask_mean"] = processor.summary().get("iga/mask_mean", float("nan"))
        if shares:
            result["masked_share_of_moves"] = sum(shares) / len(shares)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compare mask placements for LoRA under AdamW.")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run (default: 300)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    parser.add_argument("--mode", choices=("tangent", "full"), default="tangent", help="IGA mode (default: tangent)")
    parser.add_argument("--tau", type=float, nargs="+", default=[None],
                        help="IGA conflict thresholds to compare (default: the default for K domains)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for seed in args.seeds:
        rows.append({"seed": seed, "method": "plain", **run("plain", steps=args.steps, seed=seed)})
        print(json.dumps(rows[-1]), flush=True)
        for tau in args.tau:
            for method in ("gradient", "update"):
                result = run(method, steps=args.steps, seed=seed, mode=args.mode, tau=tau)
                rows.append({"seed": seed, "method": method, "tau": tau, **result})
                print(json.dumps(rows[-1]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
