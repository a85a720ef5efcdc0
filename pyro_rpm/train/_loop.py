# SPDX-License-Identifier: Apache-2.0
r"""The run of :func:`pyro_rpm.fit` once its arguments and data are checked: :class:`Run`.

Its methods are the remaining steps, in order: :meth:`~Run.open_checkpoint` (read and check the
checkpoint to resume from, or seed the run), :meth:`~Run.setup_params` (probe, check and register the
parameters), :meth:`~Run.restore` (the resumed state), :meth:`~Run.train` (the loop) and
:meth:`~Run.finish`. Everything that can fail on bad input fails before the parameter store changes.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pyro
import torch

from ..diagnostics.collapse import CollapseMonitor
from ._settings import Inputs, Settings
from ._setup import probe_params, register_params
from ._state import rng_state, set_rng_state
from ._stepper import Stepper
from .checkpoint import Checkpoint, apply_checkpoint, check_fingerprint, read_checkpoint, save_checkpoint
from .data import epoch_permutation, epoch_seed
from .results import FitResult, StepInfo

__all__ = ["Run"]


class Run:
    """One call of fit: its settings, data and optimiser, and the state of the loop (``result`` and the
    position in the epochs), which is what a checkpoint stores."""

    def __init__(self, settings: Settings, inputs: Inputs, stepper: Stepper) -> None:
        self.settings, self.inputs, self.stepper = settings, inputs, stepper
        self.calls = settings.calls  # bound to the training data by setup_params
        self.params: dict[str, torch.Tensor] = {}
        self.collapse: CollapseMonitor | None = None
        self.base_seed = 0
        self.result = FitResult()
        self.epoch, self.position, self.best_params, self.wait = 0, 0, None, 0

    @property
    def config(self) -> dict[str, Any]:
        """The settings a resumed run must share with its checkpoint (besides the seed)."""
        inputs = self.inputs
        return {
            "support": self.settings.calls.name,
            "batch_size": inputs.batch_size,
            "n": inputs.n,
            "drop_last": bool(self.settings.drop_last),
        }

    # ------------------------------------------------------------------------------------- set-up
    def open_checkpoint(self) -> Checkpoint | None:
        """Read and check the checkpoint to resume from and take its seed; without one, seed the run."""
        s = self.settings
        if s.resume and (s.resume is True or os.path.exists(os.fspath(s.checkpoint))):
            saved = read_checkpoint(s.checkpoint, map_location="cpu")
            self.base_seed = int(self._resumable(saved)["seed"])
            return saved
        if s.seed is not None:
            pyro.set_rng_seed(s.seed)
        self.base_seed = s.seed if s.seed is not None else int(torch.randint(0, 2**62, ()).item())
        return None

    def _resumable(self, saved: Checkpoint) -> dict:
        """The loop state of ``saved``; raises unless it was written by fit with this run's settings."""
        state = saved.extra.get("fit") if isinstance(saved.extra, dict) else None
        if not isinstance(state, dict):
            raise ValueError(
                f"checkpoint '{saved.path}' was not written by pyro_rpm.fit (no loop state); use load_checkpoint"
            )
        changed = [f"{k}={v!r} (checkpoint: {state.get(k)!r})" for k, v in self.config.items() if state.get(k) != v]
        seed = self.settings.seed
        if seed is not None and seed != state.get("seed"):
            changed.append(f"seed={seed!r} (checkpoint: {state.get('seed')!r})")
        if changed:
            raise ValueError(f"cannot resume from '{saved.path}': the run's settings changed: {', '.join(changed)}")
        kind = saved.payload["optim"]["kind"] if saved.payload["optim"] else None
        if kind != self.stepper.kind:
            raise ValueError(
                f"cannot resume from '{saved.path}': it holds a {kind!r} optimiser state, this run uses "
                f"a {self.stepper.kind!r} optimiser"
            )
        return state

    def setup_params(self, saved: Checkpoint | None) -> None:
        """Bind the calls to the data, probe the parameters a step touches, check ``saved`` against them,
        register them and set up the optimiser."""
        s, inputs = self.settings, self.inputs
        self.calls = s.calls.bind(inputs.train, s.device, inputs.batch_size, s.drop_last)
        tensors, constraints = probe_params(s.model, s.guide, s.elbo, *self.calls.probe())
        if saved is not None:
            check_fingerprint(saved, {n: list(t.shape) for n, t in tensors.items()})
        self.params = register_params(tensors, constraints)
        self.stepper.setup(self.params)
        if self.stepper.plateau and inputs.val is None:
            raise ValueError("a ReduceLROnPlateau scheduler is stepped with the validation loss: pass validation=")

    def restore(self, saved: Checkpoint) -> None:
        """Continue from ``saved``: parameters, optimiser, random streams, position and history."""
        apply_checkpoint(saved, optim=self.stepper.optim, scheduler=self.stepper.scheduler)
        state, result = saved.extra["fit"], self.result
        self.epoch, self.position, self.wait = int(state["epoch"]), int(state["position"]), int(state["wait"])
        result.losses, result.lrs = state["losses"].tolist(), state["lrs"].tolist()
        result.val_steps, result.val_losses = state["val_steps"].tolist(), state["val_losses"].tolist()
        result.epoch_ends = state["epoch_ends"].tolist()
        result.stop_reason = "early_stopping" if state["stop_reason"] == "early_stopping" else "steps"
        result.best_step, result.best_val_loss = state["best_step"], state["best_val_loss"]
        self.best_params = state["best_params"]
        result.step, result.epoch, result.resumed_from = saved.step, self.epoch, saved.step

    # ---------------------------------------------------------------------------------------- loop
    def train(self) -> None:
        """Run epochs of minibatch steps until the run's steps are done or something stops it."""
        from tqdm.auto import tqdm

        total, result = self.inputs.total, self.result
        bar = tqdm(
            total=total,
            initial=min(result.step, total),
            desc="fit",
            unit="step",
            disable=not self.settings.progress,
            mininterval=0.5,
            dynamic_ncols=True,
        )
        stop = result.step >= total or result.stop_reason == "early_stopping"
        try:
            while not stop:
                order = epoch_permutation(self.base_seed, self.epoch, self.inputs.n)
                loader_seed = epoch_seed(self.base_seed + 1, self.epoch)
                for idx, args, kwargs in self.calls.epoch(order, self.position, loader_seed):
                    stop = self._step(idx, args, kwargs)
                    self._show(bar, stop)
                    if stop:
                        break
        finally:
            bar.close()

    def _step(self, idx: torch.Tensor, args: tuple, kwargs: dict) -> bool:
        """One optimisation step and its bookkeeping (scheduler, validation, callbacks, checkpoint);
        returns whether the run stops."""
        result, stepper = self.result, self.stepper
        loss = self.calls.per_datum(stepper.step(args, kwargs), idx)
        result.step += 1
        self._maybe_check_collapse(args, kwargs)
        self.position += 1
        result.losses.append(loss)
        result.lrs.append(stepper.lr())
        epoch_end = self.position == self.inputs.per_epoch
        if epoch_end:
            result.epoch_ends.append(result.step)
        if stepper.has_scheduler and not stepper.plateau and (self.settings.scheduler_interval == "step" or epoch_end):
            stepper.scheduler_step()
        val_loss, stop = self._maybe_validate(epoch_end)
        if epoch_end:
            self.epoch, self.position = self.epoch + 1, 0
            result.epoch = self.epoch
        info = StepInfo(result.step, self.epoch - int(epoch_end), loss, result.lrs[-1], epoch_end, val_loss, result)
        if any([cb(info) is True for cb in self.settings.callbacks]) and not stop:
            result.stop_reason, stop = "callback", True
        if result.step >= self.inputs.total:
            stop = True
        if stop and result.stopped_early and self.best_params is not None:
            self._restore_best()
        self._maybe_checkpoint(stop)
        return stop

    def _maybe_check_collapse(self, args: tuple, kwargs: dict) -> None:
        """Every ``collapse_check`` steps, warn once if the factors stopped depending on the data."""
        every = self.settings.collapse_check
        if every is None or self.result.step % every != 0:
            return
        if self.collapse is None:
            self.collapse = CollapseMonitor(self.settings.model, self.settings.guide, every=every)
        streams = rng_state()
        try:
            self.collapse(self.result.step, *args, **kwargs)
        finally:
            set_rng_state(streams)

    def _maybe_validate(self, epoch_end: bool) -> tuple[float | None, bool]:
        """Validate when due (every ``validate_every`` steps, else at each epoch end) and track the best
        loss; returns the validation loss (``None`` when not due) and whether early stopping stops."""
        every, result = self.settings.validate_every, self.result
        if self.inputs.val is None or not (result.step % every == 0 if every else epoch_end):
            return None, False
        val_loss = self._validate()
        result.val_steps.append(result.step)
        result.val_losses.append(val_loss)
        if self.stepper.plateau:
            self.stepper.scheduler_step(val_loss)
        return val_loss, self._track_best(val_loss)

    def _validate(self) -> float:
        """The validation loss per datum, without gradients, on a copy of the random streams."""
        s, streams = self.settings, rng_state()
        try:
            with torch.no_grad():
                return self.calls.validation_loss(s.validation_elbo, s.model, s.guide, self.inputs.val)
        finally:
            set_rng_state(streams)

    def _track_best(self, val_loss: float) -> bool:
        """Record an improvement (and the parameters to restore) or count a miss; returns whether the
        patience of early stopping is spent."""
        stopping, result = self.settings.early_stopping, self.result
        if result.best_val_loss is None or val_loss < result.best_val_loss - (stopping.min_delta if stopping else 0.0):
            result.best_step, result.best_val_loss, self.wait = result.step, val_loss, 0
            if stopping is not None and stopping.restore_best:
                self.best_params = {n: p.detach().clone() for n, p in self.params.items()}
            return False
        self.wait += 1
        if stopping is not None and self.wait >= stopping.patience:
            result.stop_reason = "early_stopping"
            return True
        return False

    def _restore_best(self) -> None:
        """Copy the parameters of the best validation back (an early-stopped run)."""
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.best_params[n])

    def _maybe_checkpoint(self, stop: bool) -> None:
        """Write the checkpoint at the end of the run and every ``checkpoint_every`` steps."""
        s, step = self.settings, self.result.step
        if s.checkpoint is not None and (stop or (s.checkpoint_every and step % s.checkpoint_every == 0)):
            self._save()

    def _save(self) -> None:
        """Write the checkpoint: parameters, optimiser, random streams and the loop state under ``"fit"``."""
        result = self.result
        state = {
            **self.config,
            "seed": self.base_seed,
            "epoch": self.epoch,
            "position": self.position,
            "wait": self.wait,
            "losses": torch.tensor(result.losses, dtype=torch.float64),
            "lrs": torch.tensor(result.lrs, dtype=torch.float64),
            "val_steps": torch.tensor(result.val_steps, dtype=torch.int64),
            "val_losses": torch.tensor(result.val_losses, dtype=torch.float64),
            "epoch_ends": torch.tensor(result.epoch_ends, dtype=torch.int64),
            "stop_reason": result.stop_reason,
            "best_step": result.best_step,
            "best_val_loss": result.best_val_loss,
            "best_params": self.best_params,
        }
        save_checkpoint(
            self.settings.checkpoint,
            step=result.step,
            optim=self.stepper.optim,
            scheduler=self.stepper.scheduler,
            extra={"fit": state},
            names=list(self.params),
        )

    def _show(self, bar: Any, stop: bool) -> None:
        """Advance the progress bar; every 25 steps and at the end, show the running losses."""
        bar.update(1)
        result = self.result
        if result.step % 25 == 0 or stop:
            tail = result.losses[-50:]
            postfix = {"loss": f"{sum(tail) / len(tail):.4f}"}
            if result.val_losses:
                postfix["val"] = f"{result.val_losses[-1]:.4f}"
            bar.set_postfix(postfix, refresh=False)

    def finish(self, start_time: float) -> FitResult:
        """The result, with the wall time of this call since ``start_time``."""
        self.result.seconds = time.perf_counter() - start_time
        return self.result
