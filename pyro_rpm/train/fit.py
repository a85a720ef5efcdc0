# SPDX-License-Identifier: Apache-2.0
r"""``fit``: train a model and guide on a data set, with validation, early stopping and checkpoints.

.. code-block:: python

    x1, x2, z = two_view_gaussian(2048)
    result = pyro_rpm.fit(model, guide, (x1, x2), steps=1000, batch_size=256, lr=3e-3, seed=0)
    result.losses[-1]          # loss per datum of the last step

**Minibatches and the support set.** Each step draws a minibatch of ``batch_size`` points (epoch
``e`` visits the points in a permutation fixed by ``(seed, e)``; the incomplete last batch is
dropped by default so that every step has the same support size).

* ``support="batch"`` (in-batch support): the model is called on the minibatch,
  ``model(x1[idx], x2[idx])``; the plate has size B and the constant is :math:`\log B`.
  The loss per datum is the step's loss divided by B.
* ``support="full"`` (whole-data-set support): the model is called on the whole data set with
  the minibatch's indices as a keyword, ``model(x1, x2, subsample=idx)``. The model passes them
  to its plate, whose size is N, and to ``observe``:

  .. code-block:: python

      def model(x1, x2, subsample=None):
          f1, f2 = r1(x1), r2(x2)
          with pyro.plate("data", x1.shape[0], subsample=subsample) as idx:
              z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1))
              observe("x1", f1, z, index=idx)
              observe("x2", f2, z, index=idx)

  Pyro scales the minibatch by N/B, so the step's loss estimates the full-data loss (N terms)
  without bias; the loss per datum is the step's loss divided by N. Called without
  ``subsample`` (as the validation does) the plate covers every point.

**Reproducibility.** ``seed`` seeds Pyro (:func:`pyro.set_rng_seed`) and fixes the epochs'
permutations. A checkpoint stores the parameter store, the optimiser and scheduler states, the
random streams, the position in the epoch and the history, so a resumed run continues the loss
trajectory of the uninterrupted one exactly (bit for bit on CPU). Validation runs on a copy of
the random streams and does not change the training trajectory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import pyro
import torch

from ..support.base import Support
from ._loop import Run
from ._settings import prepare_data, resolve
from ._stepper import make_stepper
from .results import EarlyStopping, FitResult, StepInfo

__all__ = ['fit']


def fit(
    model: Callable,
    guide: Callable,
    data: Any,
    *,
    steps: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    support: str | Support | type[Support] = "batch",
    elbo: pyro.infer.ELBO | None = None,
    optim: Any = None,
    lr: float | None = None,
    optim_args: dict | None = None,
    lr_scheduler: Callable | None = None,
    scheduler_interval: str = "epoch",
    validation: Any = None,
    validate_every: int | None = None,
    validation_elbo: pyro.infer.ELBO | None = None,
    early_stopping: EarlyStopping | int | None = None,
    device: str | torch.device | None = None,
    seed: int | None = None,
    callbacks: Iterable[Callable[[StepInfo], Any]] = (),
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool | str = False,
    drop_last: bool = True,
    loader_kwargs: dict | None = None,
    collapse_check: int | None = 200,
    compile: bool | str = False,
) -> FitResult:
    r"""Train ``model`` and ``guide`` on ``data`` by stochastic variational inference.

    :param model: the Pyro model, called as ``model(*batch)`` (``support="batch"``) or
        ``model(*data, subsample=idx)`` (``support="full"``); dict data are passed as keywords.
    :param guide: the guide (e.g. :class:`~pyro_rpm.RecognitionGuide`), called like the model.
    :param data: a tensor, a tuple/list/dict of tensors with one leading size N, a
        :class:`~torch.utils.data.TensorDataset` or a map-style dataset of such items.
    :param int steps: total optimisation steps (counting those before a resume); or
    :param int epochs: total epochs (``steps = epochs * batches per epoch``).
    :param int batch_size: minibatch size B (default N: full batch).
    :param support: ``"batch"`` (in-batch support) or ``"full"`` (whole data set; see above), or the
        :class:`~pyro_rpm.Support` the model observes through (an instance or a class): fit follows its
        :attr:`~pyro_rpm.Support.calling` convention (``FullDataSupport`` and ``IndexedBankSupport``
        are ``"full"``, the others ``"batch"``).
    :param elbo: the loss (default :class:`~pyro_rpm.RPM_ELBO`).
    :param optim: ``"adam"`` (default), ``"adamw"``, ``"sgd"``, ``"rmsprop"``, ``"adagrad"`` or a
        :class:`pyro.optim.PyroOptim` (SVI), or a :class:`torch.optim.Optimizer` class, factory
        ``params -> Optimizer`` or instance (``differentiable_loss`` and a torch optimiser).
    :param float lr: learning rate of a named optimiser or torch optimiser class (default 1e-3).
    :param dict optim_args: further arguments of that optimiser (e.g. ``{"weight_decay": 1e-4}``).
    :param lr_scheduler: factory ``torch optimizer -> scheduler``, e.g.
        ``functools.partial(torch.optim.lr_scheduler.StepLR, step_size=10)``. With a
        :mod:`pyro.optim.lr_scheduler` wrapper as ``optim``, fit steps that one.
    :param str scheduler_interval: ``"epoch"`` or ``"step"``; a ``ReduceLROnPlateau`` scheduler is
        stepped with the validation loss after each validation instead.
    :param validation: validation data (same forms as ``data``).
    :param int validate_every: validate every this many steps (default: at each epoch end).
    :param validation_elbo: the validation loss (default ``elbo``); e.g. more particles.
    :param early_stopping: an :class:`EarlyStopping` or a patience (needs ``validation``).
    :param device: move every batch (and, for ``support="full"``, the data) to this device. Move
        the networks there yourself before calling fit.
    :param int seed: seed of Pyro's random streams and of the epochs' order.
    :param callbacks: callables receiving a :class:`StepInfo` after each step; ``True`` stops.
    :param bool progress: show a tqdm progress bar with the running loss per datum.
    :param checkpoint: file for checkpoints, written at the end and every ``checkpoint_every`` steps.
    :param resume: ``True`` resumes from ``checkpoint`` (which must exist), ``"auto"`` resumes when it exists.
    :param bool drop_last: drop each epoch's incomplete last batch.
    :param dict loader_kwargs: extra :class:`~torch.utils.data.DataLoader` arguments for a generic dataset.
    :param int collapse_check: every this many steps, measure on the step's minibatch whether the
        recognition factors still tell the points apart (:class:`~pyro_rpm.diagnostics.collapse.CollapseMonitor`,
        on a copy of the random streams) and warn once with a
        :class:`~pyro_rpm.diagnostics.collapse.CollapseWarning` if a site's likelihood has become
        uniform; ``None`` switches it off.
    :param compile: ``True`` (or ``"fx"``, ``"inductor"``): train with :class:`~pyro_rpm.JitRPM_ELBO`, which records
        the step once per structure and replays it (``elbo`` must then be ``None`` or an
        :class:`~pyro_rpm.RPM_ELBO`, whose settings it keeps); same losses and gradients, less Python per step.
    :returns: a :class:`FitResult`.

    Parameters are Pyro's: the networks' tensors registered in the parameter store by the first
    trace. A checkpoint of another model, a corrupted or missing checkpoint and invalid arguments
    raise before the parameter store is changed.
    """
    start_time = time.perf_counter()
    if compile is not False:
        from ._setup import as_compiled

        elbo = as_compiled(elbo, compile)
    settings = resolve(
        model,
        guide,
        elbo=elbo,
        validation_elbo=validation_elbo,
        support=support,
        steps=steps,
        epochs=epochs,
        seed=seed,
        scheduler_interval=scheduler_interval,
        validate_every=validate_every,
        early_stopping=early_stopping,
        has_validation=validation is not None,
        callbacks=callbacks,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        resume=resume,
        device=device,
        drop_last=drop_last,
        progress=progress,
        collapse_check=collapse_check,
    )
    inputs = prepare_data(settings, data, validation, batch_size, loader_kwargs)
    stepper = make_stepper(model, guide, settings.elbo, optim, lr, optim_args, lr_scheduler)
    run = Run(settings, inputs, stepper)
    saved = run.open_checkpoint()  # before any state changes: a bad checkpoint raises here
    run.setup_params(saved)
    if saved is not None:
        run.restore(saved)
    run.train()
    return run.finish(start_time)
