# SPDX-License-Identifier: Apache-2.0
r"""Estimators of the intractable term :math:`\mathbb E_q[\log F(z)]` of the RPM ELBO.

* ``"mc"`` (:func:`monte_carlo_log_normaliser`): :math:`\log\sum_m f(z_s \mid x_m)` at reparameterised
  draws :math:`z_s \sim q`; unbiased for the ELBO, any prior and any factor.
* ``"interior"`` (:func:`interior_bound`): the interior variational bound of Walker et al. for
  diagonal Gaussian factors and posteriors, closed form and a lower bound on the ELBO. With an
  auxiliary :math:`\tilde f_n \propto r / q_n`,

  .. math::

      -\mathbb E_{q_n}\Big[\log \sum_m f_m(z)\Big] \;\ge\; \log\Gamma_n - \mathrm{KL}(q_n \,\|\, \hat f_{nn})
      - \mathbb E_{q_n}[\log f_n(z)],

  with :math:`w_{nm} = \int f_m q_n / r`, :math:`\log\Gamma_n = \log w_{nn} - \log\sum_m w_{nm}` and
  :math:`\hat f_{nn} \propto f_n q_n / r`. With a flat reference :math:`r` this is Jensen's bound
  :math:`\mathbb E_q[\log F] \le \log \mathbb E_q[F]`; with :math:`r = p` (a Gaussian prior) it is the
  "p/q ansatz", tight when :math:`F = p`.
"""

from __future__ import annotations

import torch

from .._validation import capturing
from ..guides.tied import diagonal_normal
from ..recognition.gaussian import GaussianFactor, gaussian_log_partition

__all__ = ["ESTIMATORS", "monte_carlo_log_normaliser", "interior_bound"]

#: Names accepted by ``RPM_ELBO(estimator=...)``.
ESTIMATORS = ("mc", "interior")


def monte_carlo_log_normaliser(logits: torch.Tensor) -> torch.Tensor:
    r""":math:`\log\sum_m f(z \mid x_m)` from the table of log-factors (last dimension)."""
    return torch.logsumexp(logits, dim=-1)


def _gaussian_kl(loc_q, var_q, loc_p, var_p) -> torch.Tensor:
    return 0.5 * ((var_q + (loc_q - loc_p) ** 2) / var_p - 1 + var_p.log() - var_q.log()).sum(-1)


def _as_gaussian(f) -> GaussianFactor:
    """The diagonal Gaussian ``f`` is (:meth:`~pyro_rpm.Factor.diagonal_gaussian`, or a Normal), as a GaussianFactor."""
    gaussian = diagonal_normal(f)
    if gaussian is None:
        raise ValueError(f"the interior bound needs diagonal Gaussian factors and posteriors, got {type(f).__name__}")
    return GaussianFactor(*gaussian, validate_args=False)


def interior_bound(
    q: GaussianFactor,
    factors: GaussianFactor,
    index: torch.Tensor,
    reference: tuple[torch.Tensor, torch.Tensor] | None = None,
    chunk_size: int = 4096,
) -> torch.Tensor:
    r"""Closed-form lower bound on :math:`-\mathbb E_{q_n}[\log\sum_m f_m(z)]` for each datum n.

    :param q: diagonal Gaussian posteriors :math:`q_n`, batch shape ``(..., B)``.
    :param Factor factors: diagonal Gaussian support factors :math:`f_m`, batch shape ``(M,)``.
    :param torch.Tensor index: support index of each datum, shape ``(B,)``.
    :param reference: ``(loc, scale)`` of a diagonal Gaussian reference :math:`r` (e.g. the prior),
        or ``None`` for a flat reference.
    :param int chunk_size: support points per chunk of the :math:`B \times M \times D` computation.
    :returns: a tensor of shape ``q.batch_shape``.
    """
    q, factors = _as_gaussian(q), _as_gaussian(factors)
    h_q, lam_q = q.natural_params  # (..., B, D)
    if reference is not None:
        r_loc, r_scale = reference
        r_lam = r_scale.pow(-2)
        h_q, lam_q = h_q - r_loc * r_lam, lam_q - r_lam
    h_f, lam_f = factors.natural_params  # (M, D)
    a_f = gaussian_log_partition(h_f, lam_f)
    pieces = []
    for start in range(0, h_f.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        lam = lam_f[sl] + lam_q.unsqueeze(-2)
        if not capturing() and not bool((lam > 0).all()):
            raise ValueError("interior bound: f_m q_n / r is not a proper Gaussian; use a broader reference")
        h = h_f[sl] + h_q.unsqueeze(-2)
        pieces.append((gaussian_log_partition(h, lam) - a_f[sl]).sum(-1))
    log_w = torch.cat(pieces, -1)  # (..., B, M)
    idx = index.long()
    log_w_diag = log_w.gather(-1, idx.expand(log_w.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    log_gamma = log_w_diag - torch.logsumexp(log_w, -1)
    f_n = factors.index(idx)
    lam_hat = f_n.precision + lam_q
    h_hat = f_n.natural_params[0] + h_q
    kl = _gaussian_kl(q.loc, q.variance, h_hat / lam_hat, lam_hat.reciprocal())
    expected_log_f = (
        -0.5 * ((q.loc - f_n.loc) ** 2 + q.variance) / f_n.variance
        - f_n.scale.log()
        - 0.5 * torch.log(torch.tensor(2 * torch.pi, dtype=q.loc.dtype))
    ).sum(-1)
    return log_gamma - kl - expected_log_f
