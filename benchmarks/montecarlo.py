"""Benchmarks of the Monte Carlo engines behind ``iga validate``.

* ``montecarlo_bernstein``: the Theorem 2 bound over R replications of K domain risks,
  the numba kernel against vectorised numpy (ratio: numpy's time over numba's; the
  record passes when numba is at least as fast, which is why the coverage loops of
  ``iga validate`` use it) and against a Python loop over
  `iga_theory.bounds.bernstein_bound` (reported in ``times_s``).
* ``montecarlo_training``: R full-batch IGA runs on S1 at once
  (`iga_theory.montecarlo.train_population_batched`) against R calls of the per-run
  reference loop `iga_theory.synthetic.training.train_population` (target: >= 5x).
"""

from __future__ import annotations

import numpy as np

from iga_theory import bounds
from iga_theory import montecarlo as mc
from iga_theory.benchmarks.core import check_profile, make_record, time_side_by_side

SIZES = {
    "tiny": {"R": 200, "K": 32, "runs": 4, "steps": 20},
    "quick": {"R": 20_000, "K": 64, "runs": 32, "steps": 100},
    "full": {"R": 200_000, "K": 128, "runs": 128, "steps": 300},
}


def bench_bernstein(profile: str = "quick", repeats: int = 5) -> list[dict]:
    """Time the numba kernel against vectorised numpy (and a Python loop) for the Theorem 2 bound."""
    size = SIZES[check_profile(profile)]
    rng = np.random.default_rng(0)
    risks = rng.uniform(size=(size["R"], size["K"]))
    B = np.ones(size["R"])
    loop_rows = risks[: min(size["R"], 2000)]
    times = time_side_by_side({
        "numpy": lambda: mc.bernstein_bounds(risks, B, 0.05),
        "numba": lambda: mc.bernstein_bounds_numba(risks, B, 0.05),
        "python_loop_2000_rows": lambda: [bounds.bernstein_bound(row, 1.0, 0.05) for row in loop_rows],
    }, repeats)
    return [make_record(
        "montecarlo_bernstein", times["numpy"] / times["numba"], 1.0, ">=",
        {"R": size["R"], "K": size["K"]}, "float64", times,
        "speed-up of the numba Bernstein kernel over vectorised numpy (the coverage loops use numba)",
        note_if_failed="numpy is faster than numba here; the coverage loops could use bernstein_bounds instead")]


def bench_training(profile: str = "quick", repeats: int = 3) -> list[dict]:
    """Time R batched full-batch IGA runs against R calls of the per-run reference loop, on S1."""
    from iga_theory.synthetic.models import Domain, make_model
    from iga_theory.synthetic.training import MaskOptions, train_population

    size = SIZES[check_profile(profile)]
    model = make_model("s1")
    betas, scales = mc.draw_domain_arrays(model, size["runs"], 8, np.random.default_rng(1))
    domains = [[Domain(b, s) for b, s in zip(rb, rs)] for rb, rs in zip(betas, scales)]
    steps = size["steps"]

    def batched():
        mc.train_population_batched(model, betas, scales, "iga", steps, 0.1, mask_options={"kappa0": 20.0},
                                    record_every=steps)

    def reference():
        for run_domains in domains:
            train_population(model, run_domains, "iga", steps, 0.1, np.zeros(model.n_params),
                             MaskOptions(kappa0=20.0))

    times = time_side_by_side({"batched": batched, "reference_loop": reference}, repeats)
    return [make_record(
        "montecarlo_training", times["reference_loop"] / times["batched"], 5.0, ">=",
        {"runs": size["runs"], "K": 8, "steps": steps, "P": model.n_params}, "float64", times,
        "speed-up of the batched population trainer over the per-run loop",
        note_if_failed="the batched trainer is less than 5x faster than the per-run loop at these sizes")]
