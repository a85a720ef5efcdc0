# SPDX-License-Identifier: Apache-2.0
"""Bad input to the structured priors and time-series observations raises a clear error naming the argument.

Covers issue 3's list: unsorted or duplicate time points (every argument that takes times), series of
different lengths between views (per-step :class:`~pyro_rpm.support.sequences.SequenceSupport` and whole
trajectories, :func:`~pyro_rpm.likelihood.trajectory.observe_trajectories`), fewer than two discrete states
(:class:`~pyro_rpm.priors.discrete.CategoricalPrior`, :class:`~pyro_rpm.priors.discrete.HMMPrior`,
:class:`~pyro_rpm.CategoricalRecognition`) or mixture components below one
(:class:`~pyro_rpm.priors.mixture.MixturePrior`, where a single component is a plain Gaussian), and
non-stochastic probabilities supplied by hand. Each case also checks that a valid neighbour of the
bad input is accepted, so the checks are not over-eager.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_rpm import CategoricalRecognition
from pyro_rpm.likelihood.trajectory import observe_trajectories
from pyro_rpm.priors import CategoricalPrior, GaussianProcessPrior, HMMPrior, KernelSmoothedMean, MixturePrior
from pyro_rpm.recognition.categorical import CategoricalFactor
from pyro_rpm.recognition.gaussian import GaussianFactor
from pyro_rpm.support.sequences import SequenceSupport, observe_sequence

SORTED = torch.tensor([0.0, 0.5, 1.0, 2.0])
BAD_TIMES = {
    "unsorted": torch.tensor([0.0, 1.0, 0.5, 2.0]),
    "duplicate": torch.tensor([0.0, 0.5, 0.5, 2.0]),
    "decreasing": torch.tensor([2.0, 1.0, 0.5, 0.0]),
    "unsorted_row": torch.stack([SORTED, torch.tensor([0.0, 2.0, 1.0, 3.0])]),  # batched times, one bad row
}


# ----------------------------------------------------------------------------------------- time points


@pytest.mark.parametrize("case", sorted(BAD_TIMES))
@pytest.mark.parametrize("sparse", [False, True])
def test_gp_rejects_unsorted_or_duplicate_times(case, sparse):
    gp = GaussianProcessPrior(2, inducing_times=torch.tensor([0.0, 1.0]) if sparse else None)
    assert gp.distribution(SORTED).event_shape == (4, 2)  # the sorted times are fine
    with pytest.raises(ValueError, match=r"^times must be strictly increasing .*sorted, no repeats"):
        gp.distribution(BAD_TIMES[case])
    with pytest.raises(ValueError, match=r"^times must be strictly increasing"):
        with pyro.plate("sequences", 3):
            gp("z", BAD_TIMES[case])


def test_gp_rejects_non_float_and_non_finite_times():
    gp = GaussianProcessPrior(1)
    with pytest.raises(TypeError, match="times must be a floating-point tensor"):
        gp.distribution(torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="times must be finite"):
        gp.distribution(torch.tensor([0.0, float("nan"), 2.0]))
    with pytest.raises(ValueError, match=r"times as an int \(the number of steps\) must be >= 1"):
        gp.distribution(0)


@pytest.mark.parametrize("case", ["unsorted", "duplicate"])
def test_mean_function_anchor_times(case):
    KernelSmoothedMean(SORTED, 2)
    with pytest.raises(ValueError, match=r"^anchor_times must be strictly increasing"):
        KernelSmoothedMean(BAD_TIMES[case], 2)


def test_inducing_times_must_be_distinct_but_may_be_unordered():
    # inducing points are a set: their order does not matter, repeats make K_uu singular
    GaussianProcessPrior(1, inducing_times=torch.tensor([1.0, 0.0, 2.0])).distribution(SORTED)
    with pytest.raises(ValueError, match="^inducing_times must be distinct"):
        GaussianProcessPrior(1, inducing_times=torch.tensor([0.0, 1.0, 1.0]))


# ------------------------------------------------------------------------------------ number of states


@pytest.mark.parametrize("K", [1, 0, -3, 2.0, True, "10"])
def test_fewer_than_two_states(K):
    for build in (CategoricalPrior, HMMPrior, lambda K: CategoricalRecognition(nn.Linear(4, 3), K)):
        with pytest.raises(ValueError, match=r"^num_states must be an int >= 2, got " + repr(K).replace(".", r"\.")):
            build(K)
    assert CategoricalPrior(2).probs.shape == (2,)
    assert HMMPrior(2).transition_matrix.shape == (2, 2)
    assert CategoricalRecognition(nn.Linear(4, 2), 2).num_states == 2


@pytest.mark.parametrize("C", [0, -1, 1.5, True])
def test_mixture_components(C):
    with pytest.raises(ValueError, match=r"^num_components must be an int >= 1"):
        MixturePrior(C, 2)
    # one component is a valid (Gaussian) prior; its density is the closed-form normal
    z = torch.randn(5, 2)
    single = MixturePrior(1, 2, loc=torch.zeros(1, 2), init_scale=1.5)
    expected = dist.Normal(torch.zeros(2), single.scale[0]).to_event(1).log_prob(z)
    assert torch.allclose(single.log_prob(z), expected, atol=1e-5)


# ------------------------------------------------------------------------------ stochastic matrices


@pytest.mark.parametrize(
    "transition, message",
    [
        (
            [[0.5, 0.5, 0.0], [0.2, 0.2, 0.2], [0.0, 0.0, 1.0]],
            r"transition must be stochastic \(every row summing to 1\).*row 1",
        ),
        ([[0.5, 0.6, 0.0], [0.2, 0.4, 0.4], [0.0, 0.0, 1.0]], r"transition must be stochastic.*row 0"),
        ([[1.5, -0.5, 0.0], [0.2, 0.4, 0.4], [0.0, 0.0, 1.0]], "transition must be non-negative"),
        ([[0.5, 0.5], [0.5, 0.5]], r"transition must have shape \(3, 3\), got \(2, 2\)"),
        ([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.5, 0.5]], "transition must be a tensor of probabilities"),
        ([[float("nan")] * 3] * 3, "transition must be finite"),
        # column-stochastic (the transposed convention): rows must sum to 1, not columns
        ([[0.8, 0.1, 0.1], [0.1, 0.1, 0.1], [0.1, 0.8, 0.8]], r"transition must be stochastic.*\[0\.3, 1\.7\]"),
    ],
)
def test_hmm_rejects_non_stochastic_transition(transition, message):
    error = TypeError if "tensor of probabilities" in message else ValueError
    with pytest.raises(error, match=message):
        HMMPrior(3, transition=transition if isinstance(transition, torch.Tensor) else _maybe_tensor(transition))


def _maybe_tensor(rows):
    """A tensor when the rows are rectangular, else the ragged list itself (which must raise a TypeError)."""
    try:
        return torch.tensor(rows)
    except ValueError:
        return rows


def test_hmm_accepts_stochastic_transition_by_hand():
    A = torch.tensor([[0.9, 0.1, 0.0], [0.05, 0.9, 0.05], [0.0, 0.2, 0.8]])
    hmm = HMMPrior(3, transition=A, learn_transition=False)
    assert torch.allclose(hmm.transition_matrix, A, atol=1e-6)
    # a nested list works as well, and a row normalised in float32 passes the tolerance
    raw = torch.rand(3, 3)
    HMMPrior(3, transition=(raw / raw.sum(-1, keepdim=True)).tolist())


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda p: HMMPrior(3, init=p), "init"),
        (lambda p: CategoricalPrior(3, probs=p), "probs"),
    ],
)
def test_initial_and_categorical_probs(build, name):
    build(torch.tensor([0.2, 0.3, 0.5]))
    with pytest.raises(
        ValueError, match=rf"^{name} must be stochastic \(a probability vector summing to 1\), got sum 1\.1"
    ):
        build(torch.tensor([0.2, 0.4, 0.5]))
    with pytest.raises(ValueError, match=rf"^{name} must be non-negative"):
        build(torch.tensor([-0.2, 0.7, 0.5]))
    with pytest.raises(ValueError, match=rf"^{name} must have shape \(3,\)"):
        build(torch.tensor([0.5, 0.5]))


# ----------------------------------------------------------------- series lengths between views


def _two_view_sequence_model(f1, f2, num_steps, num_sequences, pooling):
    s1 = SequenceSupport(f1, num_steps, pooling)
    s2 = SequenceSupport(f2, num_steps, pooling)
    with pyro.plate("sequences", num_sequences):
        z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
        s1.observe("x1", z, 0)
        s2.observe("x2", z, 0)


@pytest.mark.parametrize("pooling", ["data", "ergodic"])
def test_sequence_views_with_different_numbers_of_sequences(pooling):
    T = 5
    f1 = CategoricalFactor(torch.randn(4 * T, 3))
    _two_view_sequence_model(f1, CategoricalFactor(torch.randn(4 * T, 3)), T, 4, pooling)  # matching views: fine
    f2 = CategoricalFactor(torch.randn(3 * T, 3))  # view 2 holds 3 sequences, the plate 4
    with pytest.raises(ValueError, match=r"observe\('x2'\): the latent has 4 sequences .* factors holds N=3 sequences"):
        _two_view_sequence_model(f1, f2, T, 4, pooling)


def test_sequence_view_with_a_different_length():
    # view 2 has series of 6 steps: 4 * 6 = 24 frames cannot be sequences of the chain's num_steps = 5
    f1, f2 = CategoricalFactor(torch.randn(4 * 5, 3)), CategoricalFactor(torch.randn(4 * 6, 3))
    with pytest.raises(ValueError, match=r"factors has 24 frames, which is not a multiple of num_steps=5"):
        _two_view_sequence_model(f1, f2, 5, 4, "ergodic")
    # 5 sequences of 6 steps = 30 frames = 6 "sequences" of 5: caught as a mismatch in the number of sequences
    f3 = CategoricalFactor(torch.randn(5 * 6, 3))
    with pytest.raises(ValueError, match=r"the latent has 4 sequences .* factors holds N=6 sequences of num_steps=5"):
        _two_view_sequence_model(f1, f3, 5, 4, "data")


def test_sequence_observe_with_explicit_sequences():
    f = CategoricalFactor(torch.randn(4 * 5, 3))
    with pyro.plate("sequences", 2):
        z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
        observe_sequence("x", f, z, 0, num_steps=5, sequences=torch.tensor([1, 3]))
        with pytest.raises(ValueError, match=r"observe\('y'\): sequences has length 3 but the latent has 2"):
            observe_sequence("y", f, z, 0, num_steps=5, sequences=torch.tensor([0, 1, 3]))


def test_enumerated_latent_still_broadcasts():
    # an enumerated latent has a trailing batch size 1: the length check must let it through
    f = CategoricalFactor(torch.randn(4 * 5, 3))
    support = SequenceSupport(f, 5, "ergodic")
    z = torch.arange(3).reshape(3, 1)
    with pyro.plate("sequences", 4):
        assert support.observe("x", z, 2).shape == (4,)


def _gaussian_frames(N, T, D=2):
    return GaussianFactor(torch.randn(N * T, D), torch.ones(N * T, D))


@pytest.mark.parametrize("pooling", ["data", "ergodic"])
def test_trajectory_views_with_different_series(pooling):
    g1 = _gaussian_frames(4, 5)

    def model(g2):
        with pyro.plate("sequences", 4):
            z = pyro.sample("z", dist.Normal(torch.zeros(5, 2), 1.0).to_event(2))
            observe_trajectories("x1", g1, z, pooling=pooling)
            observe_trajectories("x2", g2, z, pooling=pooling)

    model(_gaussian_frames(4, 5))
    with pytest.raises(ValueError, match=r"factors has 24 frames, which is not a multiple of the trajectories' T=5"):
        model(_gaussian_frames(4, 6))  # series of 6 steps against trajectories of 5
    with pytest.raises(ValueError, match=r"observe_trajectories\('x2'\): the latent has 4 trajectories but .* N=3"):
        model(_gaussian_frames(3, 5))  # 3 sequences against 4
