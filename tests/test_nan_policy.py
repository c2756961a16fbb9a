"""The named NaN policy: detection per domain and parameter, raise, skip, and its wiring."""

import logging

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from iga_theory.errors import NonFiniteError
from iga_theory.nan_policy import (
    MAX_LOGGED_SKIPS,
    NAN_POLICIES,
    NanGuard,
    find_non_finite,
    nan_guard,
)
from iga_theory.config import ConfigError, from_dict, to_dict
from iga_theory.report_config import ReportConfig, merge
from iga_theory.synthetic import experiments
from iga_theory.synthetic.s1 import S1Model
from iga_theory.synthetic.training import train_population

NUMPY_DTYPES = [np.float64, np.float32, np.float16]
TORCH_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def stack_with_bad_entries(K=4, shape=(3, 2)):
    """Per-domain gradients with a NaN in domain 1 at (2, 0) and an Inf in domain 3 at (0, 1)."""
    g = np.arange(K * np.prod(shape), dtype=np.float64).reshape((K, *shape)) / 7.0
    g[1, 2, 0] = np.nan
    g[3, 0, 1] = -np.inf
    return g


@pytest.mark.parametrize("dtype", NUMPY_DTYPES + TORCH_DTYPES, ids=str)
def test_find_names_domain_parameter_index(dtype):
    g = stack_with_bad_entries()
    g = torch.tensor(g, dtype=dtype) if isinstance(dtype, torch.dtype) else g.astype(dtype)
    entries = find_non_finite({"lora_A": g}, domains=["math", "law", "medicine", "science"])
    assert [(e.parameter, e.domain) for e in entries] == [("lora_A", "law"), ("lora_A", "science")]
    assert (entries[0].n_nan, entries[0].n_inf, entries[0].first_index) == (1, 0, (2, 0))
    assert (entries[1].n_nan, entries[1].n_inf, entries[1].first_index) == (0, 1, (0, 1))
    assert entries[0].size == 6


def test_finite_values_pass_without_count():
    guard = NanGuard("skip")
    g = np.ones((3, 5))
    assert guard.check({"theta": g}, step=0)
    assert guard.check(torch.ones(3, 5), step=1)
    assert guard.check(np.arange(6).reshape(2, 3))  # integers are always finite
    assert guard.skipped_steps == 0


def test_raise_policy_names_step_domain_parameter():
    guard = nan_guard("raise")
    with pytest.raises(NonFiniteError) as error:
        guard.check({"W": stack_with_bad_entries()}, step=17, domains=["a", "law", "c", "science"])
    message = str(error.value)
    for fragment in ("step 17", "'W'", "domain 'law'", "domain 'science'", "1 NaN", "1 Inf", "nan_policy='skip'"):
        assert fragment in message


def test_skip_policy_counts_and_logs(caplog):
    guard = nan_guard("skip")
    with caplog.at_level(logging.WARNING, logger="iga_theory.nan_policy"):
        assert guard.check({"W": stack_with_bad_entries()}, step=3, domains=["a", "law", "c", "d"]) is False
        assert guard.check({"W": np.ones((4, 3, 2))}, step=4) is True
        assert guard.check({"W": stack_with_bad_entries()}, step=5, domains=["a", "law", "c", "d"]) is False
    assert guard.skipped_steps == 2
    assert guard.summary() == {"policy": "skip", "skipped_steps": 2, "skipped_at": [3, 5]}
    assert len(guard.events) == 2
    assert guard.events[0].entries[0].domain == "law"
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 2
    for fragment in ("step 3", "'W'", "domain 'law'"):
        assert fragment in warnings[0]


def test_skip_logging_is_rate_limited(caplog):
    guard = nan_guard("skip")
    bad = np.full((2, 1), np.nan)
    with caplog.at_level(logging.WARNING, logger="iga_theory.nan_policy"):
        for step in range(3 * MAX_LOGGED_SKIPS):
            guard.check(bad, step=step)
    assert guard.skipped_steps == 3 * MAX_LOGGED_SKIPS
    # One warning per skip up to the limit, plus one saying that later skips go to DEBUG.
    assert len(caplog.records) == MAX_LOGGED_SKIPS + 1


def test_cross_domain_statistics_have_no_domain():
    s2 = np.array([0.5, np.inf, 1.0])
    (entry,) = find_non_finite({"s2": s2}, per_domain=False)
    assert entry.domain is None
    assert entry.first_index == (1,)
    with pytest.raises(NonFiniteError, match="cross-domain statistic"):
        NanGuard("raise", quantity="statistic").check({"s2": s2}, per_domain=False)


@pytest.mark.parametrize("call, error, fragment", [
    (lambda: NanGuard("ignore"), ValueError, "'ignore'"),
    (lambda: nan_guard(None), ValueError, "None"),
    (lambda: find_non_finite({}), ValueError, "empty mapping"),
    (lambda: find_non_finite([[1.0, np.nan]]), TypeError, "list"),
    (lambda: find_non_finite({"x": np.array(["a"])}), TypeError, "<U1"),
    (lambda: find_non_finite({"x": np.float64(np.nan)}), TypeError, "float64"),
    (lambda: find_non_finite({"x": np.array(np.nan)}), ValueError, "scalar"),
    (lambda: find_non_finite(np.full((3, 2), np.nan), domains=["a", "b"]), ValueError, "3 on axis 0"),
])
def test_invalid_arguments_rejected(call, error, fragment):
    with pytest.raises(error) as raised:
        call()
    assert fragment in str(raised.value)


def test_policy_names_are_the_documented_ones():
    assert NAN_POLICIES == ("raise", "skip")


class ConstantModel:
    """Quadratic model with fixed per-domain moments: g_e = Sigma_e theta - c_e."""

    def __init__(self, sigmas, cs):
        self.sigmas, self.cs = sigmas, cs

    def second_moments(self, domain):
        return self.sigmas[domain], self.cs[domain], 0.0


def test_train_population_raise_names_domain():
    cs = np.ones((3, 4))
    cs[2, 1] = np.nan
    model = ConstantModel(np.stack([np.eye(4)] * 3), cs)
    with pytest.raises(NonFiniteError) as error:
        train_population(model, [0, 1, 2], "iga", 5, 0.1, np.zeros(4))
    assert "step 0" in str(error.value)
    assert "'theta' in domain '2'" in str(error.value)
    assert "index (1,)" in str(error.value)


def test_train_population_skip_after_divergence():
    # eta = 3 / L on a quadratic with L = 1: theta grows by a factor 2 per step and
    # overflows float64 after about 1024 steps; from then on every gradient is non-finite.
    model = ConstantModel(np.stack([np.eye(2)] * 2), np.array([[1.0, 0.0], [0.0, 1.0]]))
    steps = 1100
    with np.errstate(over="ignore", invalid="ignore"):
        history = train_population(model, [0, 1], "erm", steps, 3.0, np.array([1.0, 1.0]), nan_policy="skip")
        with pytest.raises(NonFiniteError, match=r"at step \d+"):
            train_population(model, [0, 1], "erm", steps, 3.0, np.array([1.0, 1.0]))
    first = history.skipped_steps[0]
    assert 900 < first < steps
    assert history.skipped_steps == list(range(first, steps))
    # After the first skip theta no longer moves, and the skipped steps record a zero step.
    assert np.array_equal(history.thetas[first + 1:], np.broadcast_to(history.thetas[first], (steps - first, 2)))
    assert not history.directions[first:].any()
    assert np.isnan(history.mean_gradients[first:]).all()


def test_train_population_policy_leaves_finite_runs_unchanged():
    model = S1Model()
    domains = model.draw_domains(4, np.random.default_rng(0))
    L = model.smoothness(domains)
    runs = [train_population(model, domains, "iga", 50, 1.0 / L, np.zeros(model.n_params), nan_policy=policy)
            for policy in NAN_POLICIES]
    assert np.array_equal(runs[0].thetas, runs[1].thetas)
    assert runs[1].skipped_steps == []


class NaNOnCall:
    """An S1 model whose ``sample`` returns a NaN label on the given calls (0-based)."""

    def __init__(self, model, bad_calls):
        self._model, self._bad_calls, self._calls = model, set(bad_calls), 0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def sample(self, n, domain, rng):
        X, y = self._model.sample(n, domain, rng)
        if self._calls in self._bad_calls:
            y = y.copy()
            y[0] = np.nan
        self._calls += 1
        return X, y


def rate_config(policy):
    small = {"rate": {"T_grid": [16, 32], "n_seeds": 2, "n_domains": 4}, "nan_policy": policy}
    return from_dict(ReportConfig, merge(to_dict(ReportConfig()), small))


def test_rate_cell_skip_counts_nan_minibatch():
    model = S1Model()
    n_domains = 4
    # Call k = n_domains * (t + 1) + e is domain e at step t (the warm-up takes the first K calls).
    bad_step, bad_domain = 5, 2
    bad = NaNOnCall(model, {n_domains * (bad_step + 1) + bad_domain})
    cell = experiments.rate_cell(bad, rate_config("skip"), 0, 16, 0)
    assert cell["skipped_steps"] == 1
    assert np.isfinite(cell["lhs"])
    assert np.isfinite(cell["final_spurious_weight"])

    clean = experiments.rate_cell(model, rate_config("skip"), 0, 16, 0)
    assert clean["skipped_steps"] == 0
    assert clean["lhs"] != cell["lhs"]  # the skipped step changed the path

    bad = NaNOnCall(model, {n_domains * (bad_step + 1) + bad_domain})
    with pytest.raises(NonFiniteError) as error:
        experiments.rate_cell(bad, rate_config("raise"), 0, 16, 0)
    assert f"step {bad_step}" in str(error.value)
    assert f"domain '{bad_domain}'" in str(error.value)


def test_rate_cell_same_numbers_under_both_policies():
    model = S1Model()
    cells = [experiments.rate_cell(model, rate_config(policy), 0, 32, 1) for policy in NAN_POLICIES]
    assert cells[0] == cells[1]


def test_report_config_rejects_unknown_policy():
    with pytest.raises(ConfigError) as error:
        from_dict(ReportConfig, {"nan_policy": "ignore"})
    assert "nan_policy" in str(error.value)
    assert "'ignore'" in str(error.value)


@st.composite
def stacks_with_holes(draw):
    """Per-domain stacks of shape (K, a, b) with NaN and +-Inf at random entries."""
    K = draw(st.integers(1, 5))
    shape = (K, draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    g = np.zeros(shape)
    codes = draw(st.lists(st.sampled_from([0, 0, 0, 1, 2, 3]), min_size=g.size, max_size=g.size))
    g.reshape(-1)[:] = np.choose(codes, [1.0, np.nan, np.inf, -np.inf])
    return g


@given(g=stacks_with_holes(), as_tensor=st.booleans())
def test_find_counts_match_numpy(g, as_tensor):
    values = torch.tensor(g) if as_tensor else g
    entries = {entry.domain: entry for entry in find_non_finite({"W": values})}
    for e in range(g.shape[0]):
        bad = ~np.isfinite(g[e])
        if not bad.any():
            assert str(e) not in entries
            continue
        entry = entries[str(e)]
        assert entry.n_nan == int(np.isnan(g[e]).sum())
        assert entry.n_inf == int(np.isinf(g[e]).sum())
        assert entry.first_index == tuple(int(i) for i in np.argwhere(bad)[0])
