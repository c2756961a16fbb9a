"""Registry of the comparison harness: every algorithm, and the method variants the sweep runs.

An algorithm (`ALGORITHMS`) is one update rule; a method variant (`METHOD_VARIANTS`)
is an algorithm with an optimizer and a mask placement. Methods without a mask run
under Adam (DomainBed's optimizer for every method). The mask methods (AND-mask,
SAND-mask, IGA) run three ways: SGD, Adam with the mask on the gradient, and Adam with
the mask on the update. Under plain SGD the two placements take the same step, so the
SGD variant stands for both. The IGA LoRA step (LoRA benchmarks only) masks the
weight W rather than theta, so it has no update placement, and it runs under SGD and
under Adam.
"""

from __future__ import annotations

from dataclasses import dataclass

from iga_theory.synthetic import algorithms_gradient, algorithms_penalty  # noqa: F401  (registration)
from iga_theory.synthetic.algorithms_base import (ALGORITHMS, BASE_HPARAMS, Algorithm, Direction,
                                                  HParam, StepResult, algorithm_class, draw_hparams)

# Display names of the algorithms, in table order.
ALGORITHM_LABELS: dict[str, str] = {
    "erm": "ERM",
    "irm": "IRM",
    "vrex": "V-REx",
    "groupdro": "GroupDRO",
    "fishr": "Fishr",
    "koyama_yamaguchi": "Grad. alignment (K&Y)",
    "pcgrad": "PCGrad",
    "and_mask": "AND-mask",
    "sand_mask": "SAND-mask",
    "iga": "IGA",
    "iga_lora": "IGA LoRA step",
}

OPTIMIZER_LABELS = {"sgd": "SGD", "adam": "Adam"}


@dataclass(frozen=True)
class MethodVariant:
    """An algorithm run with one optimizer and one mask placement."""

    name: str
    algorithm: str
    optimizer: str
    placement: str

    @property
    def label(self) -> str:
        """Table label, e.g. ``"IGA (Adam, update)"``."""
        base = ALGORITHM_LABELS.get(self.algorithm, self.algorithm)
        cls = algorithm_class(self.algorithm)
        if not cls.has_mask:
            return base if len(cls.optimizers) == 1 else f"{base} ({OPTIMIZER_LABELS[self.optimizer]})"
        if self.optimizer == "sgd":
            return f"{base} (SGD)"
        return f"{base} ({OPTIMIZER_LABELS[self.optimizer]}, {self.placement})"


def _variants() -> dict[str, MethodVariant]:
    variants = {}
    for name in ALGORITHM_LABELS:
        if algorithm_class(name).has_mask:
            for suffix, optimizer, placement in (("sgd", "sgd", "gradient"),
                                                 ("adam-gradient", "adam", "gradient"),
                                                 ("adam-update", "adam", "update")):
                variants[f"{name}-{suffix}"] = MethodVariant(f"{name}-{suffix}", name, optimizer, placement)
        elif len(algorithm_class(name).optimizers) == 1:
            variants[name] = MethodVariant(name, name, algorithm_class(name).optimizers[0], "gradient")
        else:
            for optimizer in algorithm_class(name).optimizers:
                variants[f"{name}-{optimizer}"] = MethodVariant(f"{name}-{optimizer}", name, optimizer, "gradient")
    return variants


METHOD_VARIANTS: dict[str, MethodVariant] = _variants()


def resolve_methods(names: list[str] | None) -> list[MethodVariant]:
    """Method variants selected by variant or algorithm names (an algorithm selects all its variants).

    ``None`` selects every variant, in table order.
    """
    if names is None:
        return list(METHOD_VARIANTS.values())
    selected: list[MethodVariant] = []
    for name in names:
        if name in METHOD_VARIANTS:
            matches = [METHOD_VARIANTS[name]]
        elif name in ALGORITHMS:
            matches = [v for v in METHOD_VARIANTS.values() if v.algorithm == name]
        else:
            raise ValueError(
                f"unknown method {name!r}; choose algorithms {sorted(ALGORITHMS)} or variants "
                f"{sorted(METHOD_VARIANTS)}"
            )
        selected += [m for m in matches if m not in selected]
    return selected


__all__ = [
    "ALGORITHMS", "ALGORITHM_LABELS", "Algorithm", "BASE_HPARAMS", "Direction", "HParam",
    "METHOD_VARIANTS", "MethodVariant", "StepResult", "algorithm_class", "draw_hparams",
    "resolve_methods",
]
