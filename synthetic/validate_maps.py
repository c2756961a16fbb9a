"""Sensitivity maps of the mask on S1: where IGA beats ERM and where it loses to it.

* `tau_kappa_map`: full-batch IGA over a grid of thresholds tau and sharpness values
  kappa0; the shifted-domain risk and the expected risk over Q against ERM's.
* `statistics_map`: minibatch SGD with each statistics option of the mask (the same
  minibatch, a lagged EMA at two rates, an independent minibatch, the noise
  correction) over minibatch sizes; the final shifted-domain risk against ERM's
  trained by the same SGD.
"""

from __future__ import annotations

import numpy as np

from iga_theory import montecarlo as mc
from iga_theory.synthetic.models import Domain, make_model
from iga_theory.synthetic.validate_common import cell_rng, make_measurement

MAP_STREAM, STATISTICS_STREAM = 40, 41
# (label, statistics option, EMA rate) of the statistics map.
STATISTICS_OPTIONS = (("same minibatch", "same", 0.0), ("EMA 0.9 (lagged)", "ema", 0.9),
                      ("EMA 0.99 (lagged)", "ema", 0.99), ("independent minibatch", "independent", 0.0),
                      ("noise corrected", "noise_corrected", 0.0))
SGD_ETA_SCALE = 0.5  # eta = 0.5 / L: stable for every minibatch size of the map


def tau_kappa_map(config) -> dict:
    """Shifted-domain and expected risk of IGA over (tau, kappa0), against ERM, on S1."""
    c = config.maps
    model = make_model("s1")
    rng = cell_rng(config.seed, MAP_STREAM)
    betas, scales = mc.draw_domain_arrays(model, c.replications, c.n_domains, rng)
    domains = [[Domain(b, s) for b, s in zip(rb, rs)] for rb, rs in zip(betas, scales)]
    eta = np.array([1.0 / model.smoothness(d) for d in domains])
    erm = np.array([model.erm_solution(d) for d in domains])
    shifted = model.shifted_domain()
    erm_shifted = float(np.mean([model.risk(theta, shifted) for theta in erm]))
    erm_expected = float(np.mean([model.expected_risk(theta) for theta in erm]))

    shifted_map = np.empty((len(c.taus), len(c.kappas)))
    expected_map = np.empty_like(shifted_map)
    for i, tau in enumerate(c.taus):
        for j, kappa in enumerate(c.kappas):
            thetas = mc.train_population_batched(model, betas, scales, "iga", c.steps, eta,
                                                 mask_options={"tau": tau, "kappa0": kappa},
                                                 record_every=c.steps).thetas
            shifted_map[i, j] = np.mean([model.risk(theta, shifted) for theta in thetas])
            expected_map[i, j] = np.mean([model.expected_risk(theta) for theta in thetas])
    oracle = model.invariant_solution()
    summary = {"taus": list(c.taus), "kappas": list(c.kappas), "shifted": shifted_map.tolist(),
               "expected": expected_map.tolist(), "erm_shifted": erm_shifted, "erm_expected": erm_expected,
               "oracle_shifted": float(model.risk(oracle, shifted)),
               "oracle_expected": float(model.expected_risk(oracle)), "K": c.n_domains, "steps": c.steps}
    measurements = [make_measurement(
        "maps_tau_kappa", "T3",
        f"share of (tau, kappa0) settings where IGA's mean shifted-domain risk is below ERM's "
        f"(K = {c.n_domains}, {c.steps} full-batch steps)",
        float((shifted_map < erm_shifted).mean()), erm_shifted=erm_shifted,
        best_iga_shifted=float(shifted_map.min()), worst_iga_shifted=float(shifted_map.max()))]
    return {"checks": [], "measurements": measurements, "figures": {"tau_kappa": summary}}


def statistics_map(config) -> dict:
    """Final shifted-domain risk of minibatch IGA per statistics option and minibatch size."""
    c = config.maps
    model = make_model("s1")
    domains = model.draw_domains(c.n_domains, cell_rng(config.seed, STATISTICS_STREAM))
    eta = SGD_ETA_SCALE / model.smoothness(domains)
    shifted = model.shifted_domain()
    table = np.empty((len(STATISTICS_OPTIONS) + 1, len(c.batches)))
    for j, n in enumerate(c.batches):
        for i, (_, statistics, rho) in enumerate(STATISTICS_OPTIONS):
            run = mc.sgd_s1_batched(model, domains, c.sgd_steps, eta, n, c.sgd_replications,
                                    cell_rng(config.seed, STATISTICS_STREAM, i, n), statistics=statistics,
                                    rho=rho, mask_options={"kappa0": 20.0})
            table[i, j] = np.mean([model.risk(theta, shifted) for theta in run.final_thetas])
        erm = mc.sgd_s1_batched(model, domains, c.sgd_steps, eta, n, c.sgd_replications,
                                cell_rng(config.seed, STATISTICS_STREAM, 99, n), method="erm")
        table[-1, j] = np.mean([model.risk(theta, shifted) for theta in erm.final_thetas])
    labels = [label for label, _, _ in STATISTICS_OPTIONS] + ["ERM (same SGD)"]
    summary = {"labels": labels, "batches": list(c.batches), "shifted": table.tolist(),
               "oracle_shifted": float(model.risk(model.invariant_solution(), shifted)),
               "steps": c.sgd_steps, "K": c.n_domains}
    best = {labels[i]: bool(np.all(table[i] < table[-1])) for i in range(len(STATISTICS_OPTIONS))}
    measurements = [make_measurement(
        "maps_statistics_options", "T3",
        "statistics options whose IGA beats ERM's shifted-domain risk at every minibatch size", best)]
    return {"checks": [], "measurements": measurements, "figures": {"statistics": summary}}
