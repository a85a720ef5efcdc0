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

from ._setup import check_arguments, positive_int, probe_params, register_params, resolve_device
from ._state import rng_state, set_rng_state
from ._stepper import make_stepper
from .checkpoint import apply_checkpoint, check_fingerprint, read_checkpoint, save_checkpoint
from .data import FitData, epoch_permutation, epoch_seed
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
    support: str = "batch",
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
    :param str support: ``"batch"`` (in-batch support) or ``"full"`` (whole data set; see above).
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
    :returns: a :class:`FitResult`.

    Parameters are Pyro's: the networks' tensors registered in the parameter store by the first
    trace. A checkpoint of another model, a corrupted or missing checkpoint and invalid arguments
    raise before the parameter store is changed.
    """
    start_time = time.perf_counter()
    elbo, validation_elbo, early_stopping, callbacks = check_arguments(
        model=model,
        guide=guide,
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
    )
    device = resolve_device(device)
    full = support == "full"
    train = FitData(data, "data", materialise=full, loader_kwargs=loader_kwargs)
    val = (
        None if validation is None else FitData(validation, "validation", materialise=full, loader_kwargs=loader_kwargs)
    )
    N = train.n
    B = N if batch_size is None else positive_int(batch_size, "batch_size", minimum=1 if full else 2)
    if B > N:
        raise ValueError(f"batch_size={B} exceeds the number of data points ({N})")
    if not full and (N < 2 or (not drop_last and N % B == 1)):
        raise ValueError("the in-batch support needs at least 2 points in every batch; change batch_size or drop_last")
    if val is not None and not full and val.n < 2:
        raise ValueError("validation needs at least 2 points (the in-batch support)")
    per_epoch = train.num_batches(B, drop_last)
    total = steps if steps is not None else epochs * per_epoch
    stepper = make_stepper(model, guide, elbo, optim, lr, optim_args, lr_scheduler)
    config = {"support": support, "batch_size": B, "n": N, "drop_last": bool(drop_last)}

    saved = None
    if resume and (resume is True or os.path.exists(os.fspath(checkpoint))):
        saved = read_checkpoint(checkpoint, map_location="cpu")
        state = saved.extra.get("fit") if isinstance(saved.extra, dict) else None
        if not isinstance(state, dict):
            raise ValueError(
                f"checkpoint '{saved.path}' was not written by pyro_rpm.fit (no loop state); use load_checkpoint"
            )
        changed = [f"{k}={v!r} (checkpoint: {state.get(k)!r})" for k, v in config.items() if state.get(k) != v]
        if seed is not None and seed != state.get("seed"):
            changed.append(f"seed={seed!r} (checkpoint: {state.get('seed')!r})")
        if changed:
            raise ValueError(f"cannot resume from '{saved.path}': the run's settings changed: {', '.join(changed)}")
        kind = saved.payload["optim"]["kind"] if saved.payload["optim"] else None
        if kind != stepper.kind:
            raise ValueError(
                f"cannot resume from '{saved.path}': it holds a {kind!r} optimiser state, this run uses "
                f"a {stepper.kind!r} optimiser"
            )
        base_seed = int(state["seed"])
    else:
        if seed is not None:
            pyro.set_rng_seed(seed)
        base_seed = seed if seed is not None else int(torch.randint(0, 2**62, ()).item())

    whole = train.whole(device) if full else None

    def call_args(idx: torch.Tensor, batch: tuple | None) -> tuple[tuple, dict]:
        if not full:
            return batch
        args, kwargs = whole
        where = next(iter([*args, *kwargs.values()])).device
        return args, {**kwargs, "subsample": idx.to(where)}

    def epoch_batches(order: torch.Tensor) -> Iterable[tuple[torch.Tensor, tuple | None]]:
        if full:
            return ((idx, None) for idx in train.chunks(order, B, position, drop_last))
        return train.batches(order, B, position, drop_last, device, seed=epoch_seed(base_seed + 1, epoch))

    probe_idx = torch.arange(B)
    tensors, constraints = probe_params(
        model, guide, elbo, *call_args(probe_idx, None if full else train.take(probe_idx, device))
    )
    if saved is not None:
        check_fingerprint(saved, {n: list(t.shape) for n, t in tensors.items()})
    params = register_params(tensors, constraints)
    stepper.setup(params)
    if stepper.plateau and val is None:
        raise ValueError("a ReduceLROnPlateau scheduler is stepped with the validation loss: pass validation=")

    result = FitResult()
    epoch, position, best_params, wait = 0, 0, None, 0
    if saved is not None:
        apply_checkpoint(saved, optim=stepper.optim, scheduler=stepper.scheduler)
        state = saved.extra["fit"]
        epoch, position, wait = int(state["epoch"]), int(state["position"]), int(state["wait"])
        result.losses, result.lrs = state["losses"].tolist(), state["lrs"].tolist()
        result.val_steps, result.val_losses = state["val_steps"].tolist(), state["val_losses"].tolist()
        result.epoch_ends = state["epoch_ends"].tolist()
        result.stop_reason = "early_stopping" if state["stop_reason"] == "early_stopping" else "steps"
        result.best_step, result.best_val_loss = state["best_step"], state["best_val_loss"]
        best_params = state["best_params"]
        result.step, result.epoch, result.resumed_from = saved.step, epoch, saved.step

    def save() -> None:
        state = {
            **config,
            "seed": base_seed,
            "epoch": epoch,
            "position": position,
            "wait": wait,
            "losses": torch.tensor(result.losses, dtype=torch.float64),
            "lrs": torch.tensor(result.lrs, dtype=torch.float64),
            "val_steps": torch.tensor(result.val_steps, dtype=torch.int64),
            "val_losses": torch.tensor(result.val_losses, dtype=torch.float64),
            "epoch_ends": torch.tensor(result.epoch_ends, dtype=torch.int64),
            "stop_reason": result.stop_reason,
            "best_step": result.best_step,
            "best_val_loss": result.best_val_loss,
            "best_params": best_params,
        }
        save_checkpoint(
            checkpoint,
            step=result.step,
            optim=stepper.optim,
            scheduler=stepper.scheduler,
            extra={"fit": state},
            names=list(params),
        )

    def validate() -> float:
        streams = rng_state()
        try:
            with torch.no_grad():
                if full:
                    args, kwargs = val.whole(device)
                    return validation_elbo.loss(model, guide, *args, **kwargs) / val.n
                size = min(B, val.n)
                total_loss, count = 0.0, 0
                for idx, (args, kwargs) in val.batches(torch.arange(val.n), size, 0, True, device):
                    total_loss += validation_elbo.loss(model, guide, *args, **kwargs)
                    count += len(idx)
                return total_loss / count
        finally:
            set_rng_state(streams)

    from tqdm.auto import tqdm

    bar = tqdm(
        total=total,
        initial=min(result.step, total),
        desc="fit",
        unit="step",
        disable=not progress,
        mininterval=0.5,
        dynamic_ncols=True,
    )
    stop = result.step >= total or result.stop_reason == "early_stopping"
    try:
        while not stop:
            order = epoch_permutation(base_seed, epoch, N)
            for idx, batch in epoch_batches(order):
                args, kwargs = call_args(idx, batch)
                loss = stepper.step(args, kwargs) / (N if full else len(idx))
                result.step += 1
                position += 1
                result.losses.append(loss)
                result.lrs.append(stepper.lr())
                epoch_end = position == per_epoch
                if epoch_end:
                    result.epoch_ends.append(result.step)
                if stepper.has_scheduler and not stepper.plateau and (scheduler_interval == "step" or epoch_end):
                    stepper.scheduler_step()
                val_loss = None
                if val is not None and (result.step % validate_every == 0 if validate_every else epoch_end):
                    val_loss = validate()
                    result.val_steps.append(result.step)
                    result.val_losses.append(val_loss)
                    if stepper.plateau:
                        stepper.scheduler_step(val_loss)
                    if result.best_val_loss is None or val_loss < result.best_val_loss - (
                        early_stopping.min_delta if early_stopping else 0.0
                    ):
                        result.best_step, result.best_val_loss, wait = result.step, val_loss, 0
                        if early_stopping is not None and early_stopping.restore_best:
                            best_params = {n: p.detach().clone() for n, p in params.items()}
                    else:
                        wait += 1
                        if early_stopping is not None and wait >= early_stopping.patience:
                            result.stop_reason, stop = "early_stopping", True
                if epoch_end:
                    epoch, position = epoch + 1, 0
                    result.epoch = epoch
                info = StepInfo(result.step, epoch - int(epoch_end), loss, result.lrs[-1], epoch_end, val_loss, result)
                if any([cb(info) is True for cb in callbacks]) and not stop:
                    result.stop_reason, stop = "callback", True
                if result.step >= total:
                    stop = True
                if stop and result.stopped_early and best_params is not None:
                    with torch.no_grad():
                        for n, p in params.items():
                            p.copy_(best_params[n])
                if checkpoint is not None and (stop or (checkpoint_every and result.step % checkpoint_every == 0)):
                    save()
                bar.update(1)
                if result.step % 25 == 0 or stop:
                    tail = result.losses[-50:]
                    postfix = {"loss": f"{sum(tail) / len(tail):.4f}"}
                    if result.val_losses:
                        postfix["val"] = f"{result.val_losses[-1]:.4f}"
                    bar.set_postfix(postfix, refresh=False)
                if stop:
                    break
    finally:
        bar.close()
    result.seconds = time.perf_counter() - start_time
    return result
