# SPDX-License-Identifier: Apache-2.0
"""Helpers on the nodes of a recorded graph, shared by its passes (``_graph.py``, ``_batching.py``):
a node's recorded value, metadata comparisons, hashable keys of arguments, value-dependent shapes."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["hashable", "same_meta", "val", "value_shaped"]

_INTEGER_INDEX = (torch.int64, torch.int32, torch.int16, torch.int8)


def val(node: Any) -> Any:
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


def same_meta(a: Any, b: Any) -> bool:
    va, vb = val(a), val(b)
    return (
        isinstance(va, torch.Tensor)
        and isinstance(vb, torch.Tensor)
        and va.shape == vb.shape
        and va.stride() == vb.stride()
        and va.dtype == vb.dtype
        and va.device == vb.device
        and va.requires_grad == vb.requires_grad
    )


def hashable(a: Any) -> Any:
    """``a`` as a hashable key (nodes by identity, lists as tuples), or raise ``TypeError``."""
    if isinstance(a, (list, tuple)):
        return (type(a).__name__, *(hashable(x) for x in a))
    if isinstance(a, torch.fx.Node) or a is None or isinstance(a, (str, torch.dtype, torch.device)):
        return a
    if isinstance(a, (bool, int, float)):  # 1, 1.0 and True (or 0.0 and -0.0) give other results
        return (type(a), repr(a))
    if isinstance(a, (torch.layout, torch.memory_format)):
        return str(a)
    raise TypeError(type(a))


def value_shaped(node: torch.fx.Node) -> bool:
    """Whether the shape of ``node``'s output depends on its inputs' values (``nonzero``, an index by a boolean mask):
    a recorded graph with one replays with other shapes, which passes that read the recorded shapes must not assume."""
    target = node.target
    if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
        return False
    if torch.Tag.dynamic_output_shape not in target.tags:
        return False
    if target is not torch.ops.aten.index.Tensor:
        return True
    indices = [val(i) for i in node.args[1] if i is not None]
    return not all(isinstance(i, torch.Tensor) and i.dtype in _INTEGER_INDEX for i in indices)
