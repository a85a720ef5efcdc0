# SPDX-License-Identifier: Apache-2.0
r"""Under the learned optimal prior the RPM ELBO is the mutual information plus a constant
(Aitchison & Ganev, §4.4); InfoNCE with in-batch negatives stays below :math:`\log B`.

**Data.** N pairs :math:`(x_1, x_2)` from :func:`pyro_rpm.datasets.gaussian_pairs.correlated_gaussian_pairs`:
:math:`x_1 \sim \mathcal N(0, I_d)`, :math:`x_2 = \rho x_1 + \sqrt{1-\rho^2}\,\epsilon`, with known

.. math::

    I(x_1; x_2) = -\tfrac d2 \log(1 - \rho^2).

**Model.** Two latents, one per view: :math:`z_1` observed through :math:`x_1`, :math:`z_2` through
:math:`x_2`, linear Gaussian recognition factors :math:`f_j(z \mid x) = \mathcal N(z; A_j x + c_j, \operatorname{diag} s_j^2)`
(:class:`~pyro_rpm.GaussianRecognition` with ``shared_scale=True``), the whole data set as the support set
(exact normaliser, minibatches of B data by ``plate(subsample_size=B)``), and a *learned* joint Gaussian prior
:math:`p(z_1, z_2) = \mathcal N(0, L L^\top)` written as a Pyro program
(:math:`z_1 \sim \mathcal N(0, L_{11} L_{11}^\top)`, :math:`z_2 \mid z_1 \sim \mathcal N(L_{21} L_{11}^{-1} z_1, L_{22} L_{22}^\top)`).
Each latent is observed by one view, so the tied guide is :math:`q_n(z_1, z_2) = f_1(z_1 \mid x_1^{(n)})\, f_2(z_2 \mid x_2^{(n)})`.

**The ELBO and its constant.** With support size N and the tied guide, the diagonal terms
:math:`\log f_j(z_j \mid x_j^{(n)}) - \log q` cancel (``docs/core.md`` §5) and, with
:math:`F_j = \frac1N \sum_m f_j(\cdot \mid x_j^{(m)})`,

.. math::

    \mathcal L_n = \mathbb E_{q_n}\Big[\log p(z_1, z_2) - \log \sum_m f_1(z_1 \mid x_1^{(m)})
    - \log \sum_m f_2(z_2 \mid x_2^{(m)})\Big]
    = \mathbb E_{q_n}\Big[\log \frac{p(z_1, z_2)}{F_1(z_1) F_2(z_2)}\Big] - 2 \log N .

Averaged over the data, the expectation is over the recognition joint
:math:`Q(z_1, z_2) = \frac1N \sum_n f_1(z_1 \mid x_1^{(n)}) f_2(z_2 \mid x_2^{(n)})`, whose marginals are
:math:`F_1, F_2`, so (Aitchison & Ganev, Eq. 17–18)

.. math::

    \frac1N \sum_n \mathcal L_n = I_Q(z_1; z_2) - \mathrm{KL}\big(Q(z_1, z_2) \,\|\, p(z_1, z_2)\big) - 2\log N .

The constant is :math:`\mathrm{const} = -2 \log N = \mathbb E[\log p_0(x_1)] + \mathbb E[\log p_0(x_2)]`
(the empirical data marginals, mass :math:`1/N` each; their Eq. 13). In ``pyro_rpm``'s convention the
loss is :math:`-\sum_n \mathcal L_n`, so

.. math::

    \text{elbo\_minus\_const} = -\frac{\text{loss}}{N} + 2 \log N
    = I_Q(z_1; z_2) - \mathrm{KL}(Q \,\|\, p) \;\le\; I_Q(z_1; z_2) .

Learning the prior drives the KL to its minimum; the optimal prior is :math:`p = Q` (their Eq. 19–20).
For linear encoders and N large, Q is Gaussian, so the Gaussian family holds the optimum, and
:math:`I_Q(z_1; z_2) = -\frac d2 \log(1 - \rho_z^2)` with :math:`\rho_z \to \rho` as the factor widths
:math:`s_j` shrink relative to the encoder gains: then elbo_minus_const approaches :math:`I(x_1; x_2)`.
Two limits apply. (i) Data processing: :math:`I_Q \le I(x_1; x_2)` for the population.
(ii) Finite support: :math:`z_1 - n - z_2` is a Markov chain under Q, so :math:`I_Q \le H(n) = \log N`. Concretely,
write the factor width (relative to the encoder gain) as :math:`s^2 = c\,\sigma^2` with
:math:`\sigma^2 = 1 - \rho^2 = e^{-2I/d}` the conditional variance. Wide factors lose
:math:`I - I_Q \approx \frac d2 \log(1 + 2c)` (for :math:`\rho \to 1`, :math:`1 - \rho_z^2 \approx \sigma^2 (1 + 2c)`);
narrow ones let the self-term :math:`f_j(z \mid x^{(n)})` dominate :math:`\sum_m f_j(z \mid x^{(m)})`, which raises
:math:`\log F_j` by about :math:`\log\big(1 + c^{-d/2} e^{I} / (N (2\pi)^{d/2} p(x))\big)`. Balancing the two, the
best gap shrinks like :math:`(e^{I}/N)^{2/(d+2)}`: it vanishes as :math:`N \to \infty`, and for fixed I and N it is
smallest for d = 1. :func:`ideal_elbo_minus_const` computes this finite-N ceiling by hand (identity encoders, the
exact optimal Gaussian prior, best c on a grid); at I = 5, N = 16384 it is about 4.85 nats for d = 1 and 4.60 for
d = 2, hence the defaults d = 1, N = 16384 (:math:`\log N = 9.70`).

**InfoNCE.** With B candidates per positive (one positive, B - 1 in-batch negatives) and any critic g,

.. math::

    I_{\mathrm{NCE}} = \frac1B \sum_n \Big[g(a_n, b_n) - \log \frac1B \sum_m e^{g(a_n, b_m)}\Big]
    \le \min\{I(x_1; x_2), \log B\}

(Oord et al. 2018; Poole et al. 2019), so it saturates below :math:`\log B` when :math:`I > \log B`. We train it as
the RPM of ``docs/core.md`` §7 (:class:`~pyro_rpm.DeltaRecognition` linear encoders,
:class:`~pyro_rpm.MarginalPrior`, :class:`~pyro_rpm.ContrastivePrior` with a learned
:class:`~pyro_rpm.RBFCoupling`, in-batch support of B), where :math:`\text{loss}/B = -I_{\mathrm{NCE}} + 2 \log B`, and
evaluate it with a hand-written :math:`I_{\mathrm{NCE}}` on fresh data. Two more InfoNCE numbers use the trained
RPM's encoder means and its learned prior's conditional :math:`g(a, b) = \log p(z_2 = b \mid z_1 = a)` as the
critic (the Bayes-optimal critic when :math:`p = Q`): with B candidates (``infonce_rpm_critic``, still
:math:`\le \log B`) and with all N candidates (``infonce_rpm_critic_support``, :math:`\le \log N`). The last one shows
that the cap is the size of the candidate set: the RPM reaches the MI because its normaliser is exact over
the whole data set, not because the same estimator was given a looser bound.

All evaluations are on a fresh sample of N pairs (``seed + 1``), used as the support set.

Usage::

    python examples/optimal_prior_mi.py            # I = 5 nats, 1500 steps (+ a sweep over I = 1..8), N = 16384
    python examples/optimal_prior_mi.py --quick    # I = 5 nats only, 600 steps (CI)

Figures (``--out``): ``optimal_prior_mi.png`` (training curves of elbo_minus_const and :math:`I_{\mathrm{NCE}}`
against the true MI, :math:`\log B` and :math:`\log N`) and, in the full run, ``optimal_prior_mi_sweep.png``.
The last stdout line is one JSON object with ``elbo_minus_const``, ``true_mi``, ``infonce``, ``log_n``
(:math:`\log B`, the InfoNCE cap), ``log_support`` (:math:`\log N`), ``infonce_rpm_critic``,
``infonce_rpm_critic_support``, ``target_met`` (:math:`|\text{elbo\_minus\_const} - I| \le 0.1 I + 0.05`),
``seconds`` (wall clock), ``cpu_seconds`` (CPU time of the whole process), the settings and, in the full run,
``sweep``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _contrastive_rpm import infonce_model  # noqa: E402

from pyro_rpm import (  # noqa: E402
    RPM_ELBO,
    DeltaRecognition,
    GaussianRecognition,
    RBFCoupling,
    RecognitionGuide,
    observe,
)
from pyro_rpm.cli.scripts import emit, progress, script_parser, setup
from pyro_rpm.datasets.gaussian_pairs import correlated_gaussian_pairs, rho_for_mi

SWEEP_MI = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)


class JointGaussianPrior(nn.Module):
    r"""A learned joint Gaussian prior :math:`p(z_1, z_2) = \mathcal N(0, L L^\top)` over two d-dim latents.

    :math:`L` is lower triangular (2d x 2d) with a positive diagonal (``exp`` of a parameter). Sampled as
    :math:`z_1 \sim \mathcal N(0, L_{11} L_{11}^\top)` then
    :math:`z_2 \mid z_1 \sim \mathcal N(L_{21} L_{11}^{-1} z_1, L_{22} L_{22}^\top)`, the factorisation of
    :math:`[z_1; z_2] = L \epsilon`.

    :param int dim: latent dimension d of each of the two latents.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.lower = nn.Parameter(torch.zeros(2 * dim, 2 * dim))
        self.log_diag = nn.Parameter(torch.zeros(2 * dim))

    def scale_tril(self) -> torch.Tensor:
        return torch.tril(self.lower, -1) + torch.diag_embed(self.log_diag.exp())

    def blocks(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(L11, L21, L22)``."""
        tril, d = self.scale_tril(), self.dim
        return tril[:d, :d], tril[d:, :d], tril[d:, d:]

    def conditional_loc(self, z1: torch.Tensor) -> torch.Tensor:
        r""":math:`\mathbb E[z_2 \mid z_1] = L_{21} L_{11}^{-1} z_1`."""
        l11, l21, _ = self.blocks()
        eps1 = torch.linalg.solve_triangular(l11, z1.unsqueeze(-1), upper=False).squeeze(-1)
        return eps1 @ l21.T

    def covariance(self) -> torch.Tensor:
        tril = self.scale_tril()
        return tril @ tril.T

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample the sites ``z1`` and ``z2`` (inside the caller's data plate)."""
        l11, _, l22 = self.blocks()
        zeros = l11.new_zeros(self.dim)
        z1 = pyro.sample("z1", dist.MultivariateNormal(zeros, scale_tril=l11))
        z2 = pyro.sample("z2", dist.MultivariateNormal(self.conditional_loc(z1), scale_tril=l22))
        return z1, z2


def gaussian_critic(prior: JointGaussianPrior, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    r"""The table :math:`g_{nm} = \log p(z_2 = b_m \mid z_1 = a_n)` of the prior's conditional, shape ``(len(a), len(b))``.

    Written out by hand: with :math:`u_n = L_{22}^{-1} \mu(a_n)` and :math:`w_m = L_{22}^{-1} b_m`,
    :math:`g_{nm} = -\frac12 \lVert u_n - w_m \rVert^2 - \log|L_{22}| - \frac d2 \log 2\pi`
    (the squared distances in float64, expanded as :math:`\lVert u\rVert^2 + \lVert w\rVert^2 - 2 u^\top w`).
    """
    _, _, l22 = prior.blocks()
    u = torch.linalg.solve_triangular(l22, prior.conditional_loc(a).T, upper=False).T.double()
    w = torch.linalg.solve_triangular(l22, b.T, upper=False).T.double()
    sq = (u.pow(2).sum(-1)[:, None] + w.pow(2).sum(-1)[None, :] - 2 * u @ w.T).clamp_min(0)
    log_norm = l22.diagonal().log().sum().double() + 0.5 * prior.dim * math.log(2 * math.pi)
    return (-0.5 * sq - log_norm).to(a.dtype)


def infonce_mi(g: torch.Tensor) -> torch.Tensor:
    r""":math:`I_{\mathrm{NCE}} = \frac1B \sum_n [g_{nn} - \log \frac1B \sum_m e^{g_{nm}}]` from a square (B, B) table."""
    size = g.shape[-1]
    return (torch.diagonal(g) - torch.logsumexp(g, dim=-1)).mean() + math.log(size)


def infonce_rows(g: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    r"""Per-row :math:`g_{n, p_n} - \log \frac1M \sum_m e^{g_{nm}}` of a (B, M) table (the positive of row n at column p_n)."""
    pos = g.gather(-1, positives[:, None]).squeeze(-1)
    return pos - torch.logsumexp(g, dim=-1) + math.log(g.shape[-1])


# --- the RPM with the learned Gaussian prior ------------------------------------------------------
def build_rpm(dim: int, batch_size: int, init_scale: float, min_scale: float = 1e-5):
    kwargs = dict(shared_scale=True, init_scale=init_scale, min_scale=min_scale)
    r1 = GaussianRecognition(nn.Linear(dim, dim), dim, name="r1", **kwargs)
    r2 = GaussianRecognition(nn.Linear(dim, dim), dim, name="r2", **kwargs)
    prior = JointGaussianPrior(dim)

    def model(x1, x2, idx=None):
        pyro.module("prior", prior)
        f1, f2 = r1(x1), r2(x2)  # factors of the whole support set: the exact normaliser
        size = batch_size if idx is None else len(idx)
        with pyro.plate("data", x1.shape[0], subsample_size=size, subsample=idx) as i:
            z1, z2 = prior.sample()
            observe("x1", f1, z1, index=i)
            observe("x2", f2, z2, index=i)

    return model, RecognitionGuide(model), (r1, r2, prior)


def evaluate_rpm(model, guide, x1, x2, chunk: int = 1024) -> tuple[float, float]:
    """Mean and standard error over the data of :math:`\\mathcal L_n + 2 \\log N` (support = all of x1, x2)."""
    n = x1.shape[0]
    elbo = RPM_ELBO(max_plate_nesting=1)
    per_chunk = []
    with torch.no_grad():
        for idx in torch.arange(n, device=x1.device).split(chunk):
            # plate scale N / |idx|: loss = (N / |idx|) * sum_{n in idx} -L_n
            per_chunk.append(-elbo.loss(model, guide, x1, x2, idx=idx) / n)  # = mean_{n in idx} L_n
    values = np.array(per_chunk)  # chunk means of L_n (equal chunks, up to the last)
    mean = float(np.average(values, weights=[len(i) for i in torch.arange(n).split(chunk)])) + 2 * math.log(n)
    se = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")
    return mean, se


def train_rpm(x1, x2, *, steps, batch_size, lr, init_scale, show_progress, desc="RPM"):
    pyro.clear_param_store()
    n, dim = x1.shape
    model, guide, modules = build_rpm(dim, batch_size, init_scale)
    for module in modules:
        module.to(x1.device, x1.dtype)
    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.05 ** (1 / steps), "clip_norm": 100.0})
    svi = pyro.infer.SVI(model, guide, optim, RPM_ELBO(max_plate_nesting=1))
    curve = []
    for _ in progress(steps, desc, disable=not show_progress):
        curve.append(-svi.step(x1, x2) / n + 2 * math.log(n))  # unbiased estimate of elbo_minus_const
    return model, guide, modules, np.array(curve)


# --- InfoNCE as the RPM of docs/core.md §7 -----------------------------------------------------------
def train_infonce(x1, x2, *, steps, batch_size, lr, show_progress, seed):
    pyro.clear_param_store()
    n, dim = x1.shape
    net1, net2 = nn.Linear(dim, dim).to(x1.device, x1.dtype), nn.Linear(dim, dim).to(x1.device, x1.dtype)
    e1, e2 = DeltaRecognition(net1, dim, name="e1"), DeltaRecognition(net2, dim, name="e2")
    coupling = RBFCoupling(1.0, name="g_rbf").to(x1.device, x1.dtype)

    model = infonce_model(e1, e2, coupling)
    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.05 ** (1 / steps), "clip_norm": 100.0})
    svi = pyro.infer.SVI(model, RecognitionGuide(model), optim, RPM_ELBO())
    generator = torch.Generator().manual_seed(seed)
    log_b, curve = math.log(batch_size), []
    for _ in progress(steps, "InfoNCE", disable=not show_progress):
        idx = torch.randperm(n, generator=generator)[:batch_size].to(x1.device)
        curve.append(2 * log_b - svi.step(x1[idx], x2[idx]) / batch_size)  # loss/B = -I_NCE + 2 log B

    def critic(a_in, b_in):
        a, b = net1(a_in), net2(b_in)
        return -((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / (2 * coupling.lengthscale.reshape(()) ** 2)

    return critic, np.array(curve)


def batched_infonce(critic, x1, x2, batch_size: int, generator: torch.Generator) -> float:
    """Mean of :func:`infonce_mi` over disjoint random batches of ``batch_size`` pairs (the usual estimator)."""
    n = x1.shape[0]
    perm = torch.randperm(n, generator=generator).to(x1.device)
    values = []
    with torch.no_grad():
        for idx in perm[: n - n % batch_size].split(batch_size):
            values.append(infonce_mi(critic(x1[idx], x2[idx])).item())
    return float(np.mean(values))


def support_infonce(critic, x1, x2, chunk: int = 512) -> float:
    """InfoNCE with all N pairs as candidates for every positive (cap log N)."""
    n = x1.shape[0]
    rows = []
    with torch.no_grad():
        for idx in torch.arange(n, device=x1.device).split(chunk):
            rows.append(infonce_rows(critic(x1[idx], x2), idx))
    return float(torch.cat(rows).mean())


def ideal_elbo_minus_const(
    x1, x2, rho: float, *, queries: int = 2048, grid: int = 12, seed: int = 0
) -> tuple[float, float]:
    r"""The best elbo_minus_const that *ideal* linear encoders reach on this support set, by hand (no pyro_rpm).

    Identity encoders with factor width s, :math:`f_j(z \mid x) = \mathcal N(z; x, s^2 I)`, and the exactly optimal
    Gaussian prior for them, :math:`p = Q_\infty` with :math:`\operatorname{Var} z_j = 1 + s^2`,
    :math:`\operatorname{Cov}(z_{1k}, z_{2k}) = \rho`. For each s on a grid the Monte Carlo value of
    :math:`\mathbb E[\log p(z_1, z_2) - \log \sum_m f_1(z_1 \mid x_1^{(m)}) - \log \sum_m f_2(z_2 \mid x_2^{(m)})] + 2\log N`
    over ``queries`` data points (all N as the support) is computed with the same noise draws; returns the
    maximum over the grid and its :math:`s^2`. This is the finite-support ceiling of the construction.
    """
    n, dim = x1.shape
    gen = torch.Generator().manual_seed(seed)
    x1, x2 = x1.double().cpu(), x2.double().cpu()
    q = torch.randperm(n, generator=gen)[: min(queries, n)]
    eps1 = torch.randn(len(q), dim, generator=gen, dtype=torch.float64)
    eps2 = torch.randn(len(q), dim, generator=gen, dtype=torch.float64)
    gap = (1 - rho) * (1 + rho)
    # |x_q + s e_q - x_m|^2 = |x_q - x_m|^2 + 2 s e_q.(x_q - x_m) + s^2 |e_q|^2: two (queries, N) tables per view
    tables = []
    for x, eps in ((x1, eps1), (x2, eps2)):
        base = torch.cdist(x[q], x).pow(2)
        cross = (eps * x[q]).sum(-1, keepdim=True) - eps @ x.T
        tables.append((base, cross, eps.pow(2).sum(-1, keepdim=True)))
    best = (-math.inf, float("nan"))
    for s2 in (gap * np.geomspace(0.005, 2.0, grid)).tolist():
        s = math.sqrt(s2)
        z1, z2 = x1[q] + s * eps1, x2[q] + s * eps2
        log_sums = [
            torch.logsumexp(-(base + 2 * s * cross + s2 * e2) / (2 * s2), -1)
            - dim * (math.log(s) + 0.5 * math.log(2 * math.pi))
            for base, cross, e2 in tables
        ]
        # log p(z1, z2) per dimension pair: bivariate normal, variances v, covariance rho
        v = 1 + s2
        det = v * v - rho * rho
        quad = (v * z1.pow(2) - 2 * rho * z1 * z2 + v * z2.pow(2)) / det
        log_p = (-0.5 * quad - 0.5 * math.log(det) - math.log(2 * math.pi)).sum(-1)
        value = float((log_p - log_sums[0] - log_sums[1]).mean()) + 2 * math.log(n)
        best = max(best, (value, s2))
    return best


def run_setting(mi, args, device, *, show_progress, tag=""):
    """Train both models at mutual information ``mi``; evaluate on a fresh sample."""
    rho = rho_for_mi(mi, args.dim)
    x1, x2, true_mi = correlated_gaussian_pairs(args.support, args.dim, rho, seed=args.seed)
    x1e, x2e, _ = correlated_gaussian_pairs(args.support, args.dim, rho, seed=args.seed + 1)
    x1, x2, x1e, x2e = (t.to(device) for t in (x1, x2, x1e, x2e))
    pyro.set_rng_seed(args.seed)
    model, guide, (r1, r2, prior), rpm_curve = train_rpm(
        x1, x2, steps=args.steps, batch_size=args.batch_size, lr=args.lr, init_scale=args.init_scale,
        show_progress=show_progress, desc=f"RPM{tag}",
    )  # fmt: skip
    elbo_mc, elbo_se = evaluate_rpm(model, guide, x1e, x2e)
    elbo_train, _ = evaluate_rpm(model, guide, x1, x2)

    def rpm_critic(a_in, b_in):
        return gaussian_critic(prior, r1.net(a_in), r2.net(b_in))

    gen = torch.Generator().manual_seed(args.seed + 2)
    nce_rpm = batched_infonce(rpm_critic, x1e, x2e, args.nce_batch, gen)
    nce_rpm_support = support_infonce(rpm_critic, x1e, x2e)
    ideal, ideal_s2 = ideal_elbo_minus_const(x1e, x2e, rho, seed=args.seed)
    with torch.no_grad():
        scales = torch.cat([r1(x1e[:1]).scale[0], r2(x2e[:1]).scale[0]]).tolist()
        gains = [torch.linalg.svdvals(r.net.weight).tolist() for r in (r1, r2)]
        cov = prior.covariance()
        d = args.dim
        prior_mi = 0.5 * float(torch.logdet(cov[:d, :d]) + torch.logdet(cov[d:, d:]) - torch.logdet(cov))
    pyro.set_rng_seed(args.seed)
    critic, nce_curve = train_infonce(
        x1, x2, steps=args.steps, batch_size=args.nce_batch, lr=args.lr, show_progress=show_progress,
        seed=args.seed,
    )  # fmt: skip
    nce = batched_infonce(critic, x1e, x2e, args.nce_batch, torch.Generator().manual_seed(args.seed + 2))
    return {
        "true_mi": true_mi,
        "rho": rho,
        "elbo_minus_const": elbo_mc,
        "elbo_minus_const_se": elbo_se,
        "elbo_minus_const_train": elbo_train,
        "prior_mi": prior_mi,
        "elbo_minus_const_ideal": ideal,
        "ideal_factor_var": ideal_s2,
        "infonce": nce,
        "infonce_rpm_critic": nce_rpm,
        "infonce_rpm_critic_support": nce_rpm_support,
        "factor_scales": scales,
        "encoder_gains": gains,
        "curves": (rpm_curve, nce_curve),
    }


def _smooth(curve: np.ndarray, width: int) -> np.ndarray:
    width = max(1, min(width, len(curve)))
    kernel = np.ones(width) / width
    return np.convolve(np.pad(curve, (width - 1, 0), mode="edge"), kernel, mode="valid")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_curves(out: str, res: dict, log_b: float, log_n: float, nce_batch: int, support: int) -> str:
    plt = _plt()
    rpm_curve, nce_curve = res["curves"]
    steps = np.arange(1, len(rpm_curve) + 1)
    width = max(1, len(rpm_curve) // 50)
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    ax.plot(steps, rpm_curve, color="C0", alpha=0.2, lw=0.8)
    ax.plot(steps, _smooth(rpm_curve, width), color="C0", lw=2, label="RPM ELBO - const (learned Gaussian prior)")
    ax.plot(steps, nce_curve, color="C1", alpha=0.2, lw=0.8)
    ax.plot(steps, _smooth(nce_curve, width), color="C1", lw=2, label=f"InfoNCE estimate (B = {nce_batch})")
    ax.axhline(res["true_mi"], color="k", ls="--", lw=1.2, label=f"true MI = {res['true_mi']:.2f}")
    ax.axhspan(0.9 * res["true_mi"] - 0.05, 1.1 * res["true_mi"] + 0.05, color="k", alpha=0.07, label="target band")
    ax.axhline(log_b, color="C1", ls=":", lw=1.2, label=f"log B = {log_b:.2f}")
    ax.axhline(log_n, color="C0", ls=":", lw=1.2, label=f"log N = {log_n:.2f} (N = {support})")
    ax.set_ylim(min(-0.5, float(np.percentile(rpm_curve, 5))), log_n + 0.5)
    ax.set_xlabel("SVI step")
    ax.set_ylabel("nats")
    ax.set_title(
        f"Fresh data: ELBO - const = {res['elbo_minus_const']:.2f}, InfoNCE = {res['infonce']:.2f}, "
        f"MI = {res['true_mi']:.2f}",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "optimal_prior_mi.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_sweep(out: str, sweep: list[dict], log_b: float, log_n: float, nce_batch: int) -> str:
    plt = _plt()
    mi = np.array([r["true_mi"] for r in sweep])
    fig, ax = plt.subplots(figsize=(6.0, 4.4))
    grid = np.linspace(0, mi.max() + 0.5, 50)
    ax.plot(grid, grid, "k--", lw=1, label="true MI")
    ax.fill_between(grid, 0.9 * grid - 0.05, 1.1 * grid + 0.05, color="k", alpha=0.07, label="target band")
    ax.plot(mi, [r["elbo_minus_const"] for r in sweep], "o-", color="C0", label="RPM ELBO - const")
    ax.plot(
        mi, [r["elbo_minus_const_ideal"] for r in sweep], "o:", color="C0", alpha=0.5, label="ideal encoders, same N"
    )
    ax.plot(mi, [r["infonce"] for r in sweep], "s-", color="C1", label=f"InfoNCE (trained, B = {nce_batch})")
    ax.plot(mi, [r["infonce_rpm_critic"] for r in sweep], "^:", color="C2", label="InfoNCE, RPM critic, B")
    ax.plot(mi, [r["infonce_rpm_critic_support"] for r in sweep], "v:", color="C4", label="InfoNCE, RPM critic, N")
    ax.axhline(log_b, color="C1", ls=":", lw=1, label=f"log B = {log_b:.2f}")
    ax.axhline(log_n, color="C0", ls=":", lw=1, label=f"log N = {log_n:.2f}")
    ax.set_xlabel("true mutual information (nats)")
    ax.set_ylabel("estimate on fresh data (nats)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out, "optimal_prior_mi_sweep.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _summary(res: dict) -> dict:
    return {k: v for k, v in res.items() if k != "curves"}


def main(argv: list[str] | None = None) -> dict:
    parser = script_parser(
        "RPM ELBO under a learned optimal (Gaussian) prior vs the mutual information and InfoNCE (Aitchison & Ganev §4.4).",
        script=__file__,
        quick_help="only the main setting (no sweep over the MI)",
        steps_help="SVI steps per model (default 1500; 600 with --quick)",
    )
    parser.add_argument("--mi", type=float, default=5.0, help="true MI of the main setting in nats (default 5)")
    parser.add_argument("--dim", type=int, default=1, help="dimension d of each view (default 1)")
    parser.add_argument("--support", type=int, default=16384, help="N, data set = support size (default 16384)")
    parser.add_argument("--batch-size", type=int, default=256, help="RPM minibatch of positives (default 256)")
    parser.add_argument("--nce-batch", type=int, default=64, help="InfoNCE batch B (default 64)")
    parser.add_argument("--lr", type=float, default=0.05, help="Adam learning rate (default 0.05)")
    parser.add_argument("--init-scale", type=float, default=0.3, help="initial factor scale (default 0.3)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the sweep over the MI in the full run")
    parser.add_argument("--sweep-steps", type=int, default=800, help="SVI steps per model in the sweep (default 800)")
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 600 if args.quick else 1500
    if (
        args.steps < 1
        or args.sweep_steps < 1
        or args.dim < 1
        or args.support < 2
        or not 2 <= args.nce_batch <= args.support
    ):
        parser.error("need --steps >= 1, --dim >= 1, --support >= 2 and 2 <= --nce-batch <= --support")
    if not 1 <= args.batch_size <= args.support or not 0 < args.mi < float("inf"):
        parser.error("need 1 <= --batch-size <= --support and --mi > 0")
    try:
        device = setup(args)
    except ValueError as error:
        parser.error(str(error))
    start = time.perf_counter()
    show = not args.no_progress
    log_b, log_n = math.log(args.nce_batch), math.log(args.support)

    main_res = run_setting(args.mi, args, device, show_progress=show)
    figures = [save_curves(args.out, main_res, log_b, log_n, args.nce_batch, args.support)]
    tol = 0.1 * main_res["true_mi"] + 0.05
    print(f"d = {args.dim}, rho = {main_res['rho']:.6f}, N = {args.support}, B(InfoNCE) = {args.nce_batch}")
    print(f"{'quantity':<34} {'value':>9}")
    for key, label in (
        ("true_mi", "true MI  -d/2 log(1-rho^2)"),
        ("elbo_minus_const", "RPM ELBO + 2 log N (fresh data)"),
        ("elbo_minus_const_train", "RPM ELBO + 2 log N (training data)"),
        ("elbo_minus_const_ideal", "ideal encoders, same support"),
        ("prior_mi", "MI of the learned prior"),
        ("infonce", "InfoNCE, trained (B)"),
        ("infonce_rpm_critic", "InfoNCE, RPM critic (B)"),
        ("infonce_rpm_critic_support", "InfoNCE, RPM critic (N)"),
    ):
        print(f"{label:<34} {main_res[key]:>9.4f}")
    print(f"{'log B':<34} {log_b:>9.4f}\n{'log N':<34} {log_n:>9.4f}")
    print(f"target |ELBO - const - MI| <= {tol:.3f}: {abs(main_res['elbo_minus_const'] - main_res['true_mi']):.3f}")

    sweep = []
    if not args.quick and not args.no_sweep:
        sweep_args = argparse.Namespace(**{**vars(args), "steps": args.sweep_steps})
        for k, mi in enumerate(SWEEP_MI):
            res = _summary(run_setting(mi, sweep_args, device, show_progress=show, tag=f" {k + 1}/{len(SWEEP_MI)}"))
            sweep.append(res)
            print(
                f"sweep MI {res['true_mi']:.3f}: ELBO-const {res['elbo_minus_const']:.3f}, InfoNCE {res['infonce']:.3f},"
                f" RPM critic (B) {res['infonce_rpm_critic']:.3f}, (N) {res['infonce_rpm_critic_support']:.3f}",
                flush=True,
            )
        figures.append(save_sweep(args.out, sweep, log_b, log_n, args.nce_batch))

    result = {
        "elbo_minus_const": main_res["elbo_minus_const"],
        "true_mi": main_res["true_mi"],
        "infonce": main_res["infonce"],
        "log_n": log_b,
        "log_support": log_n,
        "target_met": abs(main_res["elbo_minus_const"] - main_res["true_mi"]) <= tol,
        **{k: v for k, v in _summary(main_res).items() if k not in ("elbo_minus_const", "true_mi", "infonce")},
        "nce_batch": args.nce_batch,
        "support": args.support,
        "batch_size": args.batch_size,
        "dim": args.dim,
        "steps": args.steps,
        "sweep_steps": args.sweep_steps if sweep else 0,
        "seed": args.seed,
        "device": str(device),
        "seconds": round(time.perf_counter() - start, 2),
        "cpu_seconds": round(time.process_time(), 2),  # whole process, imports included: robust to a shared CPU
        "figures": figures,
    }
    if sweep:
        result["sweep"] = sweep
    emit(result)
    return result


if __name__ == "__main__":
    main()
