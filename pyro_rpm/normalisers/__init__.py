# SPDX-License-Identifier: Apache-2.0
r"""Exact, memory-bounded row-logsumexp over a large support set: the RPM normaliser.

The exact RPM likelihood needs :math:`\log F(z_b) + \log N = \log\sum_{m=1}^N f(z_b \mid x_m)` for
every latent :math:`z_b` of a minibatch against all N support points, a ``B x N`` table per step.

* :func:`gaussian_logsumexp`: :math:`\log\sum_m \mathcal N(z_b; \mu_m, \operatorname{diag} s_m^2)`.
* :func:`score_logsumexp`: :math:`\log\sum_m \exp(u_b\cdot v_m + \beta_m)` (bilinear critics; an
  RBF coupling :math:`-\|z - a\|^2 / 2\ell^2` is :func:`gaussian_logsumexp` with scale
  :math:`\ell` plus :math:`D \log \ell + \tfrac D2 \log 2\pi`, which keeps the exact float64 path).

Backends (``backend=``):

* ``"dense"``: the ``B x N`` table by one GEMM, ``torch.logsumexp`` and autograd. Memory
  :math:`O(B N)`.
* ``"streamed"``: :class:`~.streamed.ChunkedLogSumExp`, chunks of N merged online, scores
  recomputed in the backward pass. Memory :math:`O(B \cdot C + N D)`; any device and dtype.
* ``"fused"``: the same autograd function on PyTorch's fused attention operators (:mod:`.fused`):
  the CPU flash-attention op (float32/float64) and the CUDA memory-efficient op (float32). Probed
  once against a direct computation; requesting it where the probe fails raises ``ValueError``.
* ``"screened"`` (:mod:`.screened`): a float32 fused pass bounds every support point's weight with
  a certified rounding-error bound; the points that can weigh more than :math:`e^{-40}/N` of a row
  are computed exactly in float64 (fused, else streamed), the others are provably negligible. Exact
  like the float64 backends, and faster where each latent sees few support points (the usual RPM
  regime: 1.5-1.7x the fused backend at N = 1e5-1e6 on ``benchmarks/normaliser.py``); about
  1.05x the time of ``"fused"`` where every point matters (wide factors, recognised by a cheap
  probe). With float32 work (dot-product scores of float32 inputs, or
  ``accumulate_dtype=torch.float32``) it is ``"fused"``.
* ``"auto"`` (default): ``"dense"`` for small tables (:math:`B N \le 2^{16}`); ``"screened"`` from
  :math:`2^{20}` pairs, or for batches of at most 32 latents from :math:`2^{13}` support points on,
  with float64 work where a float32 fused kernel exists; else ``"fused"`` where
  available, else ``"streamed"``.

Accumulation precision. The Gaussian score is a dot product of *expanded* features
:math:`[\tilde z^2, \tilde z, 1]\cdot[-\lambda/2, \lambda\tilde\mu, c]`, whose rounding error is
about :math:`\epsilon \lambda (\tilde z^2 + \tilde\mu^2)` per dimension, against the exact
difference form's :math:`\epsilon\,|z|/s`, and the gradients cancel in the same way
(:mod:`.features`). Measured against the float64 difference form (N = 500, D = 8, latents uniform
in :math:`[-10, 10]^D` or drawn from a support point), float32 accumulation has relative value
errors of 0.6, 2e-2, 4e-4 and 1e-6 at :math:`s = 10^{-3}, 10^{-2}, 0.1, 1`, and gradient errors
of about 1e-4 (elementwise, relative to :math:`|g| + 10^{-3} \max|g|`) at every scale from
:math:`10^{-3}` to :math:`10^{2}`. Float32 inputs are therefore accumulated in float64 (as
:mod:`pyro_rpm.normalisers.dense` does; not on MPS): values within 6e-8 and gradients within 6e-7 on the
same cases, i.e. float32 rounding of the output. This costs about 2-2.5x in speed on the CPU
(fused, forward + backward at B = 256, D = 8, N = 1e6, one thread on a shared 2-vCPU box: about
120-130 against 265-290 Mpairs/s; ``benchmarks/normaliser.py``); the ``"screened"`` backend wins
most of it back without giving up exactness. ``accumulate_dtype=torch.float32`` opts into the fast
path where errors of that size are acceptable. Dot-product scores do not cancel
systematically and accumulate in the input dtype (at least float32). On CUDA the fused kernel
(memory-efficient attention) takes float32 only, so the exact default runs the streamed backend
in float64 there; ``accumulate_dtype=torch.float32`` selects the fused kernel.

All functions return the input dtype, support leading batch dimensions on the latents, and give
exact gradients for every tensor argument (first order only).
"""

from __future__ import annotations

import torch

from .._validation import (
    check_finite,
    check_optional_int,
    check_positive,
    check_same_device_and_dtype,
    check_tensor,
    recording_graph,
)
from .choice import BACKENDS, Normaliser
from .dense import clamped_logsumexp
from .features import DotFeatures, FeatureMap, GaussianFeatures
from .fused import fused_available, fused_kernel
from .refine import refined_logsumexp
from .screened import screened_logsumexp
from .streamed import StreamedKernel, chunked_logsumexp

__all__ = [
    "BACKENDS",
    "Normaliser",
    "gaussian_logsumexp",
    "score_logsumexp",
    "fused_available",
    "screening_available",
    "resolve_backend",
]

#: backend names accepted by ``backend=``.
#: ``"auto"`` uses the dense table up to this many (latent, support point) pairs.
DENSE_MAX_PAIRS = 2**16
#: While :class:`~pyro_rpm.JitRPM_ELBO` records a step, ``"auto"`` uses the dense table up to this
#: many pairs: the chunked backends are autograd functions whose backward a recording cannot keep.
RECORDED_DENSE_MAX_PAIRS = 2**23
#: ``"auto"`` screens (:mod:`.screened`) from this many pairs on, where float64 accumulation is asked for.
SCREEN_MIN_PAIRS = 2**20
#: ... and, for batches of at most :data:`SCREEN_SMALL_BATCH` latents, already from this many support
#: points on (past :data:`DENSE_MAX_PAIRS` pairs): at small B the exact pass over every point costs
#: far more than the float32 screen (``benchmarks/normaliser.py``'s problem, one thread: screened
#: 1.28x faster than fused at B = 16, N = 1e4; 1.31x at B = 4, N = 3e4).
SCREEN_MIN_SUPPORT = 2**13
SCREEN_SMALL_BATCH = 32
#: default chunk sizes: about 8 MiB of float64 scores per chunk for the streamed kernel.
_STREAMED_CHUNK_ELEMENTS = 2**20
_FUSED_CHUNK = 2**16


def screening_available(device: torch.device, work_dtype: torch.dtype) -> bool:
    """Whether the ``"screened"`` backend runs here: float64 work with a float32 fused kernel to screen.

    :raises ValueError: if ``device`` is not a device; :raises TypeError: if ``work_dtype`` is not a torch dtype.
    """
    return (
        fused_available(device, torch.float32) and fused_available(device, work_dtype) and work_dtype == torch.float64
    )


def resolve_backend(
    backend: str, num_pairs: int, device: torch.device, work_dtype: torch.dtype, num_support: int | None = None
) -> str:
    """Name of the backend that ``backend`` selects for this problem (``"dense"``, ``"streamed"``,
    ``"fused"`` or ``"screened"``).

    ``num_pairs`` is the number of (latent, support point) pairs, B * N; ``num_support`` (N, optional)
    lets ``"auto"`` screen small batches against large supports (:data:`SCREEN_MIN_SUPPORT`).

    :raises ValueError: for an unknown name, ``"fused"``/``"screened"`` where they cannot run, or a
        ``num_support`` that is not a non-negative int.
    """
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    requested = backend
    if backend == "screened" and work_dtype != torch.float64:
        backend = "fused"  # float32 work: the screening pass would be the whole computation
    if backend == "fused" and not fused_available(device, work_dtype):
        raise ValueError(
            f"backend={requested!r} is not available for device {device} with working dtype {work_dtype} "
            "(CPU: float32/float64; CUDA: float32); use backend='auto' or 'streamed'"
        )
    if backend == "screened" and not fused_available(device, torch.float32):
        raise ValueError(
            f"backend='screened' needs a float32 fused kernel, which device {device} lacks; "
            "use backend='auto' or 'streamed'"
        )
    if backend != "auto":
        return backend
    check_optional_int(num_support, "num_support", 0)
    if num_pairs <= DENSE_MAX_PAIRS or (recording_graph() and num_pairs <= RECORDED_DENSE_MAX_PAIRS):
        return "dense"
    small_batch = (
        num_support is not None and num_support >= SCREEN_MIN_SUPPORT and num_pairs <= SCREEN_SMALL_BATCH * num_support
    )
    if (num_pairs >= SCREEN_MIN_PAIRS or small_batch) and screening_available(device, work_dtype):
        return "screened"
    return "fused" if fused_available(device, work_dtype) else "streamed"


def _streamed_chunk(num_rows: int) -> int:
    return max(256, _STREAMED_CHUNK_ELEMENTS // max(num_rows, 1))


def _work_dtype(dtype: torch.dtype, device: torch.device, accumulate_dtype: torch.dtype | None, exact: bool):
    if accumulate_dtype is not None:
        if accumulate_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"accumulate_dtype must be torch.float32, torch.float64 or None, got {accumulate_dtype}")
        return accumulate_dtype
    if dtype == torch.float64:
        return dtype
    if exact and device.type != "mps":
        return torch.float64
    return torch.float32


def _logsumexp(
    x: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor | None,
    features: FeatureMap,
    backend: str,
    chunk_size: int | None,
) -> torch.Tensor:
    """Shared driver: flatten leading dims, pick the backend, run it (refined for float64 Gaussians),
    restore shape and dtype."""
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])
    q = features.query(flat)
    num_rows, num_support = q.shape[0], a.shape[0]
    name = resolve_backend(backend, num_rows * num_support, x.device, q.dtype, num_support)

    def run(a_: torch.Tensor, b_: torch.Tensor | None) -> torch.Tensor:
        return _run(name, q, a_, b_, features, chunk_size, x.device)

    if num_rows and x.dtype == torch.float64 and isinstance(features, GaussianFeatures):
        lse = refined_logsumexp(flat, q, a, b, features, run)
    else:
        lse = run(a, b)
    return lse.to(x.dtype).reshape(lead)


def _run(name: str, q, a, b, features: FeatureMap, chunk_size: int | None, device: torch.device) -> torch.Tensor:
    """Row-logsumexp of ``q`` against the support parameters ``a``, ``b`` by the backend ``name``."""
    num_rows = q.shape[0]
    if name == "dense" or num_rows == 0:
        return clamped_logsumexp(q @ features.keys(a, b).T, -1)
    if name == "screened":
        exact = fused_kernel(device) if fused_available(device, q.dtype) else StreamedKernel()
        exact_chunk = chunk_size or (_FUSED_CHUNK if exact.name == "fused" else _streamed_chunk(num_rows))
        return screened_logsumexp(
            q, a, b, features, exact, fused_kernel(device), exact_chunk, chunk_size or _FUSED_CHUNK
        )
    kernel = StreamedKernel() if name == "streamed" else fused_kernel(device)
    if chunk_size is None:
        chunk_size = _FUSED_CHUNK if name == "fused" else _streamed_chunk(num_rows)
    return chunked_logsumexp(q, a, b, features, kernel, chunk_size)


def gaussian_logsumexp(
    z: torch.Tensor,
    loc: torch.Tensor,
    scale: torch.Tensor | None = None,
    *,
    precision: torch.Tensor | None = None,
    backend: str = "auto",
    chunk_size: int | None = None,
    accumulate_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    r"""Return :math:`\log \sum_{m=1}^N \mathcal N(z; \mu_m, \operatorname{diag} \lambda_m^{-1})` for every latent.

    This is the RPM normaliser :math:`\log \sum_m f(z \mid x_m) = \log F(z) + \log N` of Gaussian
    recognition factors, exact in value and gradient (for ``z``, ``loc`` and ``scale``/``precision``).

    :param torch.Tensor z: latents, shape ``(..., D)``.
    :param torch.Tensor loc: support means :math:`\mu`, shape ``(N, D)``.
    :param torch.Tensor scale: standard deviations :math:`s = \lambda^{-1/2}`, shape ``(N, D)`` or
        ``(D,)`` (shared). Give exactly one of ``scale`` and ``precision``.
    :param torch.Tensor precision: precisions :math:`\lambda`, shape ``(N, D)`` or ``(D,)``.
    :param str backend: ``"auto"``, ``"dense"``, ``"streamed"``, ``"fused"`` or ``"screened"`` (module docstring).
    :param int chunk_size: support points per chunk for the streamed/fused backends (default: about
        ``2**20 / B`` for streamed, ``2**16`` for fused).
    :param torch.dtype accumulate_dtype: working dtype; default float64 (module docstring).
    :returns: a tensor of shape ``z.shape[:-1]`` in the input dtype.
    :raises ValueError: on mismatched shapes, devices or dtypes, non-finite inputs, non-positive
        scales/precisions, or an unknown/unavailable backend.

    Example (the likelihood's normaliser, without its ``B x N`` table)::

        >>> from pyro_rpm.normalisers import gaussian_logsumexp
        >>> z, loc, scale = torch.randn(2, 4, 3), torch.randn(5000, 3), torch.rand(5000, 3) + 0.1
        >>> lse = gaussian_logsumexp(z, loc, scale, backend="streamed")
        >>> lse.shape
        torch.Size([2, 4])
        >>> table = GaussianFactor(loc, scale).pairwise_log_prob(z)
        >>> torch.allclose(lse, table.logsumexp(-1))
        True
    """
    check_tensor(z, "z")
    check_tensor(loc, "loc")
    if (scale is None) == (precision is None):
        raise ValueError("give exactly one of scale and precision")
    param_name, param = ("scale", scale) if scale is not None else ("precision", precision)
    check_tensor(param, param_name)
    if not z.is_floating_point():
        raise ValueError(f"z must be a floating-point tensor, got dtype {z.dtype}")
    if z.dim() < 1:
        raise ValueError("z must have shape (..., D), got a scalar")
    if loc.dim() != 2 or loc.shape[0] < 1:
        raise ValueError(f"loc must have shape (N, D) with N >= 1, got {tuple(loc.shape)}")
    if loc.shape[1] != z.shape[-1]:
        raise ValueError(
            f"z has latent dimension {z.shape[-1]} but loc has {loc.shape[1]} (shapes must be (..., D), (N, D))"
        )
    if param.shape not in (loc.shape, loc.shape[1:]):
        raise ValueError(
            f"{param_name} must have shape {tuple(loc.shape)} or {tuple(loc.shape[1:])}, got {tuple(param.shape)}"
        )
    check_same_device_and_dtype(z, "z", loc, "loc")
    check_same_device_and_dtype(loc, "loc", param, param_name)
    for value, name in ((z, "z"), (loc, "loc")):
        check_finite(value, name)
    check_positive(param.detach(), param_name)
    check_optional_int(chunk_size, "chunk_size", expected="a positive int or None")
    work = _work_dtype(z.dtype, z.device, accumulate_dtype, exact=True)
    centre = loc.detach().mean(0).to(work)  # any constant is exact (features.py); no (N, D) float64 copy
    features = GaussianFeatures(centre, is_scale=scale is not None, shared=param.dim() == 1)
    return _logsumexp(z, loc, param, features, backend, chunk_size)


def score_logsumexp(
    query: torch.Tensor,
    keys: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    backend: str = "auto",
    chunk_size: int | None = None,
    accumulate_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    r"""Return :math:`\log \sum_{m=1}^N \exp(u \cdot v_m + \beta_m)` for every query :math:`u`.

    Per-query terms (e.g. :math:`-\|z\|^2/2\ell^2` of an RBF coupling) add outside the logsumexp.

    :param torch.Tensor query: queries :math:`u`, shape ``(..., K)``.
    :param torch.Tensor keys: keys :math:`v`, shape ``(N, K)``.
    :param torch.Tensor bias: optional key bias :math:`\beta`, shape ``(N,)``.
    :param str backend: ``"auto"``, ``"dense"``, ``"streamed"``, ``"fused"`` or ``"screened"``.
    :param int chunk_size: support points per chunk (streamed/fused).
    :param torch.dtype accumulate_dtype: working dtype (default: the input dtype, at least float32).
    :returns: a tensor of shape ``query.shape[:-1]`` in the input dtype.
    :raises ValueError: on mismatched shapes, devices or dtypes, non-finite inputs, or an unknown backend.
    """
    check_tensor(query, "query")
    check_tensor(keys, "keys")
    if not query.is_floating_point():
        raise ValueError(f"query must be a floating-point tensor, got dtype {query.dtype}")
    if query.dim() < 1:
        raise ValueError("query must have shape (..., K), got a scalar")
    if keys.dim() != 2 or keys.shape[0] < 1 or keys.shape[1] != query.shape[-1]:
        raise ValueError(f"keys must have shape (N, {query.shape[-1]}) with N >= 1, got {tuple(keys.shape)}")
    check_same_device_and_dtype(query, "query", keys, "keys")
    tensors = [(query, "query"), (keys, "keys")]
    if bias is not None:
        check_tensor(bias, "bias")
        if bias.shape != keys.shape[:1]:
            raise ValueError(f"bias must have shape ({keys.shape[0]},), got {tuple(bias.shape)}")
        check_same_device_and_dtype(keys, "keys", bias, "bias")
        tensors.append((bias, "bias"))
    for value, name in tensors:
        check_finite(value, name)
    check_optional_int(chunk_size, "chunk_size", expected="a positive int or None")
    work = _work_dtype(query.dtype, query.device, accumulate_dtype, exact=False)
    return _logsumexp(query, keys, bias, DotFeatures(work, has_bias=bias is not None), backend, chunk_size)
