# SPDX-License-Identifier: Apache-2.0
r"""Batch the operations that a recorded step repeats site after site (a :func:`pyro.markov` loop).

A prior written as a loop over T steps records as T copies of the same small computation: the
guide's draw of :math:`z_t`, the prior's and the likelihood's log-densities at step t, and two running
sums that add each site's terms to the ELBO. Each copy is a few ATen calls on small tensors, so a
replayed step costs T times the per-call overhead, forwards and backwards. This pass turns the copies
into batched operations, the way :func:`torch.func.vmap` would, without changing what is computed:

1. **Groups.** Every operation gets its *depth*, the longest path from the graph's inputs. Pure
   operations with the same target, arguments of the same shapes and dtypes and the same constant
   arguments, at the same depth, form a group. Two operations at one depth never depend on each
   other, and edges go from lower to higher depths before and after merging a group into one
   operation, so the merged graph has no cycle.
2. **Batched operation.** A group of G members becomes one operation on inputs stacked along a new
   leading dimension: the batching rule is :func:`torch.func.vmap`'s, recorded by
   :func:`~torch.fx.experimental.proxy_tensor.make_fx` into plain ATen operations (an ``mm`` of
   stacked inputs becomes a ``bmm``, an ``index`` by stacked indices one ``index``). An input that
   every member shares is passed once (``in_dims=None``); inputs that are the members of a batched
   group are that group's output (re-ordered by one ``index`` where needed); constants are stacked
   once; anything else is stacked by one ``stack``. Groups whose rule records more than a few
   operations (a rule-less operation that vmap loops over) stay as they are.
3. **Running sums.** A chain ``((a + t_1) + t_2) + ... + t_n`` of additions of same-shaped terms
   becomes ``a + sum(terms)``, one ``sum`` per batched group the terms come from.
4. Members still read by unbatched operations read ``batched[i]``; the graph is ordered by depth
   (random operations, which have no inputs, keep their order, so the random stream is the eager one).

Values agree with the unbatched graph to rounding (a batched matrix product and a reassociated sum
round differently); gradients follow from the same operations under autograd.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Any

import torch
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils import _pytree as pytree

from ._nodes import hashable, value_shaped
from ._nodes import val as _val

__all__ = ["batch_repeated_operations"]

#: The fewest repetitions worth a batched operation.
MIN_GROUP = 4
#: The most ATen operations a batched group may record (views included).
MAX_RULE_OPS = 12
#: The most runs of one batched group's members an input may be gathered from before one ``stack`` is cheaper.
MAX_RUNS = 8
_ADD = torch.ops.aten.add.Tensor
_SELECT = torch.ops.aten.select.int


def _signature(node: torch.fx.Node) -> Any:
    """What must agree between two operations to batch them: target, shapes, dtypes, constants."""
    if node.target is _SELECT and not node.kwargs:  # x[i] for several i: the rows of x (the index may differ)
        return node.target, node.args[0], node.args[1]

    def meta(a: torch.fx.Node) -> tuple:
        v = _val(a)
        if not isinstance(v, torch.Tensor):
            raise TypeError(type(v))
        return ("T", tuple(v.shape), v.dtype, v.device)

    return node.target, hashable(torch.fx.map_arg((node.args, tuple(sorted(node.kwargs.items()))), meta))


def _batchable(node: torch.fx.Node) -> bool:
    target = node.target
    if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
        return False
    if target._schema.is_mutable or torch.Tag.nondeterministic_seeded in target.tags:
        return False
    return isinstance(_val(node), torch.Tensor) and not str(target).startswith(("aten.empty", "aten.new_empty"))


def _empty(shape: tuple, like: torch.Tensor) -> torch.Tensor:
    """A real tensor of ``shape`` with the dtype and device of ``like`` (a node's metadata)."""
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def _example(node: torch.fx.Node, batch: int | None = None) -> torch.Tensor:
    v = _val(node)
    shape = tuple(v.shape) if batch is None else (batch, *v.shape)
    return torch.zeros(shape, dtype=v.dtype, device=v.device)


class _Batcher:
    def __init__(self, gm: torch.fx.GraphModule) -> None:
        self.gm, self.graph = gm, gm.graph
        self.packed: dict[torch.fx.Node, tuple[torch.fx.Node, int]] = {}  # member -> (batched, position)
        self.size: dict[torch.fx.Node, int] = {}
        self.order: dict[torch.fx.Node, int] = {}
        self.selects: dict[torch.fx.Node, torch.fx.Node] = {}
        self.anchor = next(n for n in self.graph.nodes if n.op == "output")

    # ----------------------------------------------------------------- emitting nodes
    def constant(self, value: torch.Tensor) -> torch.fx.Node:
        name = f"_rpm_batched_{len(self.gm._buffers)}"  # buffers are only added: a new name
        self.gm.register_buffer(name, value, persistent=False)
        with self.graph.inserting_before(self.anchor):
            node = self.graph.get_attr(name)
        node.meta["val"] = value
        return node

    def call(self, target: Any, args: tuple, val: torch.Tensor) -> torch.fx.Node:
        with self.graph.inserting_before(self.anchor):
            node = self.graph.call_function(target, args)
        node.meta["val"] = val
        return node

    def single(self, node: torch.fx.Node) -> torch.fx.Node:
        """``node`` itself, or ``batched[i]`` when it is a batched group's member."""
        if node not in self.packed:
            return node
        if node not in self.selects:
            batched, i = self.packed[node]
            self.selects[node] = self.call(torch.ops.aten.select.int, (batched, 0, i), _val(node))
        return self.selects[node]

    def stacked(self, values: list[torch.fx.Node]) -> torch.fx.Node:
        """One node whose value is ``stack(values)``: the batched groups' outputs where the values are their
        members (a slice or an ``index`` per run of one group, joined by ``cat``), else one ``stack``."""
        if all(v.op == "get_attr" for v in values):
            return self.constant(torch.stack([getattr(self.gm, v.target) for v in values]))
        runs: list[tuple[torch.fx.Node, list[int]]] = []
        for v in values:
            if v not in self.packed:
                runs = []
                break
            batched, i = self.packed[v]
            if runs and runs[-1][0] is batched:
                runs[-1][1].append(i)
            else:
                runs.append((batched, [i]))
        if not runs or len(runs) > MAX_RUNS:
            val = _empty((len(values), *_val(values[0]).shape), _val(values[0]))
            return self.call(torch.ops.aten.stack.default, ([self.single(v) for v in values], 0), val)
        pieces = [self.rows(batched, positions) for batched, positions in runs]
        if len(pieces) == 1:
            return pieces[0]
        rows = sum(_val(p).shape[0] for p in pieces)
        return self.call(torch.ops.aten.cat.default, (pieces, 0), _empty((rows, *_val(pieces[0]).shape[1:]), _val(values[0])))

    def rows(self, batched: torch.fx.Node, positions: list[int], size: int | None = None) -> torch.fx.Node:
        """``batched[positions]``: itself, a slice, or one ``index``."""
        full = _val(batched)
        val = _empty((len(positions), *full.shape[1:]), full)
        first = positions[0]
        if positions == list(range(first, first + len(positions))):
            if len(positions) == (self.size[batched] if size is None else size):
                return batched
            return self.call(torch.ops.aten.slice.Tensor, (batched, 0, first, first + len(positions)), val)
        index = self.constant(torch.tensor(positions, device=full.device))
        return self.call(torch.ops.aten.index.Tensor, (batched, [index]), val)

    # ----------------------------------------------------------------- one group
    def batch_all(self, members: list[torch.fx.Node]) -> None:
        """Batch ``members`` (same target, shapes, constants and depth), split first by the inputs that
        repeat among them (``index(a, i_t)`` and ``index(b, i_t)`` are two groups, each sharing ``a`` or ``b``)."""
        columns = list(zip(*(_node_leaves(m) for m in members)))
        repeating = [j for j, column in enumerate(columns) if len(set(column)) <= len(column) // MIN_GROUP]
        parts: dict[tuple, list[torch.fx.Node]] = defaultdict(list)
        for m, leaves in zip(members, zip(*columns) if columns else [()] * len(members)):
            parts[tuple(leaves[j] for j in repeating)].append(m)
        for part in parts.values():
            if len(part) >= MIN_GROUP:
                self.batch(sorted(part, key=self.source_order))

    def source_order(self, member: torch.fx.Node) -> tuple:
        """Members ordered by where their first batched input comes from, so that it is read in runs."""
        for a in _node_leaves(member):
            if a in self.packed:
                batched, i = self.packed[a]
                return (self.order[batched], i)
        return (-1, 0)

    def batch_rows(self, members: list[torch.fx.Node]) -> None:
        """``x[i_1], ..., x[i_G]`` (``select`` along the first dimension) as ``x[[i_1, ..., i_G]]``."""
        x, dim = members[0].args[0], members[0].args[1]
        size = _val(x).shape[0] if _val(x).dim() else 0
        if dim not in (0, -_val(x).dim()) or not size:
            return
        batched = self.rows(x, [m.args[2] % size for m in members], size)
        self.record(members, batched)

    def record(self, members: list[torch.fx.Node], batched: torch.fx.Node) -> None:
        self.size[batched] = len(members)
        self.order[batched] = len(self.order)
        for i, m in enumerate(members):
            self.packed[m] = (batched, i)

    def batch(self, members: list[torch.fx.Node]) -> None:
        if members[0].target is _SELECT:
            return self.batch_rows(members)
        flat = [pytree.tree_flatten((m.args, m.kwargs)) for m in members]
        leaves, spec = flat[0]
        slots = [i for i, a in enumerate(leaves) if isinstance(a, torch.fx.Node)]
        columns = [[f[0][i] for f in flat] for i in slots]
        shared = [all(v is column[0] for v in column) for column in columns]
        if all(shared):
            return  # the same computation G times: left to common-subexpression elimination
        target, count = members[0].target, len(members)

        def one(*tensors: torch.Tensor) -> torch.Tensor:
            filled = list(leaves)
            for i, t in zip(slots, tensors):
                filled[i] = t
            args, kwargs = pytree.tree_unflatten(filled, spec)
            return target(*args, **kwargs)

        examples = [_example(c[0], None if s else count) for c, s in zip(columns, shared)]
        in_dims = tuple(None if s else 0 for s in shared)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # vmap's "performance drop" warning: it would loop over the group
                rule = make_fx(torch.func.vmap(one, in_dims=in_dims))(*examples)
        except Exception:  # an operation vmap cannot batch stays unbatched
            return
        ops = [n for n in rule.graph.nodes if n.op == "call_function"]
        out = next(n for n in rule.graph.nodes if n.op == "output").args[0]
        pure = all(
            not isinstance(n.target, torch._ops.OpOverload)
            or not (n.target._schema.is_mutable or torch.Tag.nondeterministic_seeded in n.target.tags)
            for n in ops
        )
        if len(ops) > MAX_RULE_OPS or not pure:
            return
        if not isinstance(out, torch.fx.Node) or tuple(_val(out).shape) != (count, *_val(members[0]).shape):
            return
        inputs = [c[0] if s else self.stacked(c) for c, s in zip(columns, shared)]
        env: dict[torch.fx.Node, Any] = {}
        placeholders = iter(inputs)
        for n in rule.graph.nodes:
            if n.op == "placeholder":
                env[n] = next(placeholders)
            elif n.op == "get_attr":
                env[n] = self.constant(getattr(rule, n.target))
            elif n.op == "call_function":
                args, kwargs = torch.fx.map_arg((n.args, n.kwargs), lambda a: env[a])
                with self.graph.inserting_before(self.anchor):
                    env[n] = self.graph.call_function(n.target, args, kwargs)
                env[n].meta["val"] = _val(n)
        self.record(members, env[out])

    # ----------------------------------------------------------------- running sums
    def sum_chains(self) -> bool:
        changed = False
        for node in reversed(list(self.graph.nodes)):
            if getattr(node, "_erased", False):
                continue
            chain = [node]
            while _is_accumulation(chain[-1]) and _is_accumulation(chain[-1].args[0]) and len(chain[-1].args[0].users) == 1:
                chain.append(chain[-1].args[0])
            if len(chain) < MIN_GROUP:
                continue
            start, terms = chain[-1].args[0], [c.args[1] for c in reversed(chain)]
            if _reads_any(terms, set(chain)):
                continue
            by_group: dict[Any, list[torch.fx.Node]] = defaultdict(list)
            for t in terms:
                by_group[self.packed[t][0] if t in self.packed else None].append(t)
            total = start
            for values in by_group.values():
                if len(values) == 1:
                    part = self.single(values[0])
                else:
                    part = self.call(torch.ops.aten.sum.dim_IntList, (self.stacked(values), [0]), _val(node))
                total = self.call(_ADD, (total, part), _val(node))
            node.replace_all_uses_with(total)
            for c in chain:
                self.graph.erase_node(c)
            changed = True
        return changed

    # ----------------------------------------------------------------- finishing
    def finish(self) -> None:
        for member in list(self.packed):
            if member.users:
                member.replace_all_uses_with(self.single(member))
        _order_by_depth(self.graph)
        self.graph.eliminate_dead_code()


def _node_leaves(node: torch.fx.Node) -> list[torch.fx.Node]:
    return [a for a in pytree.tree_flatten((node.args, node.kwargs))[0] if isinstance(a, torch.fx.Node)]


def _is_accumulation(node: Any) -> bool:
    """``acc + term`` with ``acc`` and ``term`` of the result's shape and floating dtype."""
    if not isinstance(node, torch.fx.Node) or node.target is not _ADD or node.kwargs or len(node.args) != 2:
        return False
    out, acc, term = _val(node), _val(node.args[0]), _val(node.args[1])
    return all(isinstance(v, torch.Tensor) for v in (out, acc, term)) and (
        out.is_floating_point() and acc.shape == term.shape == out.shape and acc.dtype == term.dtype == out.dtype
    )


def _reads_any(nodes: list[torch.fx.Node], avoid: set[torch.fx.Node]) -> bool:
    seen, todo = set(), list(nodes)
    while todo:
        n = todo.pop()
        if n in avoid:
            return True
        if n not in seen:
            seen.add(n)
            todo.extend(n.all_input_nodes)
    return False


def _depths(graph: torch.fx.Graph) -> dict[torch.fx.Node, int]:
    """The longest path from the inputs to every node (the nodes need not be in topological order)."""
    depth: dict[torch.fx.Node, int] = {}
    for root in graph.nodes:
        stack = [root]
        while stack:
            n = stack[-1]
            if n in depth:
                stack.pop()
                continue
            missing = [a for a in n.all_input_nodes if a not in depth]
            if missing:
                stack.extend(missing)
                continue
            depth[n] = 1 + max((depth[a] for a in n.all_input_nodes), default=-1)
            stack.pop()
    return depth


def _order_by_depth(graph: torch.fx.Graph) -> None:
    """Re-order the nodes by (depth, position): a topological order that keeps the inputs first."""
    depth = _depths(graph)
    nodes = list(graph.nodes)
    position = {n: i for i, n in enumerate(nodes)}
    head = [n for n in nodes if n.op == "placeholder"]
    body = sorted((n for n in nodes if n.op not in ("placeholder", "output")), key=lambda n: (depth[n], position[n]))
    previous = head[-1]  # a recorded step has its parameters and tensors as inputs
    for n in body:
        previous.append(n)
        previous = n


def batch_repeated_operations(gm: torch.fx.GraphModule) -> bool:
    """Batch the repeated operations of a pure recorded step (see the module docstring); ``True`` if it did."""
    graph = gm.graph
    for node in graph.nodes:
        target = node.target
        if not isinstance(target, torch._ops.OpOverload):
            continue
        if torch.Tag.nondeterministic_seeded in target.tags and node.all_input_nodes:
            return False  # a random operation fed by others: re-ordering could change the random stream
        if value_shaped(node):
            return False  # shapes that depend on values (nonzero, a boolean mask) vary from replay to replay
    depth = _depths(graph)
    groups: dict[Any, list[torch.fx.Node]] = defaultdict(list)
    for node in graph.nodes:
        if _batchable(node):
            try:
                groups[(depth[node], _signature(node))].append(node)
            except TypeError:
                continue
    batcher = _Batcher(gm)
    for (_, _), members in sorted(groups.items(), key=lambda kv: kv[0][0]):
        if len(members) >= MIN_GROUP:
            batcher.batch_all(members)
    summed = batcher.sum_chains()
    if not (batcher.packed or summed):
        return False
    batcher.finish()
    graph.lint()
    return True
