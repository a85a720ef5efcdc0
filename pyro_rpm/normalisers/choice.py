# SPDX-License-Identifier: Apache-2.0
r"""One value for the choice of how a normaliser :math:`\log\sum_m f(z \mid x_m)` is computed.

A :class:`Normaliser` names the backend (``"auto"``, ``"dense"``, ``"streamed"``, ``"fused"`` or
``"screened"``, see :mod:`pyro_rpm.normalisers`) and the streamed/fused chunk size. A
:class:`~pyro_rpm.Support` carries one and attaches it to the factors it returns
(:meth:`~pyro_rpm.Factor.with_normaliser`); :func:`~pyro_rpm.observe`, the likelihoods and the
empirical-marginal priors use the factors' normaliser unless ``backend=`` / ``chunk_size=`` are
given, which remain as shorthands that override it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._validation import check_optional_int

__all__ = ["BACKENDS", "Normaliser"]

#: Names of the normaliser backends (:mod:`pyro_rpm.normalisers`).
BACKENDS = ("auto", "dense", "streamed", "fused", "screened")


@dataclass(frozen=True)
class Normaliser:
    """How to compute the log-sum-exp over a support set.

    :param str backend: one of :data:`pyro_rpm.normalisers.BACKENDS` (default ``"auto"``: the dense
        table up to ``DENSE_MAX_PAIRS`` latent-support pairs, an exact kernel beyond).
    :param int chunk_size: support points per chunk of the streamed/fused kernels (``None``: their default).

    Example::

        >>> Normaliser("fused", chunk_size=4096)
        Normaliser(backend='fused', chunk_size=4096)
        >>> Normaliser().replace(backend="dense")
        Normaliser(backend='dense', chunk_size=None)
    """

    backend: str = "auto"
    chunk_size: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.backend, str) or self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        size = self.chunk_size
        check_optional_int(size, "chunk_size", expected="a positive int or None")

    @classmethod
    def coerce(cls, value: Normaliser | str | None) -> Normaliser:
        """``value`` as a :class:`Normaliser`: ``None`` is the default, a string names the backend."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return cls(value)
        raise TypeError(f"normaliser must be a Normaliser, a backend name or None, got {type(value).__name__}")

    def replace(self, backend: Normaliser | str | None = None, chunk_size: int | None = None) -> Normaliser:
        """This choice with ``backend`` (a name or a whole :class:`Normaliser`) and ``chunk_size`` overridden
        where they are not ``None``."""
        base = self
        if isinstance(backend, Normaliser):
            base, backend = backend, None
        elif backend is not None and not isinstance(backend, str):
            raise TypeError(f"backend must be a backend name or a Normaliser, got {type(backend).__name__}")
        return Normaliser(
            base.backend if backend is None else backend, base.chunk_size if chunk_size is None else chunk_size
        )
