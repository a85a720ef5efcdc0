# SPDX-License-Identifier: Apache-2.0
r"""The encoder API of a trained recognition module: factors and embeddings of new inputs, and its
weights alone in a file.

Every :class:`~pyro_rpm.Recognition` has these methods (:class:`EncoderMixin` is one of its bases):

* :meth:`~EncoderMixin.encode`: the factors :math:`f(z \mid x_m)` of new inputs, computed in
  batches in eval mode without autograd and without touching Pyro's parameter store;
* :meth:`~EncoderMixin.transform`: the embeddings of new inputs as one tensor (sklearn-like),
  the family's :meth:`Factor.embedding <pyro_rpm.Factor.embedding>` of each factor: the mean
  :math:`\mu(x)` of a Gaussian factor, the point :math:`e(x)` of a Delta factor, the mean direction of
  a von Mises-Fisher factor, the state probabilities of a categorical factor;
* :meth:`~EncoderMixin.save` / :meth:`~EncoderMixin.load`: the module's ``state_dict`` with
  constructor-free metadata (class, :attr:`~pyro_rpm.Recognition.output_size`, name, tensor
  shapes) in one :func:`torch.save` file that :func:`torch.load` reads with ``weights_only=True``
  (no arbitrary unpickling). Loading goes into a module of the same architecture, built by the
  caller; a file of another architecture is refused with a :class:`ValueError` that names the
  difference.

.. code-block:: python

    rec = GaussianRecognition(net, latent_dim=2, name="r1")   # ... trained
    rec.save("r1.pt")
    fresh = GaussianRecognition(make_net(), latent_dim=2, name="r1").load("r1.pt")
    z = fresh.transform(x_new, batch_size=4096)                # (N, 2) posterior means
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import torch

from .._validation import check_finite, check_int, check_tensor, resolve_device

__all__ = ["FORMAT", "EncoderMixin", "load_recognition", "save_recognition"]

#: The format tag of a recognition file (:meth:`EncoderMixin.save`).
FORMAT = "pyro_rpm.recognition/1"


class EncoderMixin:
    """Encoding of new inputs and weights-only files, for :class:`~pyro_rpm.Recognition` subclasses.

    Relies on the recognition contract only: ``net``, :meth:`~pyro_rpm.Recognition.head`,
    :attr:`~pyro_rpm.Recognition.output_size` and :attr:`~pyro_rpm.Recognition.name`, and on the
    :class:`~pyro_rpm.Factor` contract (:meth:`~pyro_rpm.Factor.cat`, :meth:`~pyro_rpm.Factor.embedding`).
    """

    def _encoding_device(self, device: object) -> torch.device | None:
        resolved = resolve_device(device)
        if resolved is not None:
            return resolved
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return None

    def encode(self, x: torch.Tensor, *, batch_size: int = 1024, device: str | torch.device | None = None):
        r"""The factors :math:`f(z \mid x_m)` of the inputs ``x``, ``batch_shape == (len(x),)``.

        The network runs in eval mode (dropout off, batch-norm running statistics) under
        :func:`torch.no_grad`, ``batch_size`` rows at a time; the mode is restored afterwards and
        Pyro's parameter store is not touched. The chunks' factors are concatenated with
        :meth:`Factor.cat <pyro_rpm.Factor.cat>`, so the result is the one-shot ``head(net(x))`` of an
        eval-mode network (up to the floating-point effects of the batch size on the matrix
        products).

        :param torch.Tensor x: inputs, shape ``(N, ...)`` with N >= 1.
        :param int batch_size: rows per network call.
        :param device: where the network runs and the factors live (default: the module's device);
            ``x`` is moved there chunk by chunk.
        :returns: a detached :class:`~pyro_rpm.Factor` over the N inputs.
        :raises TypeError: when ``x`` is not a tensor.
        :raises ValueError: for a 0-dimensional or empty ``x``, a ``batch_size`` that is not an int >= 1, non-finite
            inputs (with ``validate``) or a network output of the wrong width.
        """
        check_tensor(x, f"inputs to recognition '{self.name}'")
        check_int(batch_size, "batch_size", expected="a positive int")
        if x.dim() == 0 or x.shape[0] == 0:
            raise ValueError(
                f"inputs to recognition '{self.name}' must have shape (N, ...) with N >= 1, got {tuple(x.shape)}"
            )
        target = self._encoding_device(device)
        was_training = self.training
        self.eval()
        parts = []
        try:
            with torch.no_grad():
                for chunk in x.split(batch_size):
                    chunk = chunk.to(target) if target is not None else chunk
                    if self.validate:
                        check_finite(chunk, f"inputs to recognition '{self.name}'")
                    parts.append(self.head(self._network_output(chunk)).detach())
        finally:
            self.train(was_training)
        return parts[0] if len(parts) == 1 else type(parts[0]).cat(parts)

    def transform(
        self, x: torch.Tensor, *, batch_size: int = 1024, device: str | torch.device | None = None
    ) -> torch.Tensor:
        r"""Embeddings of the inputs ``x``: :meth:`Factor.embedding <pyro_rpm.Factor.embedding>` of
        :meth:`encode`, shape ``(N, E)`` (sklearn's ``transform``).

        For the families of :mod:`pyro_rpm.recognition`: the mean :math:`\mu(x)` of a Gaussian factor
        (the posterior mean of a single view under the tied guide), the point :math:`e(x)` of a Delta
        factor, the unit mean direction :math:`\mu(x)` of a von Mises-Fisher factor, the state
        probabilities :math:`\operatorname{softmax}(\text{logits}(x))` of a categorical factor.
        Arguments and errors as :meth:`encode`.
        """
        return self.encode(x, batch_size=batch_size, device=device).embedding()

    def save(self, path: str | os.PathLike) -> None:
        """Write the module's ``state_dict`` (on the CPU) and its metadata to ``path``.

        The file holds tensors, strings, ints and lists only: :func:`torch.load` reads it with
        ``weights_only=True``. Pyro's parameter store is not involved (and not changed).

        :raises TypeError: when ``path`` is not a str or path-like.
        """
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a file path (str or os.PathLike), got {type(path).__name__}")
        state = {key: value.detach().cpu().clone() for key, value in self.state_dict().items()}
        torch.save(
            {
                "format": FORMAT,
                "class": f"{type(self).__module__}.{type(self).__qualname__}",
                "name": self.name,
                "output_size": int(self.output_size),
                "shapes": {key: list(value.shape) for key, value in state.items()},
                "state_dict": state,
            },
            path,
        )

    def load(self, path: str | os.PathLike, *, map_location: str | torch.device | None = None) -> Any:
        """Load the weights that :meth:`save` wrote into this module (in place) and return it.

        The module must have the saved architecture: the same class, :attr:`output_size` and
        ``state_dict`` keys and shapes (the name may differ). Parameters are copied into the
        module's existing tensors (:meth:`torch.nn.Module.load_state_dict`), so a module registered
        in Pyro's parameter store, or owned by a Lightning module, sees the loaded values.

        :param map_location: passed to :func:`torch.load` (default: the tensors' device in the file, the CPU).
        :raises TypeError: when ``path`` is not a str or path-like.
        :raises ValueError: for a file that is not a recognition file, one of another architecture, or
            one with non-finite values (the module is then unchanged).
        """
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a file path (str or os.PathLike), got {type(path).__name__}")
        try:
            saved = torch.load(path, map_location=map_location, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
            raise ValueError(f"{os.fspath(path)!r} is not a pyro_rpm recognition file ({error})") from error
        if not isinstance(saved, dict) or saved.get("format") != FORMAT:
            raise ValueError(f"{os.fspath(path)!r} is not a pyro_rpm recognition file (format {FORMAT!r})")
        mine = f"{type(self).__module__}.{type(self).__qualname__}"
        if saved["class"] != mine:
            raise ValueError(f"{os.fspath(path)!r} holds a {saved['class']}, not a {mine}")
        if saved["output_size"] != self.output_size:
            raise ValueError(
                f"{os.fspath(path)!r} holds a module with output_size {saved['output_size']}, "
                f"but recognition '{self.name}' has output_size {self.output_size}"
            )
        shapes = {key: list(value.shape) for key, value in self.state_dict().items()}
        if saved["shapes"] != shapes:
            missing = sorted(set(shapes) - set(saved["shapes"]))
            extra = sorted(set(saved["shapes"]) - set(shapes))
            wrong = [k for k in shapes if k in saved["shapes"] and saved["shapes"][k] != shapes[k]]
            detail = "; ".join(
                part
                for part in (
                    f"missing from the file: {missing}" if missing else "",
                    f"not in the module: {extra}" if extra else "",
                    ", ".join(f"{k} is {saved['shapes'][k]} in the file but {shapes[k]} here" for k in wrong),
                )
                if part
            )
            raise ValueError(f"{os.fspath(path)!r} holds another architecture than recognition '{self.name}': {detail}")
        for key, value in saved["state_dict"].items():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise ValueError(f"{os.fspath(path)!r} holds non-finite values in {key!r}; the module is unchanged")
        self.load_state_dict(saved["state_dict"])
        return self


def save_recognition(recognition: Any, path: str | os.PathLike) -> None:
    """``recognition.save(path)`` (:meth:`EncoderMixin.save`).

    :raises TypeError: when ``recognition`` has no encoder API (not a :class:`~pyro_rpm.Recognition`).
    """
    if not isinstance(recognition, EncoderMixin):
        raise TypeError(f"recognition must be a pyro_rpm Recognition, got {type(recognition).__name__}")
    recognition.save(path)


def load_recognition(
    recognition: Any, path: str | os.PathLike, *, map_location: str | torch.device | None = None
) -> Any:
    """``recognition.load(path)`` (:meth:`EncoderMixin.load`): the weights of ``path`` in ``recognition``.

    :raises TypeError: when ``recognition`` has no encoder API (not a :class:`~pyro_rpm.Recognition`).
    """
    if not isinstance(recognition, EncoderMixin):
        raise TypeError(f"recognition must be a pyro_rpm Recognition, got {type(recognition).__name__}")
    return recognition.load(path, map_location=map_location)
