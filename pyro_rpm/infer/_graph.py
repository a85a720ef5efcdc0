# SPDX-License-Identifier: Apache-2.0
"""The recorded graph of :class:`~pyro_rpm.JitRPM_ELBO`: one structure's replayable step, the check for
in-place writes into tensors that outlive a step, the undoing of a recording's own writes into
them (running statistics), and the simplification passes (dead code, constant folding, identities)
run once after recording."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ._batching import batch_repeated_operations
from ._nodes import hashable as _hashable
from ._nodes import same_meta as _same_meta
from ._nodes import val as _val
from ._nodes import value_shaped

__all__ = ["Graph", "PersistentWrites", "custom_autograd_functions", "mutated_persistent_tensors", "simplify"]

#: Operations that write into arguments their schema does not mark as written: batch norm updates its
#: running statistics (arguments 3 and 4) in place when ``training`` (argument 5) is true.
_HIDDEN_WRITES = {
    "aten.native_batch_norm.default": (3, 4),
    "aten._native_batch_norm_legit.default": (3, 4),
    "aten.cudnn_batch_norm.default": (3, 4),
    "aten.miopen_batch_norm.default": (3, 4),
}


def _written_indices(op: Any, args: tuple | list) -> list[int]:
    """Positions of the arguments that the operation ``op`` writes into (its schema's, and the hidden
    ones of :data:`_HIDDEN_WRITES`)."""
    hidden = _HIDDEN_WRITES.get(str(op))
    if hidden is not None:
        return list(hidden) if len(args) > 5 and args[5] is True else []
    schema = getattr(op, "_schema", None)
    if schema is None or not schema.is_mutable:
        return []
    return [i for i, a in enumerate(schema.arguments) if a.alias_info is not None and a.alias_info.is_write]


def _written_arguments(node: torch.fx.Node) -> list[Any]:
    """The argument nodes that the graph node ``node`` writes into."""
    if node.op != "call_function":
        return []
    return [
        node.args[i]
        for i in _written_indices(node.target, node.args)
        if i < len(node.args) and node.args[i] is not None
    ]


class PersistentWrites(TorchDispatchMode):
    """Save the tensors that a recording writes into and did not create; put them back after it.

    :func:`~torch.fx.experimental.proxy_tensor.make_fx` runs the step on the real tensors, so a write
    into a tensor that outlives the step (a batch norm layer's running statistics, a memory bank)
    would happen in the recording *and* again in the replay of that step. Entered around the
    recording, this mode sees every operation: before the first write into a tensor that no
    operation of the recording produced (or a view of one) it saves a copy; on exit it writes the
    copies back, so the recording leaves no trace. :meth:`split` tells which tensors were written.
    """

    def __init__(self) -> None:
        super().__init__()
        self.saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._made: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        for i in _written_indices(func, args):
            value = args[i] if i < len(args) else None
            if not isinstance(value, torch.Tensor):
                continue
            root = value._base if value._base is not None else value
            if id(root) not in self._made and id(root) not in self.saved:
                self.saved[id(root)] = (root, root.detach().clone())
        out = func(*args, **kwargs)
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._made.add(id(t))
        return out

    def __exit__(self, *exc: Any) -> Any:
        result = super().__exit__(*exc)
        with torch.no_grad():
            for tensor, value in self.saved.values():
                tensor.copy_(value)
        return result

    def split(self, gm: torch.fx.GraphModule, names: list[str]) -> tuple[list[torch.Tensor], list[str]]:
        """``(state, others)``: of the graph's written inputs and constants ``names``, the tensors this
        recording saw written (replayable state), and the names of the rest (arguments, parameters)."""
        state, others = [], []
        for name in sorted(set(names)):
            t = getattr(gm, name, None)
            if isinstance(t, torch.Tensor) and self.saved.get(id(t), (None,))[0] is t:
                state.append(t)
            else:
                others.append(name)
        return state, others


@contextlib.contextmanager
def custom_autograd_functions() -> Iterator[list[str]]:
    """Collect the names of the custom :class:`torch.autograd.Function` classes applied inside.

    A recording with :func:`~torch.fx.experimental.proxy_tensor.make_fx` keeps their forward
    operations but not their own backward, so a replay under autograd would differentiate the forward
    operations instead (wrong where the backward is not their derivative: recomputation, chunked
    accumulation, a gradient through a detached value). The step that uses one is not replayed."""
    used: list[str] = []
    original = torch.autograd.Function.__dict__["apply"]

    def apply(cls, *args: Any, **kwargs: Any) -> Any:
        used.append(cls.__qualname__)
        return original.__func__(cls, *args, **kwargs)

    torch.autograd.Function.apply = classmethod(apply)  # type: ignore[method-assign]
    try:
        yield used
    finally:
        torch.autograd.Function.apply = original  # type: ignore[method-assign]


def mutated_persistent_tensors(gm: torch.fx.GraphModule) -> list[str]:
    """Names of the graph inputs and constants that an in-place operation of the graph writes into
    (including batch norm's running statistics, which its schema does not mark)."""

    def base(node: Any) -> Any:
        while isinstance(node, torch.fx.Node) and node.op == "call_function":
            schema = getattr(node.target, "_schema", None)
            if schema is None or not schema.arguments or schema.arguments[0].alias_info is None or not node.args:
                return node
            node = node.args[0]  # a view (or an in-place result) of its first argument
        return node

    written = []
    for node in gm.graph.nodes:
        for value in _written_arguments(node):
            root = base(value)
            if isinstance(root, torch.fx.Node) and root.op in ("placeholder", "get_attr"):
                written.append(str(root.target))
    return written


class Graph:
    """One recorded structure: the replayed function and the parameters it reads."""

    __slots__ = ("model", "guide", "fn", "names", "params", "constrained", "replays", "state")

    def __init__(self, model, guide, fn, names, params, constrained, state=()) -> None:
        self.model, self.guide, self.fn = model, guide, fn
        #: module buffers the step writes into (running statistics), as the eager step does
        self.state: tuple[torch.Tensor, ...] = tuple(state)
        self.names: tuple[str, ...] = names
        self.params: list[torch.Tensor] = params
        self.constrained: tuple[bool, ...] = constrained
        self.replays = 0

    @contextlib.contextmanager
    def state_kept(self) -> Iterator[None]:
        """Put the tensors the step writes into (:attr:`state`) back as they were after the block."""
        saved = [t.detach().clone() for t in self.state]
        try:
            yield
        finally:
            with torch.no_grad():
                for t, value in zip(self.state, saved):
                    t.copy_(value)

    def current(self, store) -> bool:
        """Whether the parameter store still holds the tensors the graph was recorded with."""
        held = store._params
        return all(held.get(name) is p for name, p in zip(self.names, self.params))

    def run(self, tensors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss in float64 without gradient, differentiable loss)``: the second one's backward pass
        gives the gradients of the eager step (autograd runs over the replayed operations)."""
        return self.fn(self.params, tensors)


_IDENTITY_SCALAR = {"aten.add.Tensor": 0, "aten.sub.Tensor": 0, "aten.mul.Tensor": 1, "aten.div.Tensor": 1}
#: operations whose output depends on their tensor inputs' shapes, dtypes and devices only
_METADATA_ONLY = {
    "aten.new_zeros.default",
    "aten.new_ones.default",
    "aten.new_full.default",
    "aten.zeros_like.default",
    "aten.ones_like.default",
    "aten.full_like.default",
}


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
            a
            for a in (*node.args, *node.kwargs.values())
            if isinstance(a, (list, tuple)) and any(isinstance(x, torch.fx.Node) for x in a)
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


def _constant_term(gm: torch.fx.GraphModule, node: Any) -> tuple[torch.fx.Node, torch.Tensor] | None:
    """``(x, c)`` when ``node`` computes ``x + c`` for a constant ``c`` (a number or a folded 0-d tensor)."""
    sign = {"aten.add.Tensor": 1.0, "aten.sub.Tensor": -1.0}.get(str(getattr(node, "target", "")))
    if sign is None or node.kwargs or len(node.args) != 2:
        return None

    def constant(a: Any) -> torch.Tensor | None:
        if isinstance(a, (int, float)) and not isinstance(a, bool):
            return torch.tensor(float(a), dtype=torch.float64)
        value = getattr(gm, a.target) if isinstance(a, torch.fx.Node) and a.op == "get_attr" else None
        return value.double() if isinstance(value, torch.Tensor) and value.dim() == 0 else None

    a, b = node.args
    if isinstance(a, torch.fx.Node) and (c := constant(b)) is not None:
        return a, sign * c
    return (b, c) if sign > 0 and isinstance(b, torch.fx.Node) and (c := constant(a)) is not None else None


def _merge_constant_terms(gm: torch.fx.GraphModule) -> bool:
    """``(x + c1) - c2`` (the constants of the ELBO's terms, added one by one) as one addition ``x + (c1 - c2)``,
    where every step keeps the shape and the floating dtype of ``x``."""
    changed = False
    for node in list(gm.graph.nodes):
        outer = _constant_term(gm, node)
        if outer is None or len(outer[0].users) != 1:
            continue
        inner = _constant_term(gm, outer[0])
        if inner is None or not (_same_meta(node, outer[0]) and _same_meta(node, inner[0])) or not _val(node).is_floating_point():
            continue
        x, fake, attr = inner[0], _val(node), f"_rpm_merged_{len(gm._buffers)}"
        gm.register_buffer(attr, (inner[1] + outer[1]).to(fake.dtype).to(fake.device), persistent=False)
        with gm.graph.inserting_before(node):
            const = gm.graph.get_attr(attr)
            merged = gm.graph.call_function(torch.ops.aten.add.Tensor, (x, const))
        const.meta["val"], merged.meta["val"] = gm.get_buffer(attr), fake
        node.replace_all_uses_with(merged)
        for dead in (node, outer[0]):
            gm.graph.erase_node(dead)
        changed = True
    return changed


def _eliminate_common_subexpressions(gm: torch.fx.GraphModule) -> bool:
    """Compute once the pure operations that a step repeats on the same inputs (a loop over sites that
    transforms one parameter at every step, the same cast of one tensor in several places)."""
    seen: dict[Any, torch.fx.Node] = {}
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        schema = node.target._schema
        if schema.is_mutable or torch.Tag.nondeterministic_seeded in node.target.tags:
            continue
        if str(node.target).startswith(("aten.empty", "aten.new_empty")):
            continue
        try:
            key = (node.target, _hashable(node.args), _hashable(tuple(sorted(node.kwargs.items()))))
        except TypeError:
            continue
        kept = seen.setdefault(key, node)
        if kept is not node:
            node.replace_all_uses_with(kept)
            gm.graph.erase_node(node)
            changed = True
    return changed


def simplify(gm: torch.fx.GraphModule) -> None:
    """Dead-code elimination, constant folding, identity removal, common subexpressions and batching of repeated operations
    on a recorded step (nothing is simplified in a graph with in-place operations)."""
    keep = lambda node: node.is_impure() or bool(_written_arguments(node))  # noqa: E731
    gm.graph.eliminate_dead_code(is_impure_node=keep)
    mutable = any(  # in-place operations, or shapes that depend on values (nonzero): each replay differs
        node.op == "call_function"
        and (getattr(getattr(node.target, "_schema", None), "is_mutable", False) or _written_arguments(node))
        or value_shaped(node)
        for node in gm.graph.nodes
    )
    if not mutable:
        _fold_constants(gm)
        gm.graph.eliminate_dead_code()
        while _peephole(gm) | _eliminate_common_subexpressions(gm) | _merge_constant_terms(gm):
            pass
        if batch_repeated_operations(gm):  # after the passes above, which need one node per site
            _eliminate_common_subexpressions(gm)
        gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
