"""Every method trains under its own defaults; placements; hyperparameter seeding; the registry."""

import numpy as np
import pytest
import torch

from iga_theory.errors import NonFiniteError
from iga_theory.synthetic.algorithms import (ALGORITHMS, METHOD_VARIANTS, algorithm_class, draw_hparams,
                                             resolve_methods)
from iga_theory.synthetic.algorithms_base import Choice, HParam, LogUniform, Uniform
from iga_theory.synthetic.benchmarks import build_environment, parse_benchmark, train_method
from iga_theory.synthetic.per_domain import domain_losses, linear_predictor

STEPS = 40


@pytest.fixture(scope="module")
def s1_env():
    return build_environment(parse_benchmark("s1", n_train=128, n_val=16, n_test=16, n_isomer_sets=4,
                                             n_isomer_domains=2, n_heldout_domains=2), 0)


def _pooled_loss(env, theta) -> float:
    X, y = env.data["train"]
    return float(domain_losses(env.predictor, torch.as_tensor(theta), X, y).mean())


# The IGA LoRA step needs a LoRA model; tests/test_algorithms_lora.py trains it on S4.
S1_VARIANTS = sorted(name for name, v in METHOD_VARIANTS.items() if not algorithm_class(v.algorithm).requires_lora)


@pytest.mark.parametrize("variant", S1_VARIANTS)
def test_method_trains_under_defaults(s1_env, variant):
    method = METHOD_VARIANTS[variant]
    start = s1_env.predictor.init(np.random.default_rng(0))
    trained, history = train_method(s1_env, method.algorithm, None, optimizer=method.optimizer,
                                    placement=method.placement, seed=0, steps=STEPS)
    theta = trained.parameters()
    moved = float(np.linalg.norm(theta - start))
    assert moved > 1e-2, f"{variant} moved theta by only {moved:.3g} in {STEPS} steps"
    before, after = _pooled_loss(s1_env, start), _pooled_loss(s1_env, theta)
    assert after < 0.9 * before, f"{variant}: pooled training loss {before:.4f} -> {after:.4f}"
    assert len(history["loss"]) == STEPS


# ----- placements ---------------------------------------------------------------------------------


def _batches(env, steps, seed=0):
    X, y = env.data["train"]
    generator = torch.Generator().manual_seed(seed)
    rows = torch.arange(X.shape[0])[:, None]
    for _ in range(steps):
        index = torch.randint(X.shape[1], (X.shape[0], 16), generator=generator)
        yield X[rows, index], y[rows, index]


@pytest.mark.parametrize("algorithm", ["iga", "and_mask", "sand_mask"])
def test_placements_agree_under_sgd(s1_env, algorithm):
    runs = {}
    for placement in ("gradient", "update"):
        method = algorithm_class(algorithm)(s1_env.predictor, s1_env.n_train_domains, optimizer="sgd",
                                            placement=placement, base_lr=0.05, seed=1)
        for X, y in _batches(s1_env, 20):
            method.step(X, y)
        runs[placement] = method.parameters()
    # theta - lr (m * mu) and theta + m * (-lr mu) differ by rounding only.
    np.testing.assert_allclose(runs["gradient"], runs["update"], rtol=1e-12, atol=1e-14)


def test_adam_update_placement_keeps_mask(s1_env):
    # A floor of 1e-6 leaves the conflicting (spurious) coordinates of S1 at mask 1e-6.
    # Adam divides by the running RMS of the masked gradient, so the gradient placement
    # undoes the mask. The update placement scales Adam's step by 1e-6 instead.
    model = s1_env.model
    spurious = ~model.invariant_mask
    moves = {}
    for placement in ("gradient", "update"):
        method = algorithm_class("iga")(s1_env.predictor, s1_env.n_train_domains, {"m_min": 1e-6},
                                        optimizer="adam", placement=placement, base_lr=0.01, seed=1)
        masks = []
        for X, y in _batches(s1_env, 30):
            masks.append(method.step(X, y).diagnostics["mask_min"])
        moves[placement] = float(np.abs(model.to_unrotated(method.parameters())[spurious]).max())
        assert min(masks) == pytest.approx(1e-6, rel=1e-6)
    lr, steps = 0.01, 30
    # Adam's step is at most about lr per coordinate: 30 steps move at most 0.3, and the
    # masked update placement at most 1e-6 of that.
    assert moves["update"] <= 1e-6 * lr * steps * 1.01
    assert moves["gradient"] > 1e3 * moves["update"]


def test_update_placement_rejected_without_mask(s1_env):
    with pytest.raises(ValueError, match="has no mask"):
        algorithm_class("erm")(s1_env.predictor, 8, placement="update")


# ----- hyperparameters ----------------------------------------------------------------------------


def test_draw_zero_is_defaults():
    for name, cls in ALGORITHMS.items():
        assert cls.random_hparams(0) == cls.default_hparams(), name


def test_hparams_seeded_by_name():
    a = HParam("alpha", 1.0, LogUniform(-2, 2), "first")
    b = HParam("beta", 0.5, Uniform(0, 1), "second")
    for seed in range(1, 6):
        alone = draw_hparams((a,), seed)
        together = draw_hparams((b, a), seed)
        assert alone["alpha"] == together["alpha"]   # adding beta does not shift alpha
    draws = [draw_hparams((a,), seed)["alpha"] for seed in range(1, 30)]
    assert len(set(draws)) == len(draws)
    assert all(1e-2 <= value <= 1e2 for value in draws)


def test_shared_hparam_draw_is_shared_across_algorithms():
    values = {name: cls.random_hparams(3)["lr_factor"] for name, cls in ALGORITHMS.items()}
    assert len(set(values.values())) == 1


def test_random_hparams_inside_search_space():
    for name, cls in ALGORITHMS.items():
        for declaration in cls.hparam_declarations():
            search = declaration.search
            for seed in range(1, 8):
                value = cls.random_hparams(seed)[declaration.name]
                if isinstance(search, Choice):
                    assert value in search.options, (name, declaration.name, value)
                elif isinstance(search, Uniform):
                    assert search.low <= value <= search.high, (name, declaration.name, value)
                else:   # LogUniform and IntLogUniform draw 10^U(low, high), the latter rounded down
                    assert int(10 ** search.low) <= value <= 10 ** search.high, (name, declaration.name, value)


def test_unknown_hparam_rejected(s1_env):
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        algorithm_class("irm")(s1_env.predictor, 8, {"irm_lamda": 1.0})


def test_negative_hparam_seed_rejected():
    with pytest.raises(ValueError, match="hparam_seed"):
        algorithm_class("erm").random_hparams(-1)


# ----- registry and validation --------------------------------------------------------------------


def test_registry_holds_every_algorithm():
    assert set(ALGORITHMS) == {"erm", "irm", "vrex", "groupdro", "fishr", "koyama_yamaguchi", "pcgrad",
                               "and_mask", "sand_mask", "iga", "iga_lora"}
    for cls in ALGORITHMS.values():
        assert cls.source, f"{cls.name} does not state its source"
        assert cls.__doc__ and "Source" in cls.__doc__


def test_mask_methods_have_three_variants():
    for name in ("iga", "and_mask", "sand_mask"):
        variants = resolve_methods([name])
        assert {(v.optimizer, v.placement) for v in variants} == {("sgd", "gradient"), ("adam", "gradient"),
                                                                  ("adam", "update")}
    assert METHOD_VARIANTS["iga-adam-update"].label == "IGA (Adam, update)"
    assert METHOD_VARIANTS["iga-sgd"].label == "IGA (SGD)"


def test_unknown_method_rejected():
    with pytest.raises(ValueError, match="unknown method"):
        resolve_methods(["iga-rmsprop"])


@pytest.mark.parametrize("kwargs, error, message", [
    ({"optimizer": "rmsprop"}, ValueError, "optimizer must be one of"),
    ({"placement": "weights"}, ValueError, "placement must be one of"),
    ({"base_lr": 0.0}, ValueError, "base_lr"),
    ({"nan_policy": "ignore"}, ValueError, "nan_policy"),
])
def test_constructor_rejects_bad_options(kwargs, error, message):
    with pytest.raises(error, match=message):
        algorithm_class("erm")(linear_predictor(3, "squared"), 2, **kwargs)


def test_single_domain_rejected():
    with pytest.raises(ValueError, match="n_domains must be >= 2"):
        algorithm_class("erm")(linear_predictor(3, "squared"), 1)


def test_wrong_domain_count_rejected():
    method = algorithm_class("erm")(linear_predictor(3, "squared"), 3)
    with pytest.raises(ValueError, match="one batch per training domain"):
        method.step(torch.zeros(2, 4, 3, dtype=torch.float64), torch.zeros(2, 4, dtype=torch.float64))


def test_non_finite_step_raises_or_skips():
    predictor = linear_predictor(2, "squared")
    X = torch.ones(2, 3, 2, dtype=torch.float64)
    y = torch.full((2, 3), float("nan"), dtype=torch.float64)
    with pytest.raises(NonFiniteError, match="nan_policy='skip'"):
        algorithm_class("erm")(predictor, 2).step(X, y)
    method = algorithm_class("erm")(predictor, 2, nan_policy="skip")
    result = method.step(X, y)
    assert result.diagnostics["skipped"] == 1.0
    assert float(result.update.abs().max()) == 0.0


# ----- IGA's statistics agree with the library's streaming remedies -------------------------------


@pytest.mark.parametrize("remedy", ["ema", "noise_correction", "none"])
def test_iga_moments_match_minibatch_statistics(s1_env, remedy):
    from iga_theory.stats import MinibatchDomainStatistics
    from iga_theory.synthetic.per_domain import per_domain_gradients, per_sample_gradients

    method = algorithm_class("iga")(s1_env.predictor, s1_env.n_train_domains, {"noise": remedy, "rho": 0.9},
                                    optimizer="sgd", seed=2)
    reference = MinibatchDomainStatistics(s1_env.n_train_domains, remedy=remedy, rho=0.9)
    # Theta stays at its start: `moments` advances the moving average, as one step would.
    theta = method.theta.detach()
    for X, y in _batches(s1_env, 6):
        g = per_domain_gradients(s1_env.predictor, theta, X, y)
        mu, s2 = method.moments(g, X, y)
        reference.update(list(per_sample_gradients(s1_env.predictor, theta, X, y)))
        mu_ref, s2_ref = reference.moments()
        # Two summation orders of the same float64 means: agreement to rounding.
        torch.testing.assert_close(mu, mu_ref, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(s2, s2_ref, rtol=1e-10, atol=1e-14)
