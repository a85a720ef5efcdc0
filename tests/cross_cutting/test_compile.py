# SPDX-License-Identifier: Apache-2.0
"""``torch.compile`` of a training step (issue 14, item 6), and the value-check switch.

* ``torch._dynamo`` on ``RPM_ELBO().differentiable_loss`` of the canonical two-view model (tied
  guide with the prior, and the planned ``combine="product"`` guide): every graph break dynamo logs
  is classified by the innermost frame of its user stack; none is in ``pyro_rpm/`` (the breaks left
  are Pyro's poutine machinery: its ``Message`` TypedDict, messengers as context managers,
  ``sys._getframe``, ``.item()`` in ``warn_if_nan``);
* the compiled step (``backend="aot_eager"``) gives the eager loss to 1e-5 under one seed, and its
  gradients;
* ``pyro_rpm.value_checks``: ``"off"`` and ``pyro.enable_validation(False)`` skip NaN checks,
  ``"once"`` checks a structure until it passed once, a bad mode is refused; eagerly, NaN inputs
  still raise by default.
"""

import logging
import re

import pyro
import pytest
import torch
from _models import two_view_model
from torch import nn

import pyro_rpm
from pyro_rpm import RPM_ELBO, GaussianRecognition, RecognitionGuide

D = 2
#: dynamo's own warnings while it traces (Pyro's ``sys._getframe``, ``.grad`` of wrapped non-leaf tensors).
_DYNAMO_GRAD_WARNING = pytest.mark.filterwarnings(
    "ignore::UserWarning:torch._dynamo", "ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning"
)


def _canonical(combine: str):
    torch.manual_seed(0)
    prior_scale = 1.0 if combine == "auto" else None
    r1 = GaussianRecognition(nn.Sequential(nn.Linear(10, 16), nn.SiLU(), nn.Linear(16, 2 * D)), D, prior_scale=prior_scale)
    r2 = GaussianRecognition(nn.Sequential(nn.Linear(10, 16), nn.SiLU(), nn.Linear(16, 2 * D)), D, prior_scale=prior_scale)
    x1, x2 = torch.randn(32, 10), torch.randn(32, 10)
    model = two_view_model(r1, r2, D)
    guide = RecognitionGuide(model, combine=combine)
    elbo = RPM_ELBO()

    def step(x1, x2):
        return elbo.differentiable_loss(model, guide, x1, x2)

    return step, (x1, x2), [*r1.parameters(), *r2.parameters()]


class _Breaks(logging.Handler):
    """Collects dynamo's graph-break log records."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def origins(self) -> list[str]:
        """``file:line`` of the innermost user frame of every graph break."""
        origins = []
        for message in self.messages:
            if "Graph break" not in message:
                continue
            frames = re.findall(r'File "([^"]+)", line (\d+)', message.split("User code traceback:")[-1])
            if frames:
                origins.append(":".join(frames[-1]))
        return origins


def _explain_breaks(step, args):
    handler = _Breaks()
    logger = logging.getLogger("torch._dynamo")
    logger.addHandler(handler)
    torch._dynamo.reset()
    torch._logging.set_logs(graph_breaks=True)
    try:
        explanation = torch._dynamo.explain(step)(*args)
    finally:
        torch._logging.set_logs()
        logger.removeHandler(handler)
        torch._dynamo.reset()
    return explanation, handler.origins()


@_DYNAMO_GRAD_WARNING
@pytest.mark.parametrize("combine", ["auto", "product"])
def test_no_graph_break_comes_from_pyro_rpm(combine):
    step, args, _ = _canonical(combine)
    step(*args)  # one eager step first (the guide plans, as in training)
    explanation, origins = _explain_breaks(step, args)
    assert explanation.graph_count >= 1
    package = str(__import__("pathlib").Path(pyro_rpm.__file__).parent)
    assert origins, "dynamo logged no graph break at all: the classification below would prove nothing"
    ours = [o for o in origins if o.startswith(package)]
    reasons = [r.user_stack[-1].filename for r in explanation.break_reasons if r.user_stack]
    assert not ours, f"graph breaks in pyro_rpm: {ours}"
    assert not [f for f in reasons if f.startswith(package)]
    # the breaks left are Pyro's and, with argument validation on, torch.distributions' own checks (and
    # the model's `with pyro.plate` line, in tests/_shared/_models.py: a messenger as a context manager)
    model_files = (__file__, two_view_model.__code__.co_filename)
    foreign = [o for o in origins if not ("/pyro/" in o or "/torch/distributions/" in o or o.startswith(model_files))]
    assert not foreign, foreign


@_DYNAMO_GRAD_WARNING
@pytest.mark.parametrize("combine", ["auto", "product"])
def test_the_compiled_step_gives_the_eager_loss_and_gradients(combine):
    step, args, params = _canonical(combine)

    def loss_and_grads(fn):
        pyro.set_rng_seed(5)
        for p in params:
            p.grad = None
        loss = fn(*args)
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in params])

    eager, eager_grad = loss_and_grads(step)
    torch._dynamo.reset()
    try:
        compiled, compiled_grad = loss_and_grads(torch.compile(step, backend="aot_eager"))
    finally:
        torch._dynamo.reset()
    assert torch.allclose(compiled, eager, rtol=1e-5, atol=1e-5)
    assert torch.allclose(compiled_grad, eager_grad, rtol=1e-4, atol=1e-5)


def _nan_inputs():
    return torch.full((4, 3), float("nan"))


def test_nan_inputs_raise_eagerly_by_default():
    r = GaussianRecognition(nn.Linear(3, 4), D, name="vc_default")
    with pytest.raises(ValueError, match="inputs to recognition 'vc_default' must be finite"):
        r(_nan_inputs())
    assert pyro_rpm.value_checks.mode() == "always"


def test_value_checks_off_and_pyro_validation_off_skip_value_checks():
    r = GaussianRecognition(nn.Linear(3, 4), D, name="vc_off")
    with pyro_rpm.value_checks("off"):
        assert bool(r(_nan_inputs()).loc.isnan().all())
    with pyro.validation_enabled(False):
        assert bool(r(_nan_inputs()).loc.isnan().all())
    with pytest.raises(ValueError, match="must be finite"):
        r(_nan_inputs())


def test_value_checks_once_checks_a_structure_until_it_passed():
    r = GaussianRecognition(nn.Linear(3, 4), D, name="vc_once")
    with pyro_rpm.value_checks("once"):
        with pytest.raises(ValueError, match="must be finite"):
            r(_nan_inputs())  # not passed yet: checked
        r(torch.zeros(4, 3))  # passes: this structure is not checked again
        assert bool(r(_nan_inputs()).loc.isnan().all())
        with pytest.raises(ValueError, match="must be finite"):
            r(torch.full((5, 3), float("nan")))  # another shape: a new structure
    assert pyro_rpm.value_checks.mode() == "always"


def test_a_bad_value_checks_mode_is_refused():
    with pytest.raises(ValueError, match="mode must be one of"):
        pyro_rpm.value_checks("sometimes")
    assert pyro_rpm.value_checks.mode() == "always"
