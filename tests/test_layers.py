"""The package's layering, read from the import statements: a light core, the research domains as
slices beside it, and the dependencies each layer may use; the install weight of the core; and
the error that names the extra to install when a slice's dependencies are missing."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_mtl"
SLICES = ("gcd", "long_tail", "multitask")
CORE = (
    "__init__",
    "cli",
    "extras",
    "naming",
    "objectives",
    "mixin",
    "strategies",
    "engine",
    "callbacks",
)
# What each core layer may import from the package: lower layers only, never a slice. The mixin
# and the callbacks are siblings (the observer contract lives in the engine).
CORE_IMPORTS = {
    "extras": set(),
    "naming": set(),
    "objectives": set(),
    "strategies": {"strategies"},
    "engine": {"engine", "strategies", "objectives"},
    "callbacks": {"callbacks", "engine", "strategies", "objectives", "extras", "naming"},
    "mixin": {"engine", "strategies", "objectives", "naming"},
    "__init__": {"mixin", "objectives", "strategies"},
    "cli": set(CORE),
}
# Third-party packages the core may import; the domains' own (scikit-learn, timm, torchvision,
# matplotlib, tensorboard, pillow, torchmetrics) only the slices may, or through
# lightning_mtl.extras.optional_import.
CORE_THIRD_PARTY = {
    "torch",
    "lightning",
    "numpy",
    "scipy",
    "threadpoolctl",
    "typing_extensions",
    "jsonargparse",
}
CORE_THIRD_PARTY_BY_LAYER = {"cli": {"rich", "yaml"}, "strategies": {"torchjd"}}  # torchjd lazily


def layer_of(module: str) -> str:
    """``lightning_mtl.strategies.mgda`` → ``strategies``; ``lightning_mtl.tasks.gcd.eagc`` →
    ``tasks.gcd``; ``lightning_mtl`` → ``__init__``."""
    parts = module.split(".")[1:]
    if not parts or not any(
        (PACKAGE / parts[0]).with_suffix(suffix).exists() for suffix in ("", ".py")
    ):
        return "__init__"  # the package itself, or a name it defines (__version__)
    if parts[0] == "tasks":
        return "tasks" if len(parts) == 1 else f"tasks.{parts[1]}"
    return parts[0]


def imported_modules(source: str, module: str, is_package: bool) -> set[str]:
    """Every module that ``source`` imports, at any depth (function-level imports included),
    relative imports resolved."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + is_package]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def violations(module: str, imports: set[str]) -> list[str]:
    """The imports of ``module`` that break the layering rules."""
    layer = layer_of(module)
    problems = []
    for imported in sorted(imports):
        top = imported.split(".")[0]
        if top == "lightning_mtl":
            target = layer_of(imported)
            if layer in CORE_IMPORTS:
                allowed = CORE_IMPORTS[layer]
            elif layer == "tasks":
                allowed = set()
            else:  # a slice, or the slices' common ground
                allowed = set(CORE) | {"tasks", "tasks.common", layer}
            if target != layer and target not in allowed:
                problems.append(f"{module} imports {imported} ({layer} → {target})")
        elif layer in CORE_IMPORTS and top not in sys.stdlib_module_names:
            permitted = CORE_THIRD_PARTY | CORE_THIRD_PARTY_BY_LAYER.get(layer, set())
            if top not in permitted:
                problems.append(f"core module {module} imports {imported}")
        if layer == "strategies" and top == "lightning":
            problems.append(f"{module} imports Lightning, which the strategies must not need")
    return problems


def package_modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def test_the_checker_catches_a_core_module_importing_a_slice() -> None:
    source = "from lightning_mtl.tasks.gcd import EAGC\nimport matplotlib.pyplot\n"
    found = violations(
        "lightning_mtl.strategies.mgda",
        imported_modules(source, "lightning_mtl.strategies.mgda", False),
    )
    assert len(found) == 3  # the slice, the slice's module, and the plotting library
    source = "def f():\n    from ..gcd import models\n"
    imports = imported_modules(source, "lightning_mtl.tasks.long_tail.crt", False)
    assert "lightning_mtl.tasks.gcd.models" in imports
    assert violations("lightning_mtl.tasks.long_tail.crt", imports)


def test_every_module_respects_the_layers() -> None:
    problems = []
    for module, path in package_modules().items():
        imports = imported_modules(path.read_text(), module, path.name == "__init__.py")
        problems += violations(module, imports)
    assert problems == []


def test_every_slice_is_a_folder_under_tasks() -> None:
    layers = {layer_of(module) for module in package_modules()}
    assert {f"tasks.{name}" for name in SLICES} | {"tasks.common"} <= layers
    assert layers <= set(CORE) | {"tasks", "tasks.common"} | {f"tasks.{name}" for name in SLICES}


def _run(code: str) -> str:
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        cwd=PACKAGE.parent,
    )
    return completed.stdout.strip()


def test_importing_the_core_loads_no_domain_or_plotting_library() -> None:
    # Lightning itself loads some of these when they are installed (its loggers and utilities);
    # the core must add none.
    added = _run(
        """
        import sys
        import lightning.pytorch
        before = set(sys.modules)
        import lightning_mtl, lightning_mtl.strategies, lightning_mtl.engine
        import lightning_mtl.callbacks, lightning_mtl.mixin, lightning_mtl.cli
        heavy = ("matplotlib", "sklearn", "timm", "torchvision", "PIL", "tensorboard", "torchjd")
        print(sorted(
            name for name in set(sys.modules) - before
            if name.split(".")[0] in heavy or name.startswith("lightning_mtl.tasks")
        ))
        """
    )
    assert added == "[]"


# Makes the named top-level packages fail to import, as if they were not installed (while the
# import system still finds them, so Lightning's own availability checks are left alone).
BLOCK = """
import importlib.abc, importlib.machinery, sys

class Missing(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, *names):
        self.names = names

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in self.names:
            return importlib.machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {spec.name!r}", name=spec.name)

    def exec_module(self, module):
        pass
"""


@pytest.mark.parametrize(
    ("slice_name", "missing", "distribution"),
    [
        ("gcd", "sklearn", "scikit-learn"),
        ("long_tail", "sklearn", "scikit-learn"),
        ("multitask", "sklearn", "scikit-learn"),
    ],
)
def test_a_slice_without_its_extra_names_the_install(
    slice_name: str, missing: str, distribution: str
) -> None:
    message = _run(
        BLOCK
        + f"""
sys.meta_path.insert(0, Missing({missing!r}))
try:
    import lightning_mtl.tasks.{slice_name}
except ModuleNotFoundError as error:
    print(error)
"""
    )
    assert message == (
        f"lightning_mtl.tasks.{slice_name} needs {distribution}, which is not installed: "
        f'pip install "lightning-mtl[{slice_name}]"'
    )


def test_timm_used_lazily_names_its_extra() -> None:
    message = _run(
        BLOCK
        + """
sys.meta_path.insert(0, Missing("timm"))
from lightning_mtl.tasks.gcd import timm_backbone
try:
    timm_backbone("vit_base_patch16_224")
except ModuleNotFoundError as error:
    print(error)
"""
    )
    assert message == (
        "lightning_mtl.tasks.gcd needs timm, which is not installed: "
        'pip install "lightning-mtl[gcd]"'
    )


def test_the_heatmap_is_drawn_only_with_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from lightning_mtl.callbacks import GradientAngleLogger, cosine_heatmap

    assert GradientAngleLogger().heatmap  # matplotlib is installed here
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "matplotlib" else real_find_spec(name, *args),
    )
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert not GradientAngleLogger().heatmap
    expected = 'needs matplotlib, which is not installed: pip install "lightning-mtl[plots]"'
    with pytest.raises(ModuleNotFoundError, match=re.escape(expected)):
        GradientAngleLogger(heatmap=True)
    with pytest.raises(ModuleNotFoundError, match=re.escape(expected)):
        cosine_heatmap(["a", "b"], torch.eye(2))
