# SPDX-License-Identifier: Apache-2.0
r"""Feature maps that turn a score :math:`s(b, m)` into a dot product :math:`q_b \cdot k_m`.

Every backend of :mod:`pyro_rpm.normalisers` computes :math:`\operatorname{LSE}_m (q_b \cdot k_m)`.
A feature map builds the query features :math:`q_b` (with autograd, B is small), the key
features :math:`k_m` of a chunk of support points, and, for the streamed backward pass, the
chain rule from :math:`\partial/\partial k_m` to the support parameters of that chunk.

Diagonal Gaussian (:class:`GaussianFeatures`). With a centre :math:`c` (the detached mean of the
support locations), :math:`\tilde z = z - c`, :math:`\tilde\mu = \mu - c` and :math:`\lambda = s^{-2}`,

.. math::

    \log \mathcal N(z_b; \mu_m, \operatorname{diag}\lambda_m^{-1})
    = \underbrace{[\tilde z_b^2,\ \tilde z_b,\ 1]}_{q_b} \cdot
      \underbrace{\big[-\tfrac12 \lambda_m,\ \lambda_m \tilde\mu_m,\
      \textstyle\sum_d (-\tfrac12 \lambda_{md} \tilde\mu_{md}^2 + \tfrac12 \log\lambda_{md})
      - \tfrac D2 \log 2\pi\big]}_{k_m},

so :math:`K = 2D + 1`. The value does not depend on :math:`c`, so treating it as a constant gives
exact gradients. With :math:`\partial/\partial k_m = [A_m, b_m, w_m]` (the softmax-weighted sums
:math:`\sum_b g_b p_{bm} [\tilde z_b^2, \tilde z_b, 1]`),

.. math::

    \frac{\partial}{\partial \mu_m} = \lambda_m (b_m - \tilde\mu_m w_m), \qquad
    \frac{\partial}{\partial \lambda_m}
    = -\tfrac12 (A_m - 2\tilde\mu_m b_m + \tilde\mu_m^2 w_m) + \frac{w_m}{2\lambda_m},

and :math:`\partial/\partial s = -2 (\lambda / s)\, \partial/\partial\lambda`. Both cancel
(:math:`A_m - 2\tilde\mu_m b_m + \tilde\mu_m^2 w_m = \sum_b g_b p_{bm} (\tilde z_b - \tilde\mu_m)^2`),
which is why the Gaussian path accumulates float32 inputs in float64 (see :mod:`pyro_rpm.normalisers`).

Dot product with a key bias (:class:`DotFeatures`): :math:`q_b = [u_b, 1]`,
:math:`k_m = [v_m, \beta_m]`.
"""

from __future__ import annotations

import math

import torch

__all__ = ["LOG_DET_ROWS", "FeatureMap", "GaussianFeatures", "DotFeatures"]

#: rows per block when :meth:`GaussianFeatures.max_score` computes the log-determinants of every support point.
LOG_DET_ROWS = 2**13


class FeatureMap:
    """Interface: query/key features and the key-side chain rule (see the module docstring)."""

    #: whether the second support parameter is shared by all support points (shape ``(D,)``).
    shared: bool = False

    def query(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Query features, shape ``(B, K)``, in the working dtype (differentiable)."""
        raise NotImplementedError

    def keys(self, a: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:  # pragma: no cover - abstract
        """Key features of a chunk of support points, shape ``(C, K)`` (differentiable)."""
        raise NotImplementedError

    def chunk_keys(
        self, a: torch.Tensor, b: torch.Tensor | None, width: int, ones: bool
    ) -> tuple[torch.Tensor, tuple]:  # pragma: no cover - abstract
        """Key features of a chunk (no autograd) in a ``(C, width)`` buffer: the K features, then a
        column of ones if ``ones``, then zeros; and the state :meth:`key_grads` needs."""
        raise NotImplementedError

    def key_grads(self, dk: torch.Tensor, state: tuple) -> tuple[torch.Tensor, torch.Tensor | None]:  # pragma: no cover
        """Gradients of :math:`\\sum_m dk_m \\cdot k_m` w.r.t. ``a`` and ``b`` (per support row, ``(C, ...)``)."""
        raise NotImplementedError

    def max_score(self, a: torch.Tensor, b: torch.Tensor | None) -> float | None:
        """An upper bound of every score :math:`q \\cdot k_m` over all possible queries, or ``None`` if unbounded."""
        return None

    def param_chunk(self, b: torch.Tensor | None, start: int, stop: int) -> torch.Tensor | None:
        """The rows ``start:stop`` of the second parameter (all of it when shared or absent)."""
        if b is None or self.shared:
            return b
        return b[start:stop]


class GaussianFeatures(FeatureMap):
    r"""Features of diagonal Gaussian log-densities (module docstring).

    :param torch.Tensor centre: the centre :math:`c`, shape ``(D,)``, in the working dtype.
    :param bool is_scale: the second parameter is a scale :math:`s` (else a precision :math:`\lambda`).
    :param bool shared: the second parameter has shape ``(D,)`` (shared by all support points).
    """

    def __init__(self, centre: torch.Tensor, *, is_scale: bool, shared: bool) -> None:
        self.centre = centre
        self.work_dtype = centre.dtype
        self.dim = centre.shape[-1]
        self.is_scale = is_scale
        self.shared = shared
        self._log_dets: list[tuple[torch.Tensor, torch.Tensor]] = []  # (parameter, its log-determinants)

    def query(self, x: torch.Tensor) -> torch.Tensor:
        zc = x.to(self.work_dtype) - self.centre
        return torch.cat([zc * zc, zc, torch.ones_like(zc[..., :1])], dim=-1)

    def _precision(self, param: torch.Tensor) -> torch.Tensor:
        param = param.to(self.work_dtype)
        return param.pow(-2) if self.is_scale else param

    def _half_log_det(self, param: torch.Tensor) -> torch.Tensor:
        r""":math:`\tfrac12 \sum_d \log\lambda_d - \tfrac D2 \log 2\pi` (a scalar when shared).

        Rows of a parameter whose values :meth:`max_score` computed (the screened backend's probe) are
        read from them outside autograd: its float32 passes, exact pass and backward read the same rows,
        and the logarithm is a large part of the per-support-point cost at small batches."""
        if not (torch.is_grad_enabled() and param.requires_grad) and param.dim() == 2:
            for known, value in self._log_dets:
                first = _first_row(param, known)
                if first is not None:
                    return value[first : first + param.shape[0]]
        logs = param.to(self.work_dtype).log().sum(-1)
        return (-logs if self.is_scale else 0.5 * logs) - 0.5 * self.dim * math.log(2 * math.pi)

    def max_score(self, a: torch.Tensor, b: torch.Tensor | None) -> float:
        r""":math:`\max_m \log\mathcal N(\mu_m; \mu_m, \operatorname{diag}\lambda_m^{-1})`, the largest density peak.

        The log-determinants of a per-point parameter are computed :data:`LOG_DET_ROWS` rows at a time
        (the same values as one call: each row's sum is its own): no ``(N, D)`` working-dtype temporaries,
        whose fresh pages cost more than the logarithms at large N."""
        b = b.detach()
        if b.dim() != 2:
            return float(self._half_log_det(b).max())
        value = torch.empty(b.shape[0], dtype=self.work_dtype, device=b.device)
        for start in range(0, b.shape[0], LOG_DET_ROWS):
            value[start : start + LOG_DET_ROWS] = self._half_log_det(b[start : start + LOG_DET_ROWS])
        self._log_dets.append((b, value))  # ``b`` is kept: no other tensor takes its memory
        return float(value.max())

    def keys(self, a: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        mc = a.to(self.work_dtype) - self.centre
        precision = self._precision(b).expand_as(mc)
        weighted = precision * mc
        bias = self._half_log_det(b).expand(mc.shape[:1]) - 0.5 * (weighted * mc).sum(-1)
        return torch.cat([-0.5 * precision, weighted, bias.unsqueeze(-1)], dim=-1)

    def chunk_keys(self, a: torch.Tensor, b: torch.Tensor | None, width: int, ones: bool) -> tuple[torch.Tensor, tuple]:
        d = self.dim
        mc = a.to(self.work_dtype).sub_(self.centre) if a.dtype != self.work_dtype else a - self.centre
        precision = self._precision(b)
        k = torch.empty(mc.shape[0], width, dtype=self.work_dtype, device=mc.device)
        k[:, :d].copy_(precision).mul_(-0.5)
        torch.mul(precision, mc, out=k[:, d : 2 * d])
        k[:, 2 * d] = self._half_log_det(b) - 0.5 * (k[:, d : 2 * d] * mc).sum(-1)
        if width > 2 * d + 1:
            k[:, 2 * d + 1 :] = 0.0
            if ones:
                k[:, 2 * d + 1] = 1.0
        return k, (mc, precision, b)

    def key_grads(self, dk: torch.Tensor, state: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.dim
        mc, precision, param = state
        sq, lin, weight = dk[:, :d], dk[:, d : 2 * d], dk[:, 2 * d :]
        dloc = precision * (lin - mc * weight)
        # -1/2 sum_b g p (z~ - mu~)^2 + w / (2 lambda)
        dprec = (mc * (2 * lin - mc * weight)).sub_(sq).mul_(0.5).add_(0.5 * weight / precision)
        if self.is_scale:
            dprec = dprec.mul_(precision).div_(param.to(self.work_dtype)).mul_(-2.0)
        return dloc, dprec


def _first_row(chunk: torch.Tensor, base: torch.Tensor) -> int | None:
    """``first`` if ``chunk`` is rows ``first : first + len`` of the 2-d tensor ``base`` (same memory), else ``None``."""
    if chunk.dim() != 2 or chunk.stride() != base.stride() or chunk.shape[1] != base.shape[1] or chunk.dtype != base.dtype:
        return None
    if chunk.untyped_storage().data_ptr() != base.untyped_storage().data_ptr() or base.stride(0) <= 0:
        return None
    start = chunk.storage_offset() - base.storage_offset()
    first = start // base.stride(0)
    return first if start % base.stride(0) == 0 and 0 <= first <= base.shape[0] - chunk.shape[0] else None


class DotFeatures(FeatureMap):
    """Features of dot-product scores :math:`u_b \\cdot v_m + \\beta_m` (``b`` is the optional key bias).

    :param torch.dtype work_dtype: working dtype.
    :param bool has_bias: whether a key bias :math:`\\beta` is given.
    """

    def __init__(self, work_dtype: torch.dtype, *, has_bias: bool) -> None:
        self.work_dtype = work_dtype
        self.has_bias = has_bias

    def query(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.work_dtype)
        if not self.has_bias:
            return x
        return torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)

    def keys(self, a: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        a = a.to(self.work_dtype)
        if b is None:
            return a
        return torch.cat([a, b.to(self.work_dtype).unsqueeze(-1)], dim=-1)

    def chunk_keys(self, a: torch.Tensor, b: torch.Tensor | None, width: int, ones: bool) -> tuple[torch.Tensor, tuple]:
        k = torch.zeros(a.shape[0], width, dtype=self.work_dtype, device=a.device)
        dim = a.shape[1]
        k[:, :dim] = a
        if b is not None:
            k[:, dim] = b
            dim += 1
        if ones and width > dim:
            k[:, dim] = 1.0
        return k, ()

    def key_grads(self, dk: torch.Tensor, state: tuple) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.has_bias:
            return dk, None
        return dk[:, :-1], dk[:, -1]
