# SPDX-License-Identifier: Apache-2.0
"""Write the offline intersphinx inventories of torch, Pyro and ArviZ (``docs/_inventories/*.inv``).

CI builds the docs with no network, and ``sphinx -W`` fails on an inventory it cannot download, so
``docs/conf.py`` reads these committed files instead. They are made by introspection of the installed
packages: the public classes and functions of a few modules, each under its public dotted name and
under the module path that defines it (``torch.nn.modules.module.Module`` is ``torch.nn.Module``),
pointing at the page of the project's own documentation that describes it.

Regenerate (after a torch, Pyro or ArviZ upgrade) from the repository root::

    python docs/_inventories/make_inventories.py
"""

from __future__ import annotations

import importlib
import inspect
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _public(module_name: str) -> dict[str, object]:
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
    root = module_name.split(".")[0]
    out = {}
    for name in names:
        obj = getattr(module, name, None)
        home = getattr(obj, "__module__", None)
        if not isinstance(home, str) or home.split(".")[0] != root:
            continue  # typing.Any, Callable, ... re-exported from elsewhere
        if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj):
            out[name] = obj
    return out


def _kind(obj: object) -> str:
    return "py:class" if inspect.isclass(obj) else "py:function"


def _defined_at(obj: object, fallback: str) -> str:
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str) and "<" not in qualname:
        return f"{module}.{qualname}"
    return fallback


def _collect(
    specs: list[tuple[str, Callable[[str, str, object], str | None]]], methods: tuple[str, ...] = ()
) -> dict[str, tuple[str, str]]:
    """``{dotted name: (domain:role, relative uri)}`` for the public objects of the modules in ``specs``
    (an object whose ``uri`` is ``None`` is not on the project's documentation and is left out), and the
    public methods of the classes named in ``methods``."""
    entries: dict[str, tuple[str, str]] = {}
    for module_name, uri in specs:
        entries.setdefault(module_name, ("py:module", uri(module_name, "", None)))
        for name, obj in _public(module_name).items():
            public = f"{module_name}.{name}"
            where = uri(module_name, name, obj)
            if where is None:
                continue
            entries.setdefault(public, (_kind(obj), where))
            entries.setdefault(_defined_at(obj, public), (_kind(obj), where))
            if public in methods:
                page, anchor = where.split("#")
                for member, value in vars(obj).items():
                    if not member.startswith("_") and callable(value):
                        target = ("py:method", f"{page}#{anchor}.{member}")
                        entries.setdefault(f"{public}.{member}", target)
                        entries.setdefault(f"{_defined_at(obj, public)}.{member}", target)
    return entries


def _write(path: Path, project: str, version: str, entries: dict[str, tuple[str, str]]) -> None:
    lines = [f"{name} {role} 1 {uri} -" for name, (role, uri) in sorted(entries.items())]
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    path.write_bytes(header.encode() + zlib.compress(("\n".join(lines) + "\n").encode(), 9))
    print(f"{path.name}: {len(lines)} entries")


# ----------------------------------------------------------------------------------------- torch
def _torch_uri(module: str, name: str, obj: object) -> str:
    full = f"{module}.{name}" if name else module
    special = {
        "torch.Tensor": "tensors.html#torch.Tensor",
        "torch.Size": "size.html#torch.Size",
        "torch.dtype": "tensor_attributes.html#torch.dtype",
        "torch.device": "tensor_attributes.html#torch.device",
        "torch.optim.Optimizer": "optim.html#torch.optim.Optimizer",
    }
    if full in special:
        return special[full]
    pages = {
        "torch.distributions": "distributions.html",
        "torch.distributions.constraints": "distributions.html",
        "torch.utils.data": "data.html",
        "torch.distributed": "distributed.html",
        "torch.autograd": "autograd.html",
    }
    if module in pages:
        if not name:
            return f"{pages[module]}#module-{module}"
        anchor = _defined_at(obj, full) if module.startswith("torch.distributions") else full
        if module == "torch.autograd" and inspect.isclass(obj):
            return f"generated/{full}.html#{full}"
        return f"{pages[module]}#{anchor}"
    if not name:
        return {"torch": "torch.html", "torch.nn": "nn.html", "torch.nn.functional": "nn.functional.html"}.get(
            module, f"{module.removeprefix('torch.')}.html"
        ) + f"#module-{module}"
    return f"generated/{full}.html#{full}"


TORCH = [
    (m, _torch_uri)
    for m in (
        "torch",
        "torch.nn",
        "torch.nn.functional",
        "torch.nn.parallel",
        "torch.optim",
        "torch.distributions",
        "torch.distributions.constraints",
        "torch.utils.data",
        "torch.distributed",
        "torch.autograd",
    )
]

# ------------------------------------------------------------------------------------------ pyro
_PYRO_PAGES = {
    "pyro": "primitives.html",
    "pyro.primitives": "primitives.html",
    "pyro.infer": "inference_algos.html",
    "pyro.infer.importance": "inference_algos.html",
    "pyro.optim": "optimization.html",
    "pyro.optim.lr_scheduler": "optimization.html",
    "pyro.poutine": "poutine.html",
    "pyro.distributions": "distributions.html",
    "pyro.contrib.gp.kernels": "contrib.gp.html",
}


# the modules that the inference_algos page of Pyro's documentation documents with automodule
_INFERENCE_ALGOS = (
    "svi elbo trace_elbo tracegraph_elbo traceenum_elbo trace_mean_field_elbo trace_tail_adaptive_elbo "
    "renyi_elbo tracetmc_elbo importance rws smcfilter svgd energy_distance discrete predictive abstract_infer"
).split()


def _pyro_uri(module: str, name: str, obj: object) -> str | None:
    page = _PYRO_PAGES[module]
    if not name:
        return f"{page}#module-{module}"
    if module == "pyro.distributions":
        return f"{page}#pyro.distributions.{name}"  # documented by autoclass under the public name
    where = _defined_at(obj, f"{module}.{name}")
    home = where.rsplit(".", 1)[0]
    if module == "pyro.poutine" and not inspect.isclass(obj) or home == "pyro.poutine.handlers":
        return f"poutine.html#pyro.poutine.handlers.{name}"  # handlers are documented where defined
    if module == "pyro":
        return f"primitives.html#{where}" if home == "pyro.primitives" else None
    if module.startswith("pyro.infer"):
        return f"{page}#{where}" if home.removeprefix("pyro.infer.") in _INFERENCE_ALGOS else None
    return f"{page}#{where}"


PYRO = [(m, _pyro_uri) for m in _PYRO_PAGES if m != "pyro.primitives"]


# ---------------------------------------------------------------------------------------- arviz
def _arviz_uri(module: str, name: str, obj: object) -> str:
    return f"api/generated/arviz.{name}.html#arviz.{name}" if name else "api/index.html"


ARVIZ = [("arviz", _arviz_uri)]


def main() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecated torch.distributed aliases
    import arviz
    import pyro
    import torch

    torch_methods = ("torch.distributions.Distribution",)
    _write(HERE / "torch.inv", "PyTorch", torch.__version__.split("+")[0], _collect(TORCH, torch_methods))
    pyro_methods = ("pyro.infer.TraceEnum_ELBO", "pyro.infer.SVI", "pyro.infer.Predictive")
    _write(HERE / "pyro.inv", "Pyro", pyro.__version__, _collect(PYRO, pyro_methods))
    _write(HERE / "arviz.inv", "ArviZ", arviz.__version__, _collect(ARVIZ))


if __name__ == "__main__":
    main()
