r"""Benchmark environments over the synthetic models S1 to S4.

A benchmark is a model family (``s1`` .. ``s4``) in one variant:

* ``plain``: the model's defaults;
* ``rotated``: the features mixed by a fixed random orthogonal matrix (the model's
  ``rotate=True``). A coordinate-wise mask depends on the basis, an invariance
  penalty does not;
* ``hetero``: domains also differ in the scale of the invariant features
  (``hetero=0.5``: the log-scale has standard deviation 0.5 over Q).

An `Environment` is one draw of a benchmark for a trial seed: K training domains and
a set of held-out domains from the meta-distribution Q, plus the model's shifted
domain (the spurious mechanism reversed), with these fixed samples:

==============  ====================================================================
``train``       per training domain, the pool that minibatches are drawn from
``val``         per training domain, held out from training (training-domain
                validation, and the left-out domain's score in leave-one-domain-out)
``test_in``     fresh samples of the training domains (in-domain test)
``val_heldout`` samples of the held-out domains, used only by the test-domain oracle
``test_ood``    other samples of the held-out domains (out-of-domain test)
``test_shift``  samples of the shifted domain
``isomers``     isomer sets: one latent problem rendered in each of the first
                ``n_isomer_domains`` held-out domains
==============  ====================================================================

Isomer sets are rendered with common random numbers: every rendering of a set calls
the model's ``sample(n, domain, rng)`` with a generator in the same state, so the
invariant part (``x_inv``, ``y``) and the noise are shared and only the domain's
mechanism differs. This holds for every model whose ``sample`` draws the same random
numbers whatever the domain, which is the case for S1 to S4.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from iga_theory.errors import check_positive_int
from iga_theory.synthetic.models import make_model
from iga_theory.synthetic.per_domain import LoRAStructure, Predictor, linear_predictor

VARIANTS = ("plain", "rotated", "hetero")
# Log-scale spread of the invariant features' scale over Q in the hetero variant.
HETERO_SPREAD = 0.5


# ----- model families -------------------------------------------------------------------------


def _lora_predictor(model, rank: int, alpha: float) -> Predictor:
    """LoRA predictor ``f(x) = x^T (W_0 + (alpha / r) B A)`` with theta = (vec B, vec A)."""
    p, q = model.shape
    n_b = p * rank
    lora = LoRAStructure(W0=torch.as_tensor(model.W0, dtype=torch.float64), rank=rank, alpha=alpha)

    def forward(theta, X):
        return X @ lora.weight(theta)

    def init(rng):
        # The usual LoRA start: B = 0 and A random, so that W = W_0 at step 0.
        return np.r_[np.zeros(n_b), rng.standard_normal(rank * q) / np.sqrt(q)]

    return Predictor(n_params=n_b + rank * q, forward=forward, loss="squared", init=init,
                     blocks={"B": slice(0, n_b), "A": slice(n_b, n_b + rank * q)}, lora=lora)


def _lora_model_theta(model, rank: int, alpha: float) -> Callable[[np.ndarray], np.ndarray]:
    p, q = model.shape
    n_b = p * rank

    def to_model(theta):
        B = theta[:n_b].reshape(p, rank)
        A = theta[n_b:].reshape(rank, q)
        return (model.W0 + (alpha / rank) * B @ A).ravel()

    return to_model


def _scalar_sign(f: np.ndarray) -> np.ndarray:
    return np.sign(f)


def _orthant(f: np.ndarray) -> np.ndarray:
    """Encode the orthant (sign pattern) of each output vector (n, ..., q) as an integer."""
    return ((f > 0).astype(np.int64) * (2 ** np.arange(f.shape[-1]))).sum(axis=-1)


@dataclass(frozen=True)
class Family:
    """How the harness uses one model: its task, predictor and discrete answer.

    ``answer`` maps predictions to the discrete answers compared by answer
    consistency: the predicted label (classification), the sign of the prediction
    (scalar regression), or the sign pattern of the output vector (S4).
    ``consistency`` is False where the domain does not change the inputs: in S4 the
    domain changes the target map ``W_e`` only (and, in the hetero variant, the
    scale of x, which the unit normalisation removes), so every predictor gives the
    same normalised output on every rendering and LCS would be 0 by construction.
    ``lora`` is True where the predictor is a LoRA layer (methods that need one run there only).
    """

    task: str
    make_predictor: Callable[[object], Predictor]
    to_model_theta: Callable[[object], Callable[[np.ndarray], np.ndarray]]
    answer: Callable[[np.ndarray], np.ndarray]
    base_lr: dict
    consistency: bool = True
    lora: bool = False


LORA_RANK = 4       # the adapter can hold W_* (rank 2) and the shortcut (rank 1)
LORA_ALPHA = 4.0    # alpha / r = 1

FAMILIES: dict[str, Family] = {
    "s1": Family("regression", lambda m: linear_predictor(m.n_params, "squared"),
                 lambda m: (lambda theta: theta), _scalar_sign, {"sgd": 0.05, "adam": 0.01}),
    "s2": Family("classification", lambda m: linear_predictor(m.n_params, "logistic"),
                 lambda m: (lambda theta: theta), _scalar_sign, {"sgd": 0.5, "adam": 0.02}),
    "s3": Family("classification", lambda m: linear_predictor(m.n_params, "logistic"),
                 lambda m: (lambda theta: theta), _scalar_sign, {"sgd": 0.5, "adam": 0.02}),
    "s4": Family("regression", lambda m: _lora_predictor(m, LORA_RANK, LORA_ALPHA),
                 lambda m: _lora_model_theta(m, LORA_RANK, LORA_ALPHA), _orthant,
                 {"sgd": 0.05, "adam": 0.01}, consistency=False, lora=True),
}


# ----- benchmark specification ------------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark: a model family, a variant and the sizes of its samples.

    Sample sizes are per domain. ``steps`` and ``batch_size`` fix the training budget
    of every method on this benchmark (one minibatch of ``batch_size`` per training
    domain per step).
    """

    family: str
    variant: str = "plain"
    n_train_domains: int = 8
    n_heldout_domains: int = 8
    n_train: int = 256
    n_val: int = 128
    n_test: int = 512
    n_isomer_sets: int = 128
    n_isomer_domains: int = 8
    batch_size: int = 32
    steps: int = 200
    model_overrides: tuple = ()

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {sorted(FAMILIES)}; got {self.family!r}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}; got {self.variant!r}")
        for name in ("n_train_domains", "n_heldout_domains", "n_train", "n_val", "n_test",
                     "n_isomer_sets", "n_isomer_domains", "batch_size", "steps"):
            check_positive_int(name, getattr(self, name))
        if self.n_train_domains < 2:
            raise ValueError(f"n_train_domains must be >= 2 (a cross-domain variance); got {self.n_train_domains}")
        if not 2 <= self.n_isomer_domains <= self.n_heldout_domains:
            raise ValueError(
                f"n_isomer_domains must lie in [2, n_heldout_domains = {self.n_heldout_domains}]; "
                f"got {self.n_isomer_domains}"
            )

    @property
    def name(self) -> str:
        """``"s1"`` for the plain variant, ``"s1-rotated"`` and so on otherwise."""
        return self.family if self.variant == "plain" else f"{self.family}-{self.variant}"

    @property
    def task(self) -> str:
        return FAMILIES[self.family].task

    @property
    def higher_is_better(self) -> bool:
        """True for accuracy (classification), False for risk (regression)."""
        return self.task == "classification"

    @property
    def metric(self) -> str:
        return "accuracy" if self.task == "classification" else "risk"

    def model_params(self) -> dict:
        """Keyword arguments of the model: the variant's switch plus ``model_overrides``."""
        params = dict(self.model_overrides)
        if self.variant == "rotated":
            params["rotate"] = True
        elif self.variant == "hetero":
            params["hetero"] = HETERO_SPREAD
        return params


def parse_benchmark(name: str, **sizes) -> BenchmarkSpec:
    """`BenchmarkSpec` from a name such as ``"s2"`` or ``"s3-rotated"``."""
    family, _, variant = name.partition("-")
    return BenchmarkSpec(family=family, variant=variant or "plain", **sizes)


# ----- environments -----------------------------------------------------------------------------


def _seed_rng(seed: int, *labels: str) -> np.random.Generator:
    return np.random.default_rng([int(seed)] + [zlib.crc32(label.encode()) for label in labels])


def _stack_samples(model, domains, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    samples = [model.sample(n, domain, rng) for domain in domains]
    return np.stack([s[0] for s in samples]), np.stack([s[1] for s in samples])


def render_isomer_sets(model, domains, n_sets: int, entropy) -> tuple[np.ndarray, np.ndarray]:
    """Isomer sets by common random numbers: X of shape (n_sets, K, ...), y (n_sets, K, ...).

    Every domain's sample is drawn from a fresh generator seeded with the same
    ``entropy`` (an int or a list of ints), so set i's renderings share their latent
    variables and noise and differ only through the domain's mechanism.
    """
    renderings = [model.sample(n_sets, domain, np.random.default_rng(entropy)) for domain in domains]
    X = np.stack([r[0] for r in renderings], axis=1)
    y = np.stack([r[1] for r in renderings], axis=1)
    return X, y


@dataclass
class Environment:
    """One draw of a benchmark: domains, fixed samples (torch float64) and the predictor."""

    spec: BenchmarkSpec
    seed: int
    model: object
    predictor: Predictor
    to_model_theta: Callable[[np.ndarray], np.ndarray]
    train_domains: list
    heldout_domains: list
    shifted_domain: object
    data: dict = field(default_factory=dict)

    @property
    def n_train_domains(self) -> int:
        return len(self.train_domains)


def _to_torch(pair):
    return tuple(torch.as_tensor(a, dtype=torch.float64) for a in pair)


@functools.lru_cache(maxsize=8)
def build_environment(spec: BenchmarkSpec, seed: int) -> Environment:
    """Draw the domains and samples of ``spec`` for trial ``seed`` (same seed, same data).

    The model's own seed (its rotation and fixed weights) stays at the model default,
    so a rotated benchmark uses the same rotation in every trial. The trial seed draws
    the domains and the samples from generators seeded by the family, not the variant.
    The plain and rotated variants of a trial then contain the same domains and the
    same samples up to the rotation, so the rotated-minus-plain gap of a method is a
    paired difference (exactly 0 for a rotation-equivariant method such as ERM under SGD).
    """
    family = FAMILIES[spec.family]
    model = make_model(spec.family, **spec.model_params())
    predictor = family.make_predictor(model)

    rng = _seed_rng(seed, spec.family, "domains")
    train_domains = model.draw_domains(spec.n_train_domains, rng)
    heldout_domains = model.draw_domains(spec.n_heldout_domains, rng)
    shifted = model.shifted_domain()

    rng = _seed_rng(seed, spec.family, "samples")
    data = {
        "train": _stack_samples(model, train_domains, spec.n_train, rng),
        "val": _stack_samples(model, train_domains, spec.n_val, rng),
        "test_in": _stack_samples(model, train_domains, spec.n_test, rng),
        "val_heldout": _stack_samples(model, heldout_domains, spec.n_val, rng),
        "test_ood": _stack_samples(model, heldout_domains, spec.n_test, rng),
        "test_shift": _stack_samples(model, [shifted], spec.n_test, rng),
        "isomers": render_isomer_sets(model, heldout_domains[: spec.n_isomer_domains],
                                      spec.n_isomer_sets, [int(seed), zlib.crc32(b"isomers")]),
    }
    data = {key: _to_torch(value) for key, value in data.items()}
    return Environment(spec=spec, seed=int(seed), model=model, predictor=predictor,
                       to_model_theta=family.to_model_theta(model), train_domains=train_domains,
                       heldout_domains=heldout_domains, shifted_domain=shifted, data=data)


def with_sizes(spec: BenchmarkSpec, **sizes) -> BenchmarkSpec:
    """Return a copy of ``spec`` with other sample sizes or training budget."""
    return dataclasses.replace(spec, **sizes)


# ----- training and evaluation of one run ---------------------------------------------------------

# Steps averaged for the first and the last training loss of a run.
LOSS_WINDOW = 10


def train_method(env: Environment, algorithm: str, hparams: dict, *, optimizer: str = "adam",
                 placement: str = "gradient", seed: int = 0, domains: list[int] | None = None,
                 steps: int | None = None):
    """Train one method on the training domains of ``env`` (or the subset ``domains``).

    Each step draws ``batch_size`` examples with replacement from each training
    domain's pool (a seeded torch generator) and calls `Algorithm.step` once.

    Returns
    -------
    algorithm : Algorithm
        The trained method (``algorithm.parameters()`` is the final theta).
    history : dict
        ``loss`` (per-step mean training loss, list of float), ``loss_first`` and
        ``loss_last`` (means over the first and last ten steps).
    """
    from iga_theory.synthetic.algorithms import algorithm_class

    spec = env.spec
    domains = list(range(env.n_train_domains)) if domains is None else list(domains)
    X_pool, y_pool = env.data["train"]
    X_pool, y_pool = X_pool[domains], y_pool[domains]
    K, n_pool = X_pool.shape[:2]
    steps = spec.steps if steps is None else check_positive_int("steps", steps)

    method = algorithm_class(algorithm)(env.predictor, K, hparams, optimizer=optimizer, placement=placement,
                                        base_lr=FAMILIES[spec.family].base_lr[optimizer], seed=seed)
    generator = torch.Generator().manual_seed(int(seed))
    rows = torch.arange(K)[:, None]
    losses = []
    for _ in range(steps):
        index = torch.randint(n_pool, (K, spec.batch_size), generator=generator)
        result = method.step(X_pool[rows, index], y_pool[rows, index])
        losses.append(result.diagnostics["loss"])
    window = min(LOSS_WINDOW, steps)
    history = {"loss": losses, "loss_first": float(np.mean(losses[:window])),
               "loss_last": float(np.mean(losses[-window:]))}
    return method, history


def _per_domain_scores(env: Environment, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> dict:
    """Risk (mean loss) and, for classification, accuracy of each domain's sample; arrays (K,)."""
    predictor = env.predictor
    K, n = X.shape[:2]
    f = predictor.forward(theta, X.reshape((K * n,) + tuple(X.shape[2:])))
    f = f.reshape((K, n) + tuple(f.shape[1:]))
    target = y.reshape((K, n) + tuple(y.shape[2:]))
    losses = predictor.sample_losses(theta, X.reshape((K * n,) + tuple(X.shape[2:])),
                                     y.reshape((K * n,) + tuple(y.shape[2:]))).reshape(K, n)
    scores = {"risk": losses.mean(dim=1).numpy()}
    if env.spec.task == "classification":
        scores["accuracy"] = (torch.sign(f) == target).to(torch.float64).mean(dim=1).numpy()
    return scores


@torch.no_grad()
def evaluate(env: Environment, theta: np.ndarray, domains: list[int] | None = None,
             left_out: int | None = None) -> dict:
    """Compute every metric of one trained predictor on ``env`` (floats; see the keys below).

    Parameters
    ----------
    env : Environment
    theta : ndarray, shape (P,)
        The predictor's parameters.
    domains : list of int, optional
        Training domains the predictor was trained on (default: all).
    left_out : int, optional
        Index of the training domain held out (leave-one-domain-out runs).

    Returns
    -------
    dict
        * ``val``, ``in_domain``: mean over the training domains of the benchmark
          metric on their validation and in-domain test samples;
        * ``left_out``: the metric on the left-out domain's pool and validation samples;
        * ``oracle``: mean over the held-out domains on their oracle samples;
        * ``ood``, ``ood_worst``: mean and worst held-out domain on the test samples;
        * ``shifted``: the metric on the shifted domain;
        * ``ood_risk``: the mean loss on the held-out test samples;
        * ``ood_expected``: the exact expected risk over Q of the model's parameters;
        * ``spurious_weight``: the model's measure of the shortcut in the parameters;
        * ``lcs``, ``answer_consistency``: on the isomer sets (None where the family's
          domains do not change the inputs).
    """
    from iga_theory.metrics import answer_consistency, logical_consistency_score

    spec = env.spec
    metric = spec.metric
    worst = np.min if spec.higher_is_better else np.max
    domains = list(range(env.n_train_domains)) if domains is None else list(domains)
    theta_t = torch.as_tensor(np.asarray(theta, dtype=np.float64))
    data = env.data

    def scores(key, select=None):
        X, y = data[key]
        if select is not None:
            X, y = X[select], y[select]
        return _per_domain_scores(env, theta_t, X, y)

    results = {
        "val": float(np.mean(scores("val", domains)[metric])),
        "in_domain": float(np.mean(scores("test_in", domains)[metric])),
        "oracle": float(np.mean(scores("val_heldout")[metric])),
    }
    ood = scores("test_ood")
    results.update({"ood": float(np.mean(ood[metric])), "ood_worst": float(worst(ood[metric])),
                    "ood_risk": float(np.mean(ood["risk"])),
                    "shifted": float(scores("test_shift")[metric][0])})
    if left_out is not None:
        X = torch.cat([data["train"][0][left_out], data["val"][0][left_out]])[None]
        y = torch.cat([data["train"][1][left_out], data["val"][1][left_out]])[None]
        results["left_out"] = float(_per_domain_scores(env, theta_t, X, y)[metric][0])

    # Exact quantities of the model's own parameters.
    model_theta = env.to_model_theta(np.asarray(theta, dtype=np.float64))
    results["ood_expected"] = float(env.model.expected_risk(model_theta))
    results["spurious_weight"] = float(env.model.spurious_weight(model_theta))

    # Consistency over isomer sets: predictions of shape (n_sets, K) or (n_sets, K, q).
    if not FAMILIES[spec.family].consistency:
        results["lcs"] = results["answer_consistency"] = None
        return results
    X_iso, _ = data["isomers"]
    n_sets, K_iso = X_iso.shape[:2]
    f = env.predictor.forward(theta_t, X_iso.reshape((n_sets * K_iso,) + tuple(X_iso.shape[2:])))
    f = f.reshape((n_sets, K_iso) + tuple(f.shape[1:])).numpy()
    results["lcs"] = logical_consistency_score(f) if np.any(f != 0) else 0.0
    results["answer_consistency"] = answer_consistency(FAMILIES[spec.family].answer(f))
    return results
