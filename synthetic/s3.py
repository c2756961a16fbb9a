r"""S3: S2 with a small invariant margin and a large, domain-varying spurious margin.

The generative model, the exact risk and every method are those of `S2Model`; only the
defaults differ. The invariant margin ``nu_inv = 0.3`` leaves the Bayes classifier
that uses the invariant features alone with an error of ``Phi(-0.3) ~ 0.38``, while
the spurious block's margin ``beta sqrt(d_sp) / sigma_s`` has mean 3 and spread 3 over
Q, so on a typical training domain the shortcut predicts y far better than the
invariant features do but reverses sign on about one domain in six. This is the hard
case for ERM: pooling the training domains rewards the shortcut.
"""

from __future__ import annotations

from dataclasses import dataclass

from iga_theory.synthetic.s2 import S2Model, S2Params


@dataclass(frozen=True)
class S3Params(S2Params):
    """Parameters of S3: the fields of `S2Params` with the hard-case defaults."""

    nu_inv: float = 0.3
    sigma_s: float = 1.0
    mu_beta: float = 1.5
    tau_beta: float = 1.5


class S3Model(S2Model):
    """S3: `S2Model` with the defaults of `S3Params`."""

    name = "s3"
    params_class = S3Params
