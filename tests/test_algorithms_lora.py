"""The IGA LoRA step in the harness: reduction to ERM, training on S4, applicability."""

import numpy as np
import pytest
import torch

from iga_theory.synthetic.algorithms import METHOD_VARIANTS, algorithm_class
from iga_theory.synthetic.benchmarks import build_environment, parse_benchmark, train_method
from iga_theory.synthetic.compare import sweep_config, sweep_tasks
from iga_theory.synthetic.per_domain import (domain_losses, linear_predictor, per_domain_gradients,
                                             per_domain_weight_gradients)


@pytest.fixture(scope="module")
def s4_env():
    return build_environment(parse_benchmark("s4", n_train=128, n_val=16, n_test=16, n_heldout_domains=2,
                                             n_isomer_domains=2, n_isomer_sets=4), 0)


def test_weight_gradients_chain_rule(s4_env):
    # dL/dB = (alpha/r) G A^T and dL/dA = (alpha/r) B^T G for the weight gradient G.
    predictor = s4_env.predictor
    lora = predictor.lora
    theta = torch.as_tensor(np.random.default_rng(0).standard_normal(predictor.n_params))
    X, y = s4_env.data["train"]
    X, y = X[:, :10], y[:, :10]
    G = per_domain_weight_gradients(predictor, theta, X, y)
    B, A = lora.factors(theta)
    scale = lora.alpha / lora.rank
    expected = torch.cat([(scale * G @ A.T).reshape(len(G), -1), (scale * B.T @ G).reshape(len(G), -1)], dim=1)
    torch.testing.assert_close(per_domain_gradients(predictor, theta, X, y), expected, rtol=1e-12, atol=1e-14)


def test_lora_step_reduces_to_erm_when_domains_agree(s4_env):
    # Identical domains give mask 1, and a batch of n <= r samples gives a weight gradient
    # of rank <= r, which the rank-r projection keeps: the step is ERM's gradient.
    predictor = s4_env.predictor
    rank = predictor.lora.rank
    X, y = s4_env.data["train"]
    X = X[:1, :rank].repeat(4, 1, 1)
    y = y[:1, :rank].repeat(4, 1, 1)
    iga = algorithm_class("iga_lora")(predictor, 4, seed=1)
    erm = algorithm_class("erm")(predictor, 4, seed=1)
    for _ in range(3):
        direction = iga.direction(X, y).gradient
        torch.testing.assert_close(direction, erm.direction(X, y).gradient, rtol=1e-9, atol=1e-12)
        iga.step(X, y)
        erm.step(X, y)


@pytest.mark.parametrize("variant", ["iga_lora-sgd", "iga_lora-adam"])
def test_lora_step_trains_under_defaults(s4_env, variant):
    method = METHOD_VARIANTS[variant]
    start = s4_env.predictor.init(np.random.default_rng(0))
    trained, _ = train_method(s4_env, method.algorithm, None, optimizer=method.optimizer, seed=0, steps=40)
    theta = trained.parameters()
    assert np.linalg.norm(theta - start) > 1e-2
    X, y = s4_env.data["train"]
    before = float(domain_losses(s4_env.predictor, torch.as_tensor(start), X, y).mean())
    after = float(domain_losses(s4_env.predictor, torch.as_tensor(theta), X, y).mean())
    assert after < 0.9 * before
    # The mask keeps the shortcut entry of W out of the adapter.
    assert float(s4_env.model.spurious_weight(s4_env.to_model_theta(theta))) < 0.05


def test_lora_step_rejections(s4_env):
    with pytest.raises(ValueError, match="LoRA predictor"):
        algorithm_class("iga_lora")(linear_predictor(4, "squared"), 3)
    with pytest.raises(ValueError, match="has no mask"):
        algorithm_class("iga_lora")(s4_env.predictor, 8, placement="update")
    with pytest.raises(NotImplementedError, match="noise_correction"):
        algorithm_class("iga_lora")(s4_env.predictor, 8, {"noise": "noise_correction"})


def test_sweep_runs_lora_step_on_lora_benchmark_only():
    tasks = sweep_tasks(sweep_config(benchmarks=["s1", "s4"], variants=["plain"], methods=["erm", "iga_lora"],
                                     seeds=1, n_hparams=1, lodo_folds=0))
    pairs = {(spec.name, method.name) for spec, method, *_ in tasks}
    assert pairs == {("s1", "erm"), ("s4", "erm"), ("s4", "iga_lora-sgd"), ("s4", "iga_lora-adam")}
