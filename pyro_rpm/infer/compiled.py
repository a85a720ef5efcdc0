# SPDX-License-Identifier: Apache-2.0
r"""``JitRPM_ELBO``: the RPM ELBO step recorded once as a graph of tensor operations and replayed.

:class:`~pyro_rpm.RPM_ELBO` under :class:`pyro.infer.SVI` runs the guide and the model through Pyro's
handlers at every step: on a small network that Python work (about 1 to 2 ms) costs more than the
arithmetic. For a fixed *structure* (the same sites, plates, shapes, supports and factors at every
step) the arithmetic of a step is a pure function of the parameters and the inputs,

.. math::

    (\theta, x) \mapsto \big(-\widehat{\mathcal L}(\theta, x, \epsilon),\;
    \nabla_\theta(-\widehat{\mathcal L})\big),

with fresh noise :math:`\epsilon` drawn inside. ``JitRPM_ELBO`` records that function once with
:func:`torch.fx.experimental.proxy_tensor.make_fx` (the forward pass of model and guide with every RPM
rewrite of :class:`~pyro_rpm.RPM_ELBO`, and the backward pass) and from then on replays the recorded
operations: no Pyro handler, trace or Python model code runs, only the ATen operations of the step.

**What is recorded.** The loss is computed exactly as by :class:`~pyro_rpm.RPM_ELBO` (tied-guide
cancellations, empirical-marginal priors, the ``"mc"`` and ``"interior"`` estimators, Pyro's plate
scaling, masks and ``poutine.scale``, score-function terms of non-reparameterised guide sites,
several particles); it is the same sequence of tensor operations, so replays give the eager loss
and gradients under the same seed (the random draws are recorded as operations and consume the
random stream as the eager step does). The recorded graph is simplified once (dead code, constants,
identities, common subexpressions such as a parameter transformed at every step of a
:func:`pyro.markov` loop): the loss is the eager value, the gradients equal to rounding, as autograd
adds a shared intermediate's contributions in another order (float64 1e-12, float32 1e-5 relative).

**When it records, and what it checks.** Every call computes a *structural key*: the model and
guide, the shapes, dtypes, devices and ``requires_grad`` of the tensor arguments, the values of the
other arguments, the ELBO's settings, Pyro's validation flag, grad mode and autocast state, and whether
a guide has switched its plan off. The first call with a new key runs eagerly (it creates and
registers the parameters, and runs every check of the eager path); the second records the graph;
later calls replay it while the key holds and the parameter store still holds the same tensors. A
new key (new shapes, other arguments) records again (up to ``max_graphs`` structures are kept). With
``check_every=K`` every K-th replay is also computed eagerly under the same random state and
compared: a graph that no longer matches the Python program (a structure that depends on something
outside the key) is dropped with a warning, and that step uses the eager result.

**State.** In-place writes into tensors that outlive the step (batch norm's running statistics, a
memory bank) are replayed into the same tensors as the eager step writes them (the recording's own
writes are undone). Tensors read from outside the arguments and the parameter store (closed-over
data, a support bank) are read by identity: pass a tensor that is *rebound* between steps as an argument.

**What cannot be recorded.** A model whose Python control flow reads tensor values (``if x.sum() >
0``, ``.item()``, a data-dependent number of sites), a step that writes into its arguments or its
parameters, or reads parameters that are not in Pyro's parameter store: recording stops, a
:class:`CompileFallbackWarning` says once why, and the structure runs eagerly from then on.

**Backends.** ``backend="fx"`` (default) replays the recorded graph as generated Python code;
``backend="inductor"`` compiles it with :func:`torch.compile` (fused kernels; needs a C++ compiler on the
CPU and shapes that do not depend on values, else a warning and ``"fx"``). The recorded graph holds no
Pyro code, so :func:`torch.compile` sees no graph break in it.

Example::

    >>> svi = pyro.infer.SVI(model, guide, FusedAdam({"lr": 1e-3}), JitRPM_ELBO())   # doctest: +SKIP
    >>> for step in range(1000):                                                      # doctest: +SKIP
    ...     svi.step(x1, x2)   # step 1 eager, step 2 records, then replays
"""

from __future__ import annotations

import math
import shutil
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.util import is_identically_zero, is_validation_enabled
from pyro.poutine.runtime import _PYRO_STACK
from pyro.poutine.trace_messenger import TraceMessenger
from torch.fx.experimental.proxy_tensor import make_fx

from .._pyro import param_store_rollback
from .._validation import check_choice, check_int, check_optional_int, graph_capture
from ._graph import Graph, PersistentWrites, custom_autograd_functions, mutated_persistent_tensors, simplify
from ._nodes import value_shaped
from .elbo import RPM_ELBO

__all__ = ["BACKENDS", "CompileFallbackWarning", "JitRPM_ELBO"]

#: The replay backends of :class:`JitRPM_ELBO`.
BACKENDS = ("fx", "inductor")
_SEEN = "seen"  # a key whose first (eager) step ran
_FALLBACK = "fallback"  # a key the graph cannot represent: always eager
_CXX = ("g++", "c++", "clang++")


class CompileFallbackWarning(UserWarning):
    """A structure :class:`JitRPM_ELBO` cannot record; its steps run on the eager RPM_ELBO path."""


def _tensor_spec(t: torch.Tensor) -> tuple:
    return (tuple(t.shape), t.dtype, t.device, t.requires_grad, t.layout)


def _autocast_state() -> tuple:
    return tuple(torch.is_autocast_enabled(d) for d in ("cpu", "cuda"))


class JitRPM_ELBO(RPM_ELBO):
    r""":class:`~pyro_rpm.RPM_ELBO` whose step is recorded once per structure and replayed (see the module docstring).

    Usable wherever :class:`~pyro_rpm.RPM_ELBO` is: :class:`pyro.infer.SVI` (``loss_and_grads``),
    ``differentiable_loss`` with a torch optimiser, and :func:`pyro_rpm.fit` (``compile=True``).

    :param args: the positional arguments of :class:`~pyro_rpm.RPM_ELBO` (``num_particles``,
        ``max_plate_nesting``, ``vectorize_particles``), passed on unchanged.
    :param kwargs: its keyword arguments (``estimator``, ``reference`` and those of
        :class:`pyro.infer.Trace_ELBO`), passed on unchanged.
    :param str backend: ``"fx"`` (replay the recorded graph) or ``"inductor"`` (compile it with
        :func:`torch.compile`).
    :param bool cuda_graphs: with ``backend="inductor"``, capture the compiled step of CUDA tensors in
        CUDA graphs (``triton.cudagraphs``, as ``mode="reduce-overhead"``); no effect on the CPU.
    :param check_every: debug mode: every this many replays, also compute the step eagerly under the
        same random state and compare (``None``: never).
    :param float check_rtol: relative tolerance of that comparison.
    :param int max_graphs: structures kept at once (least recently used dropped first).

    :attr:`stats` counts the ``eager``, ``traced`` and ``replayed`` steps and the ``fallbacks``;
    :attr:`last_error` holds the exception that stopped the last failed recording.
    """

    def __init__(
        self,
        *args: Any,
        backend: str = "fx",
        cuda_graphs: bool = False,
        check_every: int | None = None,
        check_rtol: float = 1e-4,
        max_graphs: int = 8,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        check_choice(backend, "backend", BACKENDS)
        if not isinstance(cuda_graphs, bool):
            raise TypeError(f"cuda_graphs must be a bool, got {type(cuda_graphs).__name__}")
        if cuda_graphs and backend != "inductor":
            raise ValueError("cuda_graphs=True needs backend='inductor' (CUDA graphs capture the compiled step)")
        check_optional_int(check_every, "check_every", expected="a positive int or None")
        check_int(max_graphs, "max_graphs", expected="a positive int")
        if not (isinstance(check_rtol, (int, float)) and check_rtol > 0):
            raise ValueError(f"check_rtol must be a positive float, got {check_rtol!r}")
        self.backend = backend
        self.cuda_graphs = cuda_graphs
        self.check_every = check_every
        self.check_rtol = float(check_rtol)
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[Hashable, Any] = OrderedDict()
        self._warned: set[str] = set()
        self.stats = {"eager": 0, "traced": 0, "replayed": 0, "fallbacks": 0}
        #: the exception that stopped the last failed recording (its traceback shows where), or ``None``
        self.last_error: BaseException | None = None

    # ------------------------------------------------------------------ structure
    def _key(self, model, guide, args: tuple, kwargs: dict) -> tuple[Hashable | None, list[torch.Tensor]]:
        """The structural key of a call and its tensor arguments (``None`` when the key cannot be formed)."""
        leaves, spec = torch.utils._pytree.tree_flatten((args, kwargs))
        tensors, statics = [], []
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor):
                tensors.append(leaf)
                statics.append(_tensor_spec(leaf))
            else:
                statics.append(("value", type(leaf), leaf))
        key = (
            id(model),
            id(guide),
            spec,
            tuple(statics),
            self.num_particles,
            self.vectorize_particles,
            self.max_plate_nesting,
            self.estimator,
            self.reference,
            is_validation_enabled(),
            torch.is_grad_enabled(),
            _autocast_state(),
            getattr(guide, "_plan_disabled", None),
        )
        try:
            hash(key)
        except TypeError:
            return None, tensors
        return key, tensors

    def _warn_once(self, reason: str) -> None:
        self.stats["fallbacks"] += 1
        if reason not in self._warned:
            self._warned.add(reason)
            warnings.warn(
                f"JitRPM_ELBO cannot record this step ({reason}); this structure runs on the eager RPM_ELBO path",
                CompileFallbackWarning,
                stacklevel=4,
            )

    def _graph_for(self, model, guide, args: tuple, kwargs: dict):
        """The graph to replay for this call, or ``(None, names)`` for an eager step (recording it when due)."""
        key, tensors = self._key(model, guide, args, kwargs)
        if key is None:
            self._warn_once("an argument that is neither a tensor nor hashable")
            return None, tensors, None
        entry = self._graphs.get(key)
        if isinstance(entry, Graph):
            if entry.model is model and entry.guide is guide and entry.current(pyro.get_param_store()):
                self._graphs.move_to_end(key)
                return entry, tensors, key
            entry = None  # the store was cleared or reloaded: an eager step re-registers, then record again
        if entry is None or entry == _FALLBACK:
            return None, tensors, key
        # the second call of this structure: record it
        graph = self._record(model, guide, args, kwargs, tensors, entry)
        self._graphs[key] = graph if graph is not None else _FALLBACK
        return graph, tensors, key

    def _after_eager(self, key, names: tuple[str, ...]) -> None:
        if key is None or self._graphs.get(key) == _FALLBACK:
            return
        self._graphs[key] = (_SEEN, names)
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)

    # ------------------------------------------------------------------ recording
    def _surrogate(self, model, guide, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, surrogate loss)`` as tensors, as :meth:`pyro.infer.Trace_ELBO.differentiable_loss` forms them
        (the loss summed in float64 site by site, as Pyro sums the sites' Python floats), reading no values."""
        loss: Any = 0.0
        surrogate: Any = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            elbo: Any = 0.0
            surrogate_elbo: Any = 0.0
            log_r = None
            for site in model_trace.nodes.values():
                if site["type"] == "sample":
                    elbo = elbo + site["log_prob_sum"].double()
                    surrogate_elbo = surrogate_elbo + site["log_prob_sum"]
            for site in guide_trace.nodes.values():
                if site["type"] != "sample":
                    continue
                _, score_function_term, entropy_term = site["score_parts"]
                elbo = elbo - site["log_prob_sum"].double()
                if not is_identically_zero(entropy_term):
                    surrogate_elbo = surrogate_elbo - entropy_term.sum()
                if not is_identically_zero(score_function_term):
                    if log_r is None:
                        log_r = _compute_log_r(model_trace, guide_trace)
                    surrogate_elbo = (
                        surrogate_elbo + (log_r.sum_to(site["cond_indep_stack"]) * score_function_term).sum()
                    )
            loss = loss - elbo / self.num_particles
            surrogate = surrogate - surrogate_elbo / self.num_particles
        return torch.as_tensor(loss), torch.as_tensor(surrogate)

    def _record(self, model, guide, args, kwargs, tensors, entry) -> Graph | None:
        store = pyro.get_param_store()
        names = entry[1]
        if any(name not in store._params for name in names):
            return None
        params = [store._params[name] for name in names]
        spec = torch.utils._pytree.tree_flatten((args, kwargs))[1]
        leaves = torch.utils._pytree.tree_flatten((args, kwargs))[0]
        slots = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
        touched: list[str] = []

        def step(params_: list[torch.Tensor], tensors_: list[torch.Tensor]):
            flat = list(leaves)
            for i, t in zip(slots, tensors_):
                flat[i] = t
            args_, kwargs_ = torch.utils._pytree.tree_unflatten(flat, spec)
            with poutine.trace(param_only=True) as capture:
                loss, surrogate = self._surrogate(model, guide, args_, kwargs_)
            touched.extend(capture.trace.param_nodes)
            if not surrogate.requires_grad:
                raise _Unrecordable("the loss depends on no parameter")
            # the value of the loss with the gradient of the surrogate, as Trace_ELBO.differentiable_loss
            value = loss.detach()
            return value, value.to(surrogate.dtype) + (surrogate - surrogate.detach())

        if any(t.requires_grad for t in tensors):
            self._warn_once("an argument requires grad; the graph differentiates the parameters only")
            return None
        devices = sorted({t.device.index or 0 for t in [*params, *tensors] if t.device.type == "cuda"})
        writes = PersistentWrites()  # the recording runs the step: its writes into persistent tensors are undone
        try:
            with torch.random.fork_rng(devices=devices), graph_capture(), pyro.validation_enabled(False):
                with param_store_rollback(), custom_autograd_functions() as functions, writes:
                    gm = make_fx(step, tracing_mode="real")(params, tensors)
        except _Unrecordable as reason:
            self._warn_once(str(reason))
            return None
        except Exception as error:  # data-dependent control flow and anything else make_fx cannot follow
            self.last_error = error
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            self._warn_once(f"recording failed: {type(error).__name__}: {first[:300]}")
            return None
        if functions:
            self._warn_once(f"it applies autograd functions whose backward is not recorded: {sorted(set(functions))}")
            return None
        if len(store) != len(set(store.keys())) or set(touched) != set(names):
            self._warn_once(
                f"the recorded step reads the parameters {sorted(set(touched) - set(names))} that the eager step did not"
            )
            return None
        state, written = writes.split(gm, mutated_persistent_tensors(gm))
        if written:
            self._warn_once(f"the step writes in place into its arguments or parameters ({', '.join(written)})")
            return None
        simplify(gm)
        fn: Callable = gm
        if self.backend == "inductor":
            fn = self._inductor(gm)
        constrained = tuple(store._constraints[name] is not constraints.real for name in names)
        self.stats["traced"] += 1
        return Graph(model, guide, fn, tuple(names), params, constrained, state)

    def _inductor(self, gm: torch.fx.GraphModule) -> Callable:
        reason = None if any(shutil.which(cxx) for cxx in _CXX) or torch.cuda.is_available() else "needs a C++ compiler"
        if any(value_shaped(node) for node in gm.graph.nodes):  # e.g. a float64 table's refinement (nonzero)
            reason = "cannot compile a step whose shapes depend on values"
        if reason is not None:
            warnings.warn(f"JitRPM_ELBO(backend='inductor') {reason}; replaying the fx graph", CompileFallbackWarning, 5)
            return gm
        options = {"fallback_random": True, "triton.cudagraphs": self.cuda_graphs}
        return torch.compile(gm, backend="inductor", dynamic=False, options=options)

    # ------------------------------------------------------------------ replay
    def _replay(self, graph: Graph, model, guide, args, kwargs, tensors, key) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, differentiable loss)`` of one step: the replayed graph, or in debug mode every
        ``check_every``-th step the eager step after comparing it with the replay."""
        graph.replays += 1
        if self.check_every is not None and graph.replays % self.check_every == 0:
            return self._checked_replay(graph, model, guide, args, kwargs, tensors, key)
        self.stats["replayed"] += 1
        return graph.run(tensors)

    def _checked_replay(self, graph: Graph, model, guide, args, kwargs, tensors, key):
        """The eager step, compared with the replay under the same random state (debug mode)."""
        devices = sorted({t.device.index or 0 for t in graph.params if t.device.type == "cuda"})
        with torch.random.fork_rng(devices=devices), graph.state_kept():  # the eager step writes the state
            value, loss = graph.run(tensors)
            grads = torch.autograd.grad(loss, graph.params, allow_unused=True)
        eager_value, surrogate = self._surrogate(model, guide, args, kwargs)
        eager_value = eager_value.detach()
        eager_grads = torch.autograd.grad(surrogate, graph.params, allow_unused=True, retain_graph=True)
        self.stats["eager"] += 1
        same = math.isclose(float(value), float(eager_value), rel_tol=self.check_rtol, abs_tol=self.check_rtol)
        for g, e in zip(grads, eager_grads):
            if (g is None) != (e is None):
                same = False
            elif g is not None:
                scale = float(e.abs().max()) if e.numel() else 0.0
                same = same and bool(torch.allclose(g, e, rtol=self.check_rtol, atol=self.check_rtol * max(scale, 1.0)))
        if not same:
            self._graphs.pop(key, None)
            warnings.warn(
                "JitRPM_ELBO(check_every=...): the recorded graph no longer matches the model's eager step "
                "(its structure depends on something outside the structural key); recording it again",
                CompileFallbackWarning,
                stacklevel=4,
            )
        return eager_value, eager_value.to(surrogate.dtype) + (surrogate - surrogate.detach())

    def _announce(self, graph: Graph) -> None:
        """Tell the handlers on Pyro's stack (e.g. :class:`pyro.infer.SVI`'s parameter capture) which
        parameters the step used, as the ``param`` statements of the eager step would."""
        if not _PYRO_STACK:
            return
        store = pyro.get_param_store()
        if len(_PYRO_STACK) == 1 and type(_PYRO_STACK[0]) is TraceMessenger and _PYRO_STACK[0].param_only:
            trace = _PYRO_STACK[0].trace  # SVI's capture: record the sites directly
            for name, p, constrained in zip(graph.names, graph.params, graph.constrained):
                if constrained:
                    with torch.no_grad():
                        value = store[name]
                else:
                    value = p
                    value.unconstrained = weakref.ref(p)
                trace.add_node(name, type="param", name=name, value=value, args=(), kwargs={}, infer={})
            return
        for name in graph.names:
            pyro.param(name)

    # ------------------------------------------------------------------ entry points
    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """As :meth:`RPM_ELBO.loss_and_grads`: accumulate the gradients into ``.grad``; return the loss (a float)."""
        graph, tensors, key = self._graph_for(model, guide, args, kwargs)
        if graph is None:
            return self._eager(super().loss_and_grads, key, model, guide, args, kwargs)
        value, loss = self._replay(graph, model, guide, args, kwargs, tensors, key)
        loss.backward(retain_graph=self.retain_graph)
        self._announce(graph)
        return float(value)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """As :meth:`RPM_ELBO.differentiable_loss` (a replayed step's ``backward()`` gives the eager gradients)."""
        graph, tensors, key = self._graph_for(model, guide, args, kwargs)
        if graph is None:
            return self._eager(super().differentiable_loss, key, model, guide, args, kwargs)
        loss = self._replay(graph, model, guide, args, kwargs, tensors, key)[1]
        self._announce(graph)
        return loss

    def _eager(self, method, key, model, guide, args, kwargs):
        self.stats["eager"] += 1
        with poutine.trace(param_only=True) as capture:
            result = method(model, guide, *args, **kwargs)
        self._after_eager(key, tuple(capture.trace.param_nodes))
        return result


class _Unrecordable(Exception):
    """A reason, found while recording, why the step cannot be a graph."""
