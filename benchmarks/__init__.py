"""Benchmarks of the performance targets, run by ``iga bench``.

`REGISTRY` maps a benchmark name to ``"module:function"``. Each function takes
``profile`` (``"tiny"``, ``"quick"`` or ``"full"``, which sets the sizes) and
``repeats`` (timed repetitions per measurement) and returns a list of records built
with `iga_theory.benchmarks.core.make_record`. To add a benchmark, write such a
function in any module and add one line here; ``iga bench`` imports it only when it
runs.
"""

from __future__ import annotations

REGISTRY: dict[str, str] = {
    "mask_kernel": "iga_theory.benchmarks.operators:bench_mask_kernel",
    "mask_numba_vs_numpy": "iga_theory.benchmarks.operators:bench_numba_vs_numpy",
    "randomized_projection": "iga_theory.benchmarks.operators:bench_randomized_projection",
    "thin_retraction": "iga_theory.benchmarks.operators:bench_thin_retraction",
    "montecarlo_bernstein": "iga_theory.benchmarks.montecarlo:bench_bernstein",
    "montecarlo_training": "iga_theory.benchmarks.montecarlo:bench_training",
    "lora_step": "iga_theory.llm.lora_bench:bench_lora_step",
}
