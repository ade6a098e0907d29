"""Lazy exports for package ``__init__`` files, so that importing a package loads no torch or MONAI.

A package lists the names it exports and the submodule each lives in; a name is imported from its
submodule the first time it is used (``from unet_monai.networks import create_network`` or
``unet_monai.networks.create_network`` in a bundle config), through the module ``__getattr__`` of
PEP 562. ``unet-monai --help`` then answers without loading torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_exports(
    namespace: dict[str, Any], exports: Mapping[str, Iterable[str]], submodules: Iterable[str] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for the package whose ``globals()`` is ``namespace``.

    ``exports`` maps each submodule (relative to the package) to the names it defines that the package
    exports; ``submodules`` are exported as modules themselves.
    """
    package = namespace["__name__"]
    home = {name: module for module, names in exports.items() for name in names}
    modules = set(submodules)

    def __getattr__(name: str) -> Any:
        if name in modules:
            return importlib.import_module(f"{package}.{name}")
        if name in home:
            return getattr(importlib.import_module(f"{package}.{home[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(home) | modules)

    return __getattr__, __dir__, sorted(home)
