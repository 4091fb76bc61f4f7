"""Package attributes imported on first use (PEP 562), so importing a package stays cheap."""

from __future__ import annotations

import importlib
from typing import Callable, Mapping


def lazy_attributes(package: str, where: Mapping[str, str]) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package`` whose attribute ``name`` is ``where[name]``'s ``name``.

    ``where`` maps a public name to the module defining it, or to
    ``"module:attribute"`` when the attribute has another name there.
    """

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attribute = where[name].partition(":")
        return getattr(importlib.import_module(module), attribute or name)

    def __dir__():
        return sorted(where)

    return __getattr__, __dir__
