# SPDX-License-Identifier: Apache-2.0
r"""A mixture-of-Gaussians prior over a continuous latent (cRPM's ``MixturePrior``).

.. math::

    p(z) = \sum_{c=1}^{C} \pi_c\, \mathcal N(z; \mu_c, \operatorname{diag} \sigma_c^2),

with learnable weights :math:`\pi = \operatorname{softmax}(\alpha)`, means :math:`\mu_c` and scales
:math:`\sigma_c = \operatorname{softplus}(\rho_c) + \sigma_{\min}`. A multimodal prior lets a
continuous RPM represent clustered latents (Soulat's identifiability experiments: a Gaussian prior
fitted to multimodal latents underestimates the factors' covariances; a mixture fixes that). Two
ways to use it in a model:

* ``z = pyro.sample("z", prior.distribution())``: the marginal density (a
  :class:`pyro.distributions.MixtureSameFamily`); train with :class:`~pyro_rpm.RPM_ELBO` and
  :class:`~pyro_rpm.RecognitionGuide` (the guide's ``combine="auto"`` uses the product of the
  factors, since the prior is not a single Gaussian);
* ``z = prior("z", enumerate=True)``: an explicit component indicator ``"z_component"`` marked for
  enumeration, then :math:`z \mid c`; train with :class:`pyro.infer.TraceEnum_ELBO` (the indicator
  is summed out exactly; :class:`~pyro_rpm.RecognitionGuide` guides ``z`` only).

Both define the same model. :meth:`MixturePrior.responsibilities` gives
:math:`p(c \mid z)`, the clustering of a latent.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.ops.indexing import Vindex
from torch import nn

from .._learnable import set_learnable
from .._pyro import register_module
from .._validation import check_int, check_positive, check_tensor

__all__ = ["MixturePrior"]


class MixturePrior(nn.Module):
    r"""Mixture of C diagonal Gaussians over a latent of dimension D (see the module docstring).

    :param int num_components: C (at least 1).
    :param int latent_dim: D (at least 1).
    :param torch.Tensor loc: initial means, shape ``(C, D)`` (default: C points evenly spaced from
        -1.5 to 1.5 along the diagonal). The means must start distinct: equal means are a
        symmetric saddle of the likelihood, which gradient training does not leave.
    :param float init_scale: initial scale of every component.
    :param float min_scale: :math:`\sigma_{\min}`, the smallest scale.
    :param bool learn: learn the weights, means and scales (otherwise all are fixed).
    :param str name: parameter-store name.

    Example::

        >>> prior = MixturePrior(2, 3, loc=torch.tensor([[-1.0] * 3, [1.0] * 3]))
        >>> prior.distribution().batch_shape, prior.distribution().event_shape
        (torch.Size([]), torch.Size([3]))
        >>> prior.responsibilities(torch.tensor([[-1.0, -1.0, -1.0]])).argmax(-1)
        tensor([0])
    """

    def __init__(
        self,
        num_components: int,
        latent_dim: int,
        *,
        loc: torch.Tensor | None = None,
        init_scale: float = 1.0,
        min_scale: float = 1e-3,
        learn: bool = True,
        name: str = "mixture_prior",
    ) -> None:
        super().__init__()
        for arg, value in (("num_components", num_components), ("latent_dim", latent_dim)):
            check_int(value, arg)
        check_positive(init_scale, "init_scale")
        check_positive(min_scale, "min_scale")
        if not init_scale > min_scale:
            raise ValueError(f"init_scale must exceed min_scale={min_scale}, got {init_scale}")
        C, D = num_components, latent_dim
        self.num_components, self.latent_dim = C, D
        self.min_scale = float(min_scale)
        self.name = str(name)
        if loc is None:  # distinct means on the diagonal: symmetric (equal) means are a saddle that training keeps
            loc = torch.linspace(-1.5, 1.5, C).unsqueeze(-1).expand(C, D) if C > 1 else torch.zeros(C, D)
            loc = loc.clone()
        else:
            check_tensor(loc, "loc")
            if tuple(loc.shape) != (C, D):
                raise ValueError(f"loc must have shape ({C}, {D}), got {tuple(loc.shape)}")
            if not bool(torch.isfinite(loc).all()):
                raise ValueError("loc must be finite")
            loc = loc.detach().clone().to(torch.get_default_dtype())
        raw_scale = torch.full((C, D), math.log(math.expm1(init_scale - min_scale)))
        tensors = {"logits": torch.zeros(C), "loc": loc, "raw_scale": raw_scale}
        for key, value in tensors.items():
            set_learnable(self, key, value, learn)

    @property
    def weights(self) -> torch.Tensor:
        r""":math:`\pi`, shape ``(C,)``."""
        return self.logits.softmax(-1)

    @property
    def scale(self) -> torch.Tensor:
        r""":math:`\sigma`, shape ``(C, D)``."""
        return F.softplus(self.raw_scale) + self.min_scale

    def components(self) -> dist.Independent:
        """The C component Gaussians, ``batch_shape == (C,)``, ``event_shape == (D,)``."""
        return dist.Normal(self.loc, self.scale).to_event(1)

    def distribution(self) -> dist.MixtureSameFamily:
        """The mixture density (registers the parameters with Pyro)."""
        register_module(self.name, self)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), self.components())

    def forward(self, name: str, *, enumerate: bool = False) -> torch.Tensor:
        """Sample the latent site ``name``: from :meth:`distribution`, or (``enumerate=True``) as an
        enumerated component ``f"{name}_component"`` followed by :math:`z \\mid c`."""
        if not enumerate:
            return pyro.sample(name, self.distribution())
        register_module(self.name, self)
        c = pyro.sample(f"{name}_component", dist.Categorical(logits=self.logits), infer={"enumerate": "parallel"})
        loc = Vindex(self.loc)[..., c, :]
        scale = Vindex(self.scale)[..., c, :]
        return pyro.sample(name, dist.Normal(loc, scale).to_event(1))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        r""":math:`\log p(z)`, shape ``z.shape[:-1]``."""
        return self._joint(z).logsumexp(-1)

    def responsibilities(self, z: torch.Tensor) -> torch.Tensor:
        r""":math:`p(c \mid z)`, shape ``z.shape[:-1] + (C,)``."""
        joint = self._joint(z)
        return (joint - joint.logsumexp(-1, keepdim=True)).exp()

    def _joint(self, z: torch.Tensor) -> torch.Tensor:
        check_tensor(z, "z")
        if z.dim() < 1 or z.shape[-1] != self.latent_dim:
            raise ValueError(f"z must have shape (..., {self.latent_dim}), got {tuple(z.shape)}")
        return self.components().log_prob(z.unsqueeze(-2)) + self.logits.log_softmax(-1)
