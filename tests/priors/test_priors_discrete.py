# SPDX-License-Identifier: Apache-2.0
"""Discrete priors: the enumerated RPM likelihood and posteriors equal brute-force sums over all
latent configurations; validation of the priors' arguments."""

import itertools

import pyro
import pytest
import torch
from pyro.infer import SVI, TraceEnum_ELBO
from torch import nn

from pyro_rpm import CategoricalRecognition, RecognitionGuide, observe
from pyro_rpm.infer.posterior import discrete_marginals, map_path, sample_discrete
from pyro_rpm.priors.discrete import CategoricalPrior, HMMPrior
from pyro_rpm.support.sequences import SequenceSupport

K = 3


def _log_lik_table(logits_all: torch.Tensor, support: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """log p(x = frame | z = k) for every state k: log f(k | x_frame) - log sum_{m in support} f(k | x_m).

    Independent of pyro_rpm: plain log-softmax over the support set. Shape (len(frames), K)."""
    log_f = logits_all.log_softmax(-1)  # (M_all, K)
    return log_f[frames] - torch.logsumexp(log_f[support], 0)


# ---------------------------------------------------------------------------- peer supervision
def _peer_model(r1, r2, prior):
    def model(x1, x2):
        f1, f2 = r1(x1), r2(x2)
        with pyro.plate("data", x1.shape[0]):
            z = prior("z")
            observe("x1", f1, z)
            observe("x2", f2, z)

    return model


@pytest.mark.parametrize("learned", [False, True])
def test_peer_supervision_marginal_likelihood_equals_brute_force(learned):
    N = 5
    torch.manual_seed(1)
    x1, x2 = torch.randn(N, 4), torch.randn(N, 4)
    r1 = CategoricalRecognition(nn.Linear(4, K), K, name="r1")
    r2 = CategoricalRecognition(nn.Linear(4, K), K, name="r2")
    probs = torch.tensor([0.2, 0.5, 0.3]) if learned else None
    prior = CategoricalPrior(K, probs=probs, learn=learned)
    model = _peer_model(r1, r2, prior)
    guide = RecognitionGuide(model)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model, guide, x1, x2)

    # brute force: sum over all K^N joint configurations of the N latents
    with torch.no_grad():
        support = torch.arange(N)
        lik = _log_lik_table(r1.net(x1), support, support) + _log_lik_table(r2.net(x2), support, support)
        log_prior = prior.probs.log()
        joint = []
        configs = list(itertools.product(range(K), repeat=N))
        for config in configs:
            z = torch.tensor(config)
            joint.append((log_prior[z] + lik[support, z]).sum())
        joint = torch.stack(joint)
        log_p = torch.logsumexp(joint, 0)
    assert loss == pytest.approx(-log_p.item(), abs=1e-4)

    # posterior marginals p(z_n = k | X) from the same brute-force table
    marginals = discrete_marginals(model, guide, x1, x2)["z"].probs
    post = (joint - log_p).exp()
    configs = torch.tensor(configs)
    brute = torch.stack([torch.stack([post[configs[:, n] == k].sum() for k in range(K)]) for n in range(N)])
    assert marginals.shape == (N, K)
    assert torch.allclose(marginals, brute, atol=1e-5)
    # the MAP configuration is the brute-force argmax
    assert torch.equal(map_path(model, None, x1, x2)["z"], configs[joint.argmax()])


def test_peer_supervision_posterior_is_prior_times_factor_ratios():
    """The exact posterior is p(k) prod_j f_j(k|x_jn) / sum_m f_j(k|x_jm), not the tied product prod_j f_j."""
    N = 6
    x1, x2 = torch.randn(N, 4), torch.randn(N, 4)
    r1 = CategoricalRecognition(nn.Linear(4, K), K, name="r1")
    r2 = CategoricalRecognition(nn.Linear(4, K), K, name="r2")
    prior = CategoricalPrior(K, probs=torch.tensor([0.6, 0.3, 0.1]), learn=False)
    model = _peer_model(r1, r2, prior)
    marginals = discrete_marginals(model, None, x1, x2)["z"].probs
    with torch.no_grad():
        s = torch.arange(N)
        logits = prior.probs.log() + _log_lik_table(r1.net(x1), s, s) + _log_lik_table(r2.net(x2), s, s)
    assert torch.allclose(marginals, logits.softmax(-1), atol=1e-6)


def test_peer_supervision_trains_prior_and_recognition():
    """Gradients reach the prior logits and the networks through the exact enumerated loss."""
    N = 16
    x1, x2 = torch.randn(N, 4), torch.randn(N, 4)
    r1 = CategoricalRecognition(nn.Linear(4, K), K, name="r1")
    r2 = CategoricalRecognition(nn.Linear(4, K), K, name="r2")
    prior = CategoricalPrior(K)
    model = _peer_model(r1, r2, prior)
    svi = SVI(model, RecognitionGuide(model), pyro.optim.Adam({"lr": 0.05}), TraceEnum_ELBO(max_plate_nesting=1))
    losses = [svi.step(x1, x2) for _ in range(60)]
    assert losses[-1] < losses[0] - 1.0
    names = set(pyro.get_param_store().keys())
    assert "categorical_prior$$$logits" in names and "r1$$$net.weight" in names


# ---------------------------------------------------------------------------- HMM
def _hmm_model(r, hmm, T, pooling):
    def model(x):
        f = r(x.flatten(0, 1))
        support = SequenceSupport(f, T, pooling)
        with pyro.plate("sequences", x.shape[0]):
            for t, z in hmm("z", T):
                support.observe(f"x_{t}", z, t)

    return model


def _hmm_brute_force(r, hmm, x, pooling, support=None):
    """Joint log p(paths, X) over all K^(N*T) path configurations of the N sequences (N*T small).

    ``support``: the sequences whose frames form the ergodic support (default ``x``; ``x`` must be its first ones)."""
    N, T = x.shape[:2]
    with torch.no_grad():
        if pooling == "ergodic":
            support = x if support is None else support
            logits = r.net(support.flatten(0, 1))
            lik = _log_lik_table(logits, torch.arange(logits.shape[0]), torch.arange(N * T)).reshape(N, T, K)
        else:
            logits, frames = r.net(x.flatten(0, 1)), torch.arange(N * T)
            lik = torch.stack([_log_lik_table(logits, frames[t::T], frames[t::T]) for t in range(T)], 1)
        paths = torch.tensor(list(itertools.product(range(K), repeat=T)))  # (K^T, T)
        log_prior = hmm.log_prob(paths)  # (K^T,)
        per_seq = log_prior + torch.stack([lik[n, torch.arange(T), paths].sum(-1) for n in range(N)])  # (N, K^T)
        # joint over all sequences: configurations = product of per-sequence paths
        joint = per_seq[0]
        for n in range(1, N):
            joint = (joint.unsqueeze(-1) + per_seq[n]).reshape(-1)
    return paths, per_seq, joint


@pytest.mark.parametrize("pooling, N", [("data", 2), ("ergodic", 2), ("ergodic", 1)])
def test_hmm_marginal_likelihood_and_posteriors_equal_brute_force(pooling, N):
    T = 4
    torch.manual_seed(2)
    x = torch.randn(N, T, 4)
    r = CategoricalRecognition(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, K)), K, name="r")
    trans = torch.rand(K, K) + 0.1
    trans = trans / trans.sum(-1, keepdim=True)
    hmm = HMMPrior(K, init=torch.tensor([0.5, 0.3, 0.2]), transition=trans)
    model = _hmm_model(r, hmm, T, pooling)
    guide = RecognitionGuide(model)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model, guide, x)
    paths, per_seq, joint = _hmm_brute_force(r, hmm, x, pooling)
    log_p = torch.logsumexp(joint, 0)
    assert loss == pytest.approx(-log_p.item(), rel=1e-5, abs=1e-4)

    # posterior marginals p(z_t^(n) = k | X): sequences are independent given the factors
    marginals = discrete_marginals(model, guide, x)
    post = (per_seq - per_seq.logsumexp(-1, keepdim=True)).exp()  # (N, K^T)
    for t in range(T):
        brute = torch.stack([torch.stack([post[n, paths[:, t] == k].sum() for k in range(K)]) for n in range(N)])
        assert marginals[f"z_{t}"].probs.shape == (N, K)
        assert torch.allclose(marginals[f"z_{t}"].probs, brute, atol=1e-5), t

    # Viterbi path equals the brute-force most likely path of each sequence
    values = map_path(model, guide, x)
    path = torch.stack([values[s] for s in hmm.site_names("z", T)], -1)  # (N, T), also for N = 1
    assert torch.equal(path, paths[per_seq.argmax(-1)])


def test_hmm_posterior_samples_follow_exact_posterior():
    """Forward-filtering backward-sampling draws match the brute-force path posterior.

    S copies of one sequence in a plate give S independent joint draws in one call."""
    T, S = 3, 4000
    torch.manual_seed(3)
    x = torch.randn(1, T, 4).expand(S, T, 4)
    r = CategoricalRecognition(nn.Linear(4, K), K, name="r")
    hmm = HMMPrior(K)
    model = _hmm_model(r, hmm, T, "ergodic")
    paths, per_seq, _ = _hmm_brute_force(r, hmm, x[:2], "ergodic", support=x)
    exact = (per_seq[0] - per_seq[0].logsumexp(0)).exp()
    values = sample_discrete(model, None, x)
    drawn = torch.stack([values[s] for s in hmm.site_names("z", T)], -1)  # (S, T)
    codes = (drawn * K ** torch.arange(T - 1, -1, -1)).sum(-1)  # path index in itertools.product order
    freq = torch.bincount(codes, minlength=len(paths)).double() / S
    # every path's frequency within 5 binomial standard errors
    se = (exact * (1 - exact) / S).sqrt()
    assert bool(((freq - exact).abs() <= 5 * se + 1e-3).all())


def test_hmm_learns_transition_matrix_gradients():
    T, N = 6, 3
    x = torch.randn(N, T, 4)
    r = CategoricalRecognition(nn.Linear(4, K), K, name="r")
    hmm = HMMPrior(K, learn_init=True, name="hmm")
    model = _hmm_model(r, hmm, T, "data")
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    loss = elbo.differentiable_loss(model, lambda x: None, x)
    loss.backward()
    assert hmm.transition_logits.grad is not None and bool(hmm.transition_logits.grad.abs().sum() > 0)
    assert hmm.init_logits.grad is not None
    # rows of the transition matrix stay stochastic
    assert torch.allclose(hmm.transition_matrix.sum(-1), torch.ones(K))


def test_hmm_log_prob_matches_manual_product():
    trans = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    init = torch.tensor([0.2, 0.3, 0.5])
    hmm = HMMPrior(K, init=init, transition=trans, learn_transition=False)
    path = torch.tensor([2, 2, 0, 1])
    expected = init[2] * trans[2, 2] * trans[2, 0] * trans[0, 1]
    assert hmm.log_prob(path).item() == pytest.approx(expected.log().item(), rel=1e-6)
    assert torch.allclose(hmm.transition_matrix, trans)
    assert torch.allclose(hmm.initial_probs, init)


def test_hmm_accepts_structural_zeros():
    trans = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5]])
    hmm = HMMPrior(K, transition=trans)
    assert torch.allclose(hmm.transition_matrix, trans, atol=1e-12)
    assert bool(torch.isfinite(hmm.transition_logits).all())


# ---------------------------------------------------------------------------- validation
@pytest.mark.parametrize("cls", [CategoricalPrior, HMMPrior])
@pytest.mark.parametrize("bad", [1, 0, -2, 2.0, True, "3"])
def test_num_states_must_be_at_least_two(cls, bad):
    with pytest.raises(ValueError, match="num_states must be an int >= 2"):
        cls(bad)


def test_transition_must_be_stochastic():
    with pytest.raises(ValueError, match="transition must be stochastic"):
        HMMPrior(2, transition=torch.tensor([[0.5, 0.6], [0.5, 0.5]]))
    with pytest.raises(ValueError, match="transition must be non-negative"):
        HMMPrior(2, transition=torch.tensor([[1.5, -0.5], [0.5, 0.5]]))
    with pytest.raises(ValueError, match=r"transition must have shape \(3, 3\)"):
        HMMPrior(3, transition=torch.eye(2))
    with pytest.raises(ValueError, match="transition must be finite"):
        HMMPrior(2, transition=torch.tensor([[float("nan"), 1.0], [0.5, 0.5]]))
    with pytest.raises(TypeError, match="transition must be a tensor"):
        HMMPrior(2, transition="uniform")


def test_init_and_probs_validation():
    with pytest.raises(ValueError, match="init must be stochastic"):
        HMMPrior(3, init=torch.tensor([0.2, 0.2, 0.2]))
    with pytest.raises(ValueError, match=r"init must have shape \(3,\)"):
        HMMPrior(3, init=torch.ones(2) / 2)
    with pytest.raises(ValueError, match="probs must be stochastic"):
        CategoricalPrior(2, probs=[0.3, 0.3])
    with pytest.raises(ValueError, match="enumerate must be one of"):
        CategoricalPrior(2, enumerate="yes")


def test_hmm_call_validation():
    hmm = HMMPrior(2)
    with pytest.raises(ValueError, match="num_steps must be an int >= 1"):
        hmm("z", 0)
    with pytest.raises(TypeError, match="name must be a str"):
        hmm(3, 4)
    with pytest.raises(ValueError, match="path must be an integer tensor"):
        hmm.log_prob(torch.zeros(3))


def test_non_enumerated_prior_samples():
    prior = CategoricalPrior(4, probs=torch.tensor([0.0, 0.0, 1.0, 0.0]), learn=False, enumerate=None)
    tr = pyro.poutine.trace(lambda: prior("z")).get_trace()
    assert tr.nodes["z"]["value"].item() == 2
    assert "enumerate" not in tr.nodes["z"]["infer"]


def test_recognition_guide_leaves_enumerated_sites_to_the_elbo():
    """RecognitionGuide skips enumerated latents (no 'latent not observed' error, no guide site)."""
    N = 4
    x1, x2 = torch.randn(N, 4), torch.randn(N, 4)
    r1 = CategoricalRecognition(nn.Linear(4, K), K, name="r1")
    r2 = CategoricalRecognition(nn.Linear(4, K), K, name="r2")
    model = _peer_model(r1, r2, CategoricalPrior(K))
    guide = RecognitionGuide(model)
    trace = pyro.poutine.trace(guide).get_trace(x1, x2)
    assert not [name for name, site in trace.nodes.items() if site["type"] == "sample"]
    # the same model without enumeration gets the tied categorical posterior q ∝ f1 f2
    model_sampled = _peer_model(r1, r2, CategoricalPrior(K, enumerate=None))
    q = pyro.poutine.trace(RecognitionGuide(model_sampled)).get_trace(x1, x2).nodes["z"]["fn"].base
    expected = (r1.net(x1).log_softmax(-1) + r2.net(x2).log_softmax(-1)).softmax(-1)
    assert torch.allclose(q.probs, expected, atol=1e-6)
