"""Optional dependencies (the domain slices', plotting), and the error that names the extra to
install."""

from __future__ import annotations

import importlib
from types import ModuleType

_DISTRIBUTIONS = {
    "sklearn": "scikit-learn",
    "PIL": "pillow",
    "scipy": "scipy",
    "timm": "timm",
    "torchvision": "torchvision",
    "matplotlib": "matplotlib",
    "tensorboard": "tensorboard",
}


def missing_extra_error(extra: str, modules: list[str]) -> ModuleNotFoundError:
    """The error for ``modules`` missing from extra ``extra``, with the command that installs it.

    Example::

        >>> print(missing_extra_error("gcd", ["timm"]))
        lightning_mtl.tasks.gcd needs timm, which is not installed: pip install "lightning-mtl[gcd]"
    """
    names = ", ".join(_DISTRIBUTIONS.get(module, module) for module in modules)
    where = "lightning_mtl.tasks." + extra if extra not in ("plots", "all") else "this feature"
    return ModuleNotFoundError(
        f'{where} needs {names}, which is not installed: pip install "lightning-mtl[{extra}]"'
    )


def require(extra: str, *modules: str) -> None:
    """Raise :func:`missing_extra_error` unless every module in ``modules`` imports (the slice
    imports them next anyway).

    Example::

        >>> require("gcd", "math")
    """
    missing = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise missing_extra_error(extra, missing)


def optional_import(module: str, extra: str) -> ModuleType:
    """Import ``module`` (e.g. ``"torchvision.transforms"``), or raise
    :func:`missing_extra_error` naming ``extra``.

    Example::

        >>> optional_import("math", "gcd").sqrt(4.0)
        2.0
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is None or not module.startswith(error.name.split(".")[0]):
            raise
        raise missing_extra_error(extra, [error.name.split(".")[0]]) from error
