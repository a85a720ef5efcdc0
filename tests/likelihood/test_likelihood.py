# SPDX-License-Identifier: Apache-2.0
r"""The recognition-parameterised likelihood against Categorical, brute-force sums and sampling tests.

Brute force: :math:`\log p(n \mid z) = \log f(z \mid x_n) - \log \sum_m f(z \mid x_m)`, with every
:math:`f(z \mid x_m)` evaluated separately by ``torch.distributions`` in float64 inside python loops.
"""

import math
import pickle

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.distributions.testing.gof import multinomial_goodness_of_fit

from pyro_rpm import CategoricalFactor, DeltaFactor, GaussianFactor, RecognitionLikelihood, observe

M, B, D, K = 5, 4, 2, 3


def make_factors(kind: str, seed: int = 0):
    """Factors over M support points and a matching batch of B latents (moderate densities)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        factors = GaussianFactor(torch.randn(M, D, generator=g), torch.empty(M, D).uniform_(0.5, 1.5, generator=g))
        latent = torch.randn(B, D, generator=g)
    elif kind == "delta":
        factors = DeltaFactor(torch.randn(M, D, generator=g), 0.8)
        latent = torch.randn(B, D, generator=g)
    else:
        factors = CategoricalFactor(2 * torch.randn(M, K, generator=g))
        latent = torch.randint(K, (B,), generator=g)
    return factors, latent


def brute_force_log_prob(factors, latent: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Python loops over latents and support points, float64 torch.distributions per pair."""
    out = torch.empty(len(latent), dtype=torch.float64)
    for b in range(len(latent)):
        densities = []
        for m in range(factors.num_support):
            if isinstance(factors, CategoricalFactor):
                component = torch.distributions.Categorical(logits=factors.logits[m].double())
                log_f = component.log_prob(latent[b])
            else:
                component = torch.distributions.Normal(factors.loc[m].double(), factors.scale[m].double())
                log_f = component.log_prob(latent[b].double()).sum()
            densities.append(math.exp(float(log_f)))
        out[b] = math.log(densities[int(value[b])]) - math.log(sum(densities))
    return out


KINDS = ["gaussian", "delta", "categorical"]


# ----------------------------------------------------------------------------------------------
# Correctness
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_log_prob_matches_categorical_and_brute_force(kind):
    factors, latent = make_factors(kind)
    lik = RecognitionLikelihood(factors, latent)
    assert lik.batch_shape == (B,) and lik.event_shape == ()
    value = torch.tensor([3, 0, 4, 4])
    log_prob = lik.log_prob(value)
    assert log_prob.shape == (B,)
    categorical = dist.Categorical(logits=factors.pairwise_log_prob(latent))
    torch.testing.assert_close(log_prob, categorical.log_prob(value))
    brute = brute_force_log_prob(factors, latent, value)
    assert float(((log_prob.double() - brute).abs() / brute.abs().clamp(min=1)).max()) < 1e-5
    # the normaliser and the diagonal separately
    torch.testing.assert_close(lik.log_normaliser, lik.logits.logsumexp(-1))
    torch.testing.assert_close(lik.diagonal(value) - lik.log_normaliser, log_prob)


@pytest.mark.parametrize("kind", KINDS)
def test_probabilities_sum_to_one_over_support(kind):
    factors, latent = make_factors(kind, seed=1)
    lik = RecognitionLikelihood(factors, latent)
    support = lik.enumerate_support()
    assert support.shape == (M, B)
    assert lik.support.check(support).all()
    total = lik.log_prob(support).exp().sum(0)
    torch.testing.assert_close(total, torch.ones(B))


@pytest.mark.parametrize("kind", KINDS)
def test_sample_frequencies_goodness_of_fit(kind):
    factors, latent = make_factors(kind, seed=2)
    lik = RecognitionLikelihood(factors, latent[0])  # one latent: batch_shape ()
    assert lik.batch_shape == ()
    num_samples = 20000
    samples = lik.sample((num_samples,))
    assert samples.shape == (num_samples,) and samples.dtype == torch.long
    counts = torch.bincount(samples, minlength=M).double()
    probs = lik.log_prob(torch.arange(M)).exp().double()
    assert multinomial_goodness_of_fit(probs, counts) > 2e-5
    # power check: the same counts reject the uniform distribution
    assert (probs.max() - probs.min()) > 0.1
    assert multinomial_goodness_of_fit(torch.full((M,), 1.0 / M, dtype=torch.float64), counts) < 1e-6


def test_batched_sample_shape_and_support():
    factors, latent = make_factors("gaussian")
    lik = RecognitionLikelihood(factors, latent.expand(3, B, D))
    samples = lik.sample((6,))
    assert samples.shape == (6, 3, B)
    assert lik.support.check(samples).all()


# ----------------------------------------------------------------------------------------------
# Shapes, expand, support, validation, pickling
# ----------------------------------------------------------------------------------------------


def test_leading_particle_dims():
    factors, _ = make_factors("gaussian")
    latent = torch.randn(3, B, D)
    lik = RecognitionLikelihood(factors, latent)
    assert lik.batch_shape == (3, B)
    assert lik.logits.shape == (3, B, M)
    value = torch.tensor([1, 0, 2, 4])
    log_prob = lik.log_prob(value)
    assert log_prob.shape == (3, B)
    for p in range(3):
        torch.testing.assert_close(log_prob[p], RecognitionLikelihood(factors, latent[p]).log_prob(value))
    assert RecognitionLikelihood(factors, latent[0, 0]).batch_shape == ()


@pytest.mark.parametrize("compute_first", [False, True], ids=["lazy", "computed"])
def test_expand_consistency(compute_first):
    factors, latent = make_factors("gaussian")
    lik = RecognitionLikelihood(factors, latent)
    value = torch.tensor([2, 2, 0, 1])
    if compute_first:
        lik.logits  # noqa: B018 - materialise the lazy table before expanding
    expanded = lik.expand((3, B))
    assert type(expanded) is RecognitionLikelihood
    assert expanded.batch_shape == (3, B)
    assert expanded.factors is factors and expanded.latent_source is latent
    torch.testing.assert_close(expanded.log_prob(value), lik.log_prob(value).expand(3, B))
    assert expanded.enumerate_support().shape == (M, 3, B)
    # a batch-less likelihood expands to a plate
    single = RecognitionLikelihood(factors, latent[0]).expand((B,))
    torch.testing.assert_close(single.log_prob(value), RecognitionLikelihood(factors, latent[0]).log_prob(value))


def test_enumerate_support_shapes():
    factors, latent = make_factors("delta")
    lik = RecognitionLikelihood(factors, latent.expand(2, B, D))
    assert lik.has_enumerate_support
    full = lik.enumerate_support()
    assert full.shape == (M, 2, B)
    assert torch.equal(full[:, 1, 3], torch.arange(M))
    assert lik.enumerate_support(expand=False).shape == (M, 1, 1)


def test_support_constraint():
    factors, latent = make_factors("gaussian")
    support = RecognitionLikelihood(factors, latent).support
    assert support.is_discrete and support.event_dim == 0
    assert support.check(torch.arange(M)).all()
    assert not support.check(torch.tensor(-1)) and not support.check(torch.tensor(M))
    assert support.lower_bound == 0 and support.upper_bound == M - 1


@pytest.mark.parametrize("bad", [M, -1, 7])
def test_validation_rejects_out_of_support(bad):
    factors, latent = make_factors("gaussian")
    value = torch.tensor([0, 1, bad, 2])
    with pyro.validation_enabled(True):
        with pytest.raises(ValueError):
            RecognitionLikelihood(factors, latent).log_prob(value)
    with pytest.raises(ValueError):
        RecognitionLikelihood(factors, latent, validate_args=True).log_prob(value)


def test_non_integer_values_rejected_without_validation():
    factors, latent = make_factors("gaussian")
    lik = RecognitionLikelihood(factors, latent, validate_args=False)
    torch.testing.assert_close(lik.diagonal(torch.tensor([1.0, 0.0, 2.0, 3.0])), lik.diagonal(torch.tensor([1, 0, 2, 3])))
    with pytest.raises(ValueError, match="integer"):
        lik.diagonal(torch.tensor([0.5, 0.0, 1.0, 1.0]))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("compute_first", [False, True], ids=["lazy", "computed"])
def test_pickle_round_trip(kind, compute_first):
    factors, latent = make_factors(kind)
    lik = RecognitionLikelihood(factors, latent)
    if compute_first:
        lik.log_normaliser  # noqa: B018
    clone = pickle.loads(pickle.dumps(lik))
    assert type(clone) is RecognitionLikelihood and clone.batch_shape == lik.batch_shape
    value = torch.tensor([0, 1, 2, 3])
    torch.testing.assert_close(clone.log_prob(value), lik.log_prob(value))
    assert clone.support.upper_bound == M - 1


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------


def test_support_of_fewer_than_two_points():
    with pytest.raises(ValueError, match="at least 2"):
        RecognitionLikelihood(GaussianFactor(torch.zeros(1, D), torch.ones(1, D)), torch.zeros(B, D))
    with pytest.raises(ValueError, match="batch_shape"):
        RecognitionLikelihood(GaussianFactor(torch.zeros(2, 3, D), torch.ones(2, 3, D)), torch.zeros(B, D))


def test_latent_with_wrong_event_shape():
    factors, _ = make_factors("gaussian")
    with pytest.raises(ValueError, match="event shape"):
        RecognitionLikelihood(factors, torch.zeros(B, D + 1))
    with pytest.raises(ValueError, match="event shape"):
        RecognitionLikelihood(factors, torch.zeros(()))


def test_latent_dtype_mismatch():
    factors, latent = make_factors("gaussian")
    with pytest.raises(ValueError, match="dtype"):
        RecognitionLikelihood(factors, latent.double())


def test_latent_device_mismatch():
    try:
        loc = torch.zeros(M, D, device="meta")
        factors = GaussianFactor(loc, torch.ones(M, D, device="meta"), validate_args=False)
    except (RuntimeError, NotImplementedError) as error:  # pragma: no cover - depends on torch build
        pytest.skip(f"meta-device factors unsupported here: {error}")
    with pytest.raises(ValueError, match="device|meta"):
        RecognitionLikelihood(factors, torch.zeros(B, D))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_latent(bad):
    factors, latent = make_factors("gaussian")
    latent = latent.clone()
    latent[2, 1] = bad
    with pytest.raises(ValueError, match="latent"):
        RecognitionLikelihood(factors, latent)


def test_non_factor_inputs():
    with pytest.raises(TypeError, match="Factor"):
        RecognitionLikelihood(dist.Normal(torch.zeros(M, D), 1.0).to_event(1), torch.zeros(B, D))
    factors, _ = make_factors("gaussian")
    with pytest.raises(TypeError, match="latent"):
        RecognitionLikelihood(factors, [[0.0, 0.0]])


# ----------------------------------------------------------------------------------------------
# observe
# ----------------------------------------------------------------------------------------------


def test_observe_in_batch_support():
    factors, latent = make_factors("gaussian")
    factors = factors.index(torch.arange(B))

    def model():
        with pyro.plate("data", B):
            return observe("x", factors, latent)

    trace = poutine.trace(model).get_trace()
    site = trace.nodes["x"]
    assert site["is_observed"] and isinstance(site["fn"], RecognitionLikelihood)
    assert torch.equal(site["value"], torch.arange(B))
    trace.compute_log_prob()
    expected = RecognitionLikelihood(factors, latent).log_prob(torch.arange(B))
    torch.testing.assert_close(site["log_prob"], expected)


def test_observe_whole_data_support():
    factors, _ = make_factors("gaussian")
    latent = torch.randn(3, D)
    index = torch.tensor([4, 0, 2])
    trace = poutine.trace(lambda: observe("x", factors, latent, index=index)).get_trace()
    trace.compute_log_prob()
    torch.testing.assert_close(trace.nodes["x"]["log_prob"], RecognitionLikelihood(factors, latent).log_prob(index))
    assert torch.equal(trace.nodes["x"]["value"], index)


def test_observe_bad_index():
    factors, latent = make_factors("gaussian")  # M = 5 support points, B = 4 latents
    with pytest.raises(ValueError, match="index"):
        observe("x", factors, latent)
    with pytest.raises(ValueError, match="index"):
        observe("x", factors, latent, index=torch.tensor([0, 1, 2, M]))
    with pytest.raises(ValueError, match="index"):
        observe("x", factors, latent, index=torch.tensor([0, -1, 2, 3]))
    with pytest.raises(TypeError, match="index"):
        observe("x", factors, latent, index=torch.tensor([0.0, 1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="index"):
        observe("x", factors, latent, index=torch.tensor([0, 1, 2]))


def test_observe_rejects_mismatched_dtype_and_small_support():
    """The checks of RecognitionLikelihood also guard ``observe``: a float64 latent against float32
    factors, and a support set of one point, raise ValueErrors naming the problem."""
    factors, latent = make_factors("gaussian")
    support = factors.index(torch.arange(B))
    with pytest.raises(ValueError, match="dtype"):
        observe("x", support, latent.double())
    with pytest.raises(ValueError, match="at least 2"):
        observe("x", GaussianFactor(torch.zeros(1, D), torch.ones(1, D)), torch.zeros(1, D))


def test_observe_batch_and_support_mismatch_message():
    """In-batch support with a batch that is not the support set: the message names the site, both sizes and index=."""
    factors, latent = make_factors("gaussian")  # M = 5 support points, B = 4 latents
    with pytest.raises(ValueError, match=r"observe\('x1'\).*\(4,\).*5 points.*index="):
        observe("x1", factors, latent)
    # A latent batch longer than the support set fails the same way.
    with pytest.raises(ValueError, match=r"\(7,\).*5 points"):
        observe("x1", factors, torch.zeros(7, D))
