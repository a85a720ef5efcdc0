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
random stream as the eager step does).

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

**What cannot be recorded.** A model whose Python control flow reads tensor values (``if x.sum() >
0``, ``.item()``, a data-dependent number of sites), a step that writes into tensors that outlive it
(an in-place memory-bank update, a running statistic) or reads parameters that are not in Pyro's
parameter store: recording stops, a :class:`CompileFallbackWarning` says once why, and that structure
is computed by the eager :class:`~pyro_rpm.RPM_ELBO` path from then on. Tensors that the model reads
from outside its arguments and the parameter store (closed-over data, a fixed support bank) are
recorded as constants: replace them by arguments if they change between steps, or pass
``check_every`` while developing.

**Backends.** ``backend="fx"`` (default) replays the recorded graph as generated Python code;
``backend="inductor"`` compiles it with :func:`torch.compile` (fused kernels; needs a C++ compiler on
the CPU, else a warning and ``"fx"``). The recorded graph holds no Pyro code, so :func:`torch.compile`
sees no graph break in it.

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
from .._validation import check_int, graph_capture
from .elbo import RPM_ELBO

__all__ = ["BACKENDS", "CompileFallbackWarning", "JitRPM_ELBO", "as_compiled"]

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


def _mutated_persistent_tensors(gm: torch.fx.GraphModule) -> list[str]:
    """Names of the graph inputs and constants that an in-place operation of the graph writes into."""

    def base(node: Any) -> Any:
        while isinstance(node, torch.fx.Node) and node.op == "call_function":
            schema = getattr(node.target, "_schema", None)
            if schema is None or not schema.arguments or schema.arguments[0].alias_info is None or not node.args:
                return node
            node = node.args[0]  # a view (or an in-place result) of its first argument
        return node

    written = []
    for node in gm.graph.nodes:
        schema = getattr(node.target, "_schema", None) if node.op == "call_function" else None
        if schema is None or not schema.is_mutable:
            continue
        for argument, value in zip(schema.arguments, node.args):
            if argument.alias_info is not None and argument.alias_info.is_write:
                root = base(value)
                if isinstance(root, torch.fx.Node) and root.op in ("placeholder", "get_attr"):
                    written.append(str(root.target))
    return written


class _Graph:
    """One recorded structure: the replayed function and the parameters it reads."""

    __slots__ = ("model", "guide", "fn", "names", "params", "constrained", "replays")

    def __init__(self, model, guide, fn, names, params, constrained) -> None:
        self.model, self.guide, self.fn = model, guide, fn
        self.names: tuple[str, ...] = names
        self.params: list[torch.Tensor] = params
        self.constrained: tuple[bool, ...] = constrained
        self.replays = 0

    def current(self, store) -> bool:
        """Whether the parameter store still holds the tensors the graph was recorded with."""
        held = store._params
        return all(held.get(name) is p for name, p in zip(self.names, self.params))

    def run(self, tensors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss in float64 without gradient, differentiable loss)``: the second one's backward pass
        gives the gradients of the eager step (autograd runs over the replayed operations)."""
        return self.fn(self.params, tensors)


_IDENTITY_SCALAR = {
    "aten.add.Tensor": 0,
    "aten.sub.Tensor": 0,
    "aten.mul.Tensor": 1,
    "aten.div.Tensor": 1,
}
#: operations whose output depends on their tensor inputs' shapes, dtypes and devices only
_METADATA_ONLY = {
    "aten.new_zeros.default",
    "aten.new_ones.default",
    "aten.new_full.default",
    "aten.zeros_like.default",
    "aten.ones_like.default",
    "aten.full_like.default",
}


def _val(node: Any) -> Any:
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


def _same_meta(a: Any, b: Any) -> bool:
    va, vb = _val(a), _val(b)
    return (
        isinstance(va, torch.Tensor)
        and isinstance(vb, torch.Tensor)
        and va.shape == vb.shape
        and va.stride() == vb.stride()
        and va.dtype == vb.dtype
        and va.device == vb.device
        and va.requires_grad == vb.requires_grad
    )


def _fold_constants(gm: torch.fx.GraphModule) -> None:
    """Evaluate once the operations that depend on no input, parameter or random draw (fixed per structure)."""
    values: dict[torch.fx.Node, Any] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        schema = node.target._schema
        if schema.is_mutable or torch.Tag.nondeterministic_seeded in node.target.tags:
            continue
        name = str(node.target)
        inputs = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, torch.fx.Node)]
        nested = [
            a for a in (*node.args, *node.kwargs.values()) if isinstance(a, (list, tuple)) and any(isinstance(x, torch.fx.Node) for x in a)
        ]
        if nested:
            continue
        if name == "aten.lift_fresh_copy.default" and inputs and inputs[0].op == "get_attr":
            pass  # a literal tensor made inside the step
        elif name in _METADATA_ONLY:
            pass
        elif not all(a in values for a in inputs):
            continue

        def load(a: Any) -> Any:
            if isinstance(a, torch.fx.Node):
                if a in values:
                    return values[a]
                if a.op == "get_attr":
                    return getattr(gm, a.target)
                return _val(a)  # metadata-only use
            return a

        if name in _METADATA_ONLY:
            fake = _val(node)
            if not isinstance(fake, torch.Tensor):
                continue
            args = [load(a) if not isinstance(a, torch.fx.Node) or a in values else _like(a) for a in node.args]
            kwargs = {k: load(v) for k, v in node.kwargs.items()}
        else:
            args = [load(a) for a in node.args]
            kwargs = {k: load(v) for k, v in node.kwargs.items()}
        try:
            with torch.no_grad():
                result = node.target(*args, **kwargs)
        except Exception:
            continue
        if isinstance(result, torch.Tensor):
            values[node] = result
    # replace the folded nodes that unfolded nodes read by constants
    count = 0
    for node, value in values.items():
        users = [u for u in node.users if u not in values]
        if not users:
            continue
        attr = f"_rpm_folded_{count}"
        count += 1
        gm.register_buffer(attr, value, persistent=False)
        with gm.graph.inserting_before(node):
            const = gm.graph.get_attr(attr)
        const.meta["val"] = node.meta.get("val")
        for user in users:
            user.replace_input_with(node, const)


def _like(node: torch.fx.Node) -> torch.Tensor:
    fake = _val(node)
    return torch.empty(fake.shape, dtype=fake.dtype, device=fake.device)


def _peephole(gm: torch.fx.GraphModule) -> bool:
    """Drop operations that return their input unchanged (``t(t(x))``, ``x + 0``, an expand to its own shape)."""
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        name = str(node.target)
        replacement = None
        if name == "aten.t.default":
            inner = node.args[0]
            if isinstance(inner, torch.fx.Node) and str(inner.target) == "aten.t.default":
                replacement = inner.args[0]
        elif name in ("aten.expand.default", "aten.view.default", "aten._to_copy.default", "aten.clone.default"):
            if name == "aten._to_copy.default" and set(node.kwargs) - {"dtype"}:
                continue
            if _same_meta(node, node.args[0]):
                replacement = node.args[0]
        elif name in _IDENTITY_SCALAR and len(node.args) == 2 and not node.kwargs:
            a, b = node.args
            if not isinstance(b, torch.fx.Node) and b == _IDENTITY_SCALAR[name] and _same_meta(node, a):
                replacement = a
        elif name == "aten.rsub.Scalar" and len(node.args) == 2 and node.args[1] == 0 and not node.kwargs:
            with gm.graph.inserting_before(node):
                neg = gm.graph.call_function(torch.ops.aten.neg.default, (node.args[0],))
            neg.meta["val"] = node.meta.get("val")
            replacement = neg
        if replacement is not None:
            node.replace_all_uses_with(replacement)
            gm.graph.erase_node(node)
            changed = True
    return changed


def _simplify(gm: torch.fx.GraphModule) -> None:
    """Dead-code elimination, constant folding and identity removal on a recorded step (nothing is
    simplified in a graph with in-place operations)."""
    gm.graph.eliminate_dead_code()
    mutable = any(
        node.op == "call_function" and getattr(getattr(node.target, "_schema", None), "is_mutable", False)
        for node in gm.graph.nodes
    )
    if not mutable:
        _fold_constants(gm)
        gm.graph.eliminate_dead_code()
        while _peephole(gm):
            pass
        gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()


class JitRPM_ELBO(RPM_ELBO):
    r""":class:`~pyro_rpm.RPM_ELBO` whose step is recorded once per structure and replayed (see the module docstring).

    Usable wherever :class:`~pyro_rpm.RPM_ELBO` is: :class:`pyro.infer.SVI` (``loss_and_grads``),
    ``differentiable_loss`` with a torch optimiser, and :func:`pyro_rpm.fit` (``compile=True``).

    :param int num_particles: as :class:`~pyro_rpm.RPM_ELBO`.
    :param max_plate_nesting: as :class:`~pyro_rpm.RPM_ELBO`.
    :param bool vectorize_particles: as :class:`~pyro_rpm.RPM_ELBO`.
    :param str estimator: as :class:`~pyro_rpm.RPM_ELBO`.
    :param str reference: as :class:`~pyro_rpm.RPM_ELBO`.
    :param str backend: ``"fx"`` (replay the recorded graph) or ``"inductor"`` (compile it with
        :func:`torch.compile`).
    :param check_every: debug mode: every this many replays, also compute the step eagerly under the
        same random state and compare (``None``: never).
    :param float check_rtol: relative tolerance of that comparison.
    :param int max_graphs: structures kept at once (least recently used dropped first).

    :attr:`stats` counts the ``eager``, ``traced`` and ``replayed`` steps and the ``fallbacks``;
    :attr:`last_error` holds the exception that stopped the last failed recording.
    """

    def __init__(
        self,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        *,
        estimator: str = "mc",
        reference: str = "flat",
        backend: str = "fx",
        check_every: int | None = None,
        check_rtol: float = 1e-4,
        max_graphs: int = 8,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            num_particles, max_plate_nesting, vectorize_particles, estimator=estimator, reference=reference, **kwargs
        )
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if check_every is not None:
            check_int(check_every, "check_every", expected="a positive int or None")
        check_int(max_graphs, "max_graphs", expected="a positive int")
        if not (isinstance(check_rtol, (int, float)) and check_rtol > 0):
            raise ValueError(f"check_rtol must be a positive float, got {check_rtol!r}")
        self.backend = backend
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
        if isinstance(entry, _Graph):
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
                    surrogate_elbo = surrogate_elbo + (log_r.sum_to(site["cond_indep_stack"]) * score_function_term).sum()
            loss = loss - elbo / self.num_particles
            surrogate = surrogate - surrogate_elbo / self.num_particles
        return torch.as_tensor(loss), torch.as_tensor(surrogate)

    def _record(self, model, guide, args, kwargs, tensors, entry) -> _Graph | None:
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
        try:
            with torch.random.fork_rng(devices=devices), graph_capture(), pyro.validation_enabled(False):
                with param_store_rollback():
                    gm = make_fx(step, tracing_mode="real")(params, tensors)
        except _Unrecordable as reason:
            self._warn_once(str(reason))
            return None
        except Exception as error:  # data-dependent control flow and anything else make_fx cannot follow
            self.last_error = error
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            self._warn_once(f"recording failed: {type(error).__name__}: {first[:300]}")
            return None
        if len(store) != len(set(store.keys())) or set(touched) != set(names):
            self._warn_once(
                f"the recorded step reads the parameters {sorted(set(touched) - set(names))} that the eager step did not"
            )
            return None
        written = _mutated_persistent_tensors(gm)
        if written:
            self._warn_once(f"the step writes in place into tensors that outlive it ({', '.join(sorted(set(written)))})")
            return None
        _simplify(gm)
        fn: Callable = gm
        if self.backend == "inductor":
            fn = self._inductor(gm)
        constrained = tuple(store._constraints[name] is not constraints.real for name in names)
        self.stats["traced"] += 1
        return _Graph(model, guide, fn, tuple(names), params, constrained)

    def _inductor(self, gm: torch.fx.GraphModule) -> Callable:
        if not any(shutil.which(cxx) for cxx in _CXX) and not torch.cuda.is_available():
            warnings.warn(
                "JitRPM_ELBO(backend='inductor') needs a C++ compiler on the CPU (none found); replaying the fx graph",
                CompileFallbackWarning,
                stacklevel=5,
            )
            return gm
        return torch.compile(gm, backend="inductor", dynamic=False, options={"fallback_random": True})

    # ------------------------------------------------------------------ replay
    def _replay(self, graph: _Graph, model, guide, args, kwargs, tensors, key) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, differentiable loss)`` of one step: the replayed graph, or in debug mode every
        ``check_every``-th step the eager step after comparing it with the replay."""
        graph.replays += 1
        if self.check_every is not None and graph.replays % self.check_every == 0:
            return self._checked_replay(graph, model, guide, args, kwargs, tensors, key)
        self.stats["replayed"] += 1
        return graph.run(tensors)

    def _checked_replay(self, graph: _Graph, model, guide, args, kwargs, tensors, key):
        """The eager step, compared with the replay under the same random state (debug mode)."""
        devices = sorted({t.device.index or 0 for t in graph.params if t.device.type == "cuda"})
        with torch.random.fork_rng(devices=devices):
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

    def _announce(self, graph: _Graph) -> None:
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


def as_compiled(elbo: Any, compile: bool | str = True) -> JitRPM_ELBO:
    """The :class:`JitRPM_ELBO` with the settings of ``elbo`` (``None``: the defaults), for ``fit(compile=...)``.

    :param elbo: ``None``, an :class:`~pyro_rpm.RPM_ELBO` or a :class:`JitRPM_ELBO` (returned as it is).
    :param compile: ``True`` (backend ``"fx"``) or a backend name of :data:`BACKENDS`.
    :raises ValueError: for another ELBO (only RPM_ELBO steps can be recorded) or backend.
    """
    backend = "fx" if compile is True else compile
    if backend not in BACKENDS:
        raise ValueError(f"compile must be True, False or one of {BACKENDS}, got {compile!r}")
    if isinstance(elbo, JitRPM_ELBO):
        return elbo
    if elbo is None:
        return JitRPM_ELBO(backend=backend)
    if type(elbo) is not RPM_ELBO:
        raise ValueError(
            f"compile= records RPM_ELBO steps; the elbo given is a {type(elbo).__name__} (pass compile=False, "
            "or an RPM_ELBO / JitRPM_ELBO)"
        )
    return JitRPM_ELBO(
        elbo.num_particles,
        elbo.max_plate_nesting,
        elbo.vectorize_particles,
        estimator=elbo.estimator,
        reference=elbo.reference,
        backend=backend,
        retain_graph=elbo.retain_graph,
        strict_enumeration_warning=elbo.strict_enumeration_warning,
        ignore_jit_warnings=elbo.ignore_jit_warnings,
        jit_options=elbo.jit_options,
    )
