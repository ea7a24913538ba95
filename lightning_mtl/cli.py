"""The ``lightning-mtl`` command: LightningCLI over the package's models, data modules, strategies
and bundled recipes.

``--config`` takes a file or the name of a bundled recipe (``digits_pgi`` or ``digits_pgi.yaml``);
an existing local file of that name wins over the bundled recipe. ``lightning-mtl recipes`` lists
the bundled recipes, one line each; ``lightning-mtl recipes NAME`` prints one, to copy and edit.

The research slices under :mod:`lightning_mtl.tasks` are plug-ins: each is an entry point of the
``lightning_mtl.tasks`` group (see setup.cfg), imported at start-up so that its models and data
modules are known to the parser (listed in ``fit --help``, accepted by class name). A slice whose
extra is not installed is skipped, with a note in ``--help``. The core never imports a slice.

Example::

    lightning-mtl recipes
    lightning-mtl fit --config digits_pgi
    lightning-mtl fit --config digits_pgi --model.init_args.strategy.alpha 0.35
    lightning-mtl fit --config my_recipe.yaml
    lightning-mtl fit --model.help MultiDigitsModule
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import re
import sys
import textwrap
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from jsonargparse import DefaultHelpFormatter
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.model_helpers import is_overridden
from rich.console import Console
from rich.table import Table
from torch import Tensor
from typing_extensions import override

from lightning_mtl import __version__, strategies
from lightning_mtl.strategies import base as strategy_contract
from lightning_mtl.strategies.base import GradientBalancingStrategy

TASK_ENTRY_POINTS = "lightning_mtl.tasks"
"""The entry-point group of the research slices (``name = module``)."""

RECIPES = Path(__file__).with_name("recipes")
"""The folder of the bundled recipes (package data)."""

# A --config value that can only be a file or recipe name (a config string has spaces, ':', '{').
_PATH_LIKE = re.compile(r"[\w.\-/\\~]+")
_CLASS_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


def bundled_recipes() -> dict[str, Path]:
    """The recipes shipped with the package: name → file, by name.

    Example::

        >>> bundled_recipes()["digits_pgi"].name
        'digits_pgi.yaml'
    """
    return {path.stem: path for path in sorted(RECIPES.glob("*.yaml"))}


def recipe_summary(recipe: Path) -> str:
    """A recipe's one-line summary: the first line of its header comment.

    Example::

        >>> recipe_summary(bundled_recipes()["multidigits_mtl"])
        'Three digits as three tasks on one CNN, equal weights (any strategy); CPU'
    """
    with recipe.open() as text:
        return text.readline().removeprefix("#").strip()


def resolve_config(value: str) -> str:
    """What ``--config value`` reads: an existing file as given, else the bundled recipe named
    ``value`` (with or without ``.yaml``), else ``value`` itself when it is a configuration
    string rather than a name.

    Raises:
        FileNotFoundError: ``value`` names neither a file nor a bundled recipe.

    Example::

        >>> Path(resolve_config("digits_pgi.yaml")) == bundled_recipes()["digits_pgi"]
        True
    """
    if Path(value).is_file() or not _PATH_LIKE.fullmatch(value):
        return value
    recipes = bundled_recipes()
    name = value.removesuffix(".yaml")
    if name in recipes:
        return str(recipes[name])
    message = f"--config {value}: no such file, and no bundled recipe of that name"
    if Path(name).name in recipes:
        message += f" (bundled recipes are named without a folder: --config {Path(name).name})"
    raise FileNotFoundError(f"{message}. `lightning-mtl recipes` lists them.")


def recipes_listing() -> str:
    """The text of ``lightning-mtl recipes``: every bundled recipe with its summary.

    Example::

        >>> print(recipes_listing().splitlines()[0])
        Bundled recipes (lightning-mtl fit --config NAME; a local file of that name wins):
    """
    recipes = bundled_recipes()
    width = max(map(len, recipes))
    lines = ["Bundled recipes (lightning-mtl fit --config NAME; a local file of that name wins):"]
    lines += [f"  {name:<{width}}  {recipe_summary(path)}" for name, path in recipes.items()]
    lines.append("`lightning-mtl recipes NAME` prints one, to copy and edit.")
    return "\n".join(lines)


@dataclass
class TaskSlices:
    """The research slices found as entry points: those imported, and why the others were not."""

    loaded: dict[str, ModuleType] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def load_task_slices(
    entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
) -> TaskSlices:
    """Import the research slices, so that their classes are known to the parser.

    Args:
        entry_points: the slices; ``None``: the installed ``lightning_mtl.tasks`` entry points.

    Returns:
        The imported slices by entry-point name, and for each slice whose optional dependencies
        are missing, the error that names its extra.
    """
    if entry_points is None:
        entry_points = importlib.metadata.entry_points(group=TASK_ENTRY_POINTS)
    slices = TaskSlices()
    seen: set[str] = set()
    for entry_point in entry_points:
        # An editable install and a wheel on the same path list the same slice twice.
        if entry_point.value in seen:
            continue
        seen.add(entry_point.value)
        try:
            slices.loaded[entry_point.name] = entry_point.load()
        except ModuleNotFoundError as error:
            slices.skipped[entry_point.name] = str(error)
    return slices


def is_strategy_base(cls: type) -> bool:
    """Whether strategy class ``cls`` cannot train: it is abstract, or it is one of the contract's
    base classes (``lightning_mtl.strategies.base`` holds nothing else).

    Example::

        >>> from lightning_mtl.strategies import MGDA
        >>> is_strategy_base(GradientBalancingStrategy), is_strategy_base(MGDA)
        (True, False)
    """
    return inspect.isabstract(cls) or cls.__module__ == strategy_contract.__name__


def concrete_strategies() -> list[str]:
    """The names of the strategies that :mod:`lightning_mtl.strategies` exports, bases left out.

    Example::

        >>> "MGDA" in concrete_strategies(), "GradientBalancingStrategy" in concrete_strategies()
        (True, False)
    """
    return sorted(
        name
        for name in strategies.__all__
        if isinstance(cls := getattr(strategies, name), type)
        and issubclass(cls, GradientBalancingStrategy)
        and not is_strategy_base(cls)
    )


def _strategy_classes(root: type = GradientBalancingStrategy) -> Iterator[type]:
    yield root
    subclass: type
    for subclass in root.__subclasses__():
        yield from _strategy_classes(subclass)


def _named_strategy_base(value: str) -> type | None:
    """The strategy class that cannot train which ``value`` names (a class path, or the bare
    name of an imported one), if any."""
    if _CLASS_PATH.fullmatch(value):
        module_name, _, attribute = value.rpartition(".")
        try:
            named = getattr(importlib.import_module(module_name), attribute, None)
        except Exception:  # not a module: a value that only looks like a class path
            return None
        if isinstance(named, type) and issubclass(named, GradientBalancingStrategy):
            return named if is_strategy_base(named) else None
        return None
    return next(
        (cls for cls in _strategy_classes() if cls.__name__ == value and is_strategy_base(cls)),
        None,
    )


def _strings(value: Any) -> Iterator[str]:
    """Every string in a nested structure of mappings and lists (a loaded configuration)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def strategy_base_error(values: Iterable[str]) -> str | None:
    """The error for the first of ``values`` that names a strategy that cannot train, naming the
    concrete strategies; ``None`` when there is none.

    Example::

        >>> error = strategy_base_error(["digits_pgi", "GradientBalancingStrategy"])
        >>> error.startswith("strategy GradientBalancingStrategy is a base class"), "MGDA" in error
        (True, True)
        >>> strategy_base_error(["digits_pgi", "lightning_mtl.strategies.MGDA"]) is None
        True
    """
    for value in values:
        cls = _named_strategy_base(value)
        if cls is None:
            continue
        contract = cls.__module__ == strategy_contract.__name__
        what = "a base class of the strategy contract" if contract else "abstract"
        return (
            f"strategy {value} is {what}, not a strategy to train with. Choose one of "
            f"lightning_mtl.strategies.{{{', '.join(concrete_strategies())}}} (or a concrete "
            "class of your own)."
        )
    return None


class _HelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help, keeping the line breaks of a description (its lists)."""

    @override
    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines = []
        for line in text.splitlines():
            hanging = indent + " " * (len(line) - len(line.lstrip()) + 2)
            lines.append(
                textwrap.fill(line, width, initial_indent=indent, subsequent_indent=hanging)
            )
        return "\n".join(lines)


def _exported_classes(module: ModuleType, kind: type) -> list[str]:
    names = getattr(module, "__all__", [])
    return [
        name
        for name in names
        if isinstance(cls := getattr(module, name), type)
        and issubclass(cls, kind)
        and not inspect.isabstract(cls)
    ]


def describe(slices: TaskSlices) -> str:
    """The description of ``lightning-mtl --help`` and ``fit --help``: the bundled recipes, the
    strategies, and each slice's models and data modules (or why the slice is not loaded)."""
    lines = [
        f"Gradient balancing for multi-objective training (lightning-mtl {__version__}).",
        "",
        "Recipes, bundled (fit --config NAME; a local file NAME wins; `lightning-mtl recipes` "
        "describes each):",
        "  " + ", ".join(bundled_recipes()),
        "Strategies (--model.init_args.strategy NAME, from lightning_mtl.strategies):",
        "  " + ", ".join(concrete_strategies()),
        "Models; data modules (--model NAME, --data NAME; fit --model.help NAME lists the "
        "arguments):",
    ]
    for module in slices.loaded.values():
        models = _exported_classes(module, LightningModule)
        data = _exported_classes(module, LightningDataModule)
        lines.append(f"  {module.__name__}: {', '.join(models)}; {', '.join(data)}")
    for name, reason in slices.skipped.items():
        lines.append(f"  lightning_mtl.tasks.{name}: not loaded ({reason})")
    return "\n".join(lines)


class MultiObjectiveCLI(LightningCLI):
    """LightningCLI that reads bundled recipes by name, refuses strategy classes that cannot
    train before anything is built, and, after ``fit``, tests the trained model (when it has a
    ``test_step``) and prints a metrics table."""

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        if not (args is None or isinstance(args, list | tuple)):
            return super().parse_arguments(parser, args)  # a dict or Namespace: no command line
        argv = list(sys.argv[1:] if args is None else args)
        try:
            argv = _with_recipe_paths(argv)
        except FileNotFoundError as error:
            parser.error(str(error))
        # jsonargparse refuses an abstract class itself, but without naming the concrete ones.
        named = [token.rpartition("=")[2] for token in argv]
        for config in _config_files(argv):
            named += _strings(_load_yaml(config))
        if message := strategy_base_error(named):
            parser.error(message)
        if args is None:
            self.config = parser.parse_args(argv)  # what LightningCLI parses from sys.argv
        else:
            super().parse_arguments(parser, argv)

    @override
    def before_instantiate_classes(self) -> None:
        # A base class that is not abstract parses; it must not reach the first step.
        if message := strategy_base_error(_strings(self.config.as_dict())):
            self.parser.error(message)

    def after_fit(self) -> None:  # LightningCLI's hook after `fit`, found by name
        fitted = dict(self.trainer.callback_metrics)
        if is_overridden("test_step", self.model):
            self.trainer.test(self.model, datamodule=self.datamodule, verbose=False)
        if self.trainer.is_global_zero:
            Console().print(metrics_table({**fitted, **self.trainer.callback_metrics}))


def _with_recipe_paths(argv: list[str]) -> list[str]:
    """``argv`` with each ``--config`` / ``-c`` value resolved by :func:`resolve_config`."""
    resolved = list(argv)
    for index, arg in enumerate(argv):
        if arg in ("-c", "--config") and index + 1 < len(argv):
            resolved[index + 1] = resolve_config(argv[index + 1])
        elif arg.startswith(("--config=", "-c=")):
            option, _, value = arg.partition("=")
            resolved[index] = f"{option}={resolve_config(value)}"
    return resolved


def _config_files(argv: list[str]) -> list[str]:
    values = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in ("-c", "--config")]
    values += [arg.partition("=")[2] for arg in argv if arg.startswith(("--config=", "-c="))]
    return [value for value in values if Path(value).is_file()]


def _load_yaml(path: str) -> Any:
    """A configuration file's content; ``None`` when it is not YAML (jsonargparse says why)."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError:
        return None


def metrics_table(metrics: Mapping[str, Tensor | float]) -> Table:
    """A table of the final metrics, one row each, sorted by name.

    Example::

        >>> table = metrics_table({"val/acc": 0.9, "angle/a_vs_b": 80, "angle/a_vs_b_epoch": 85})
        >>> [cell for cell in table.columns[0].cells]
        ['angle/a_vs_b_epoch', 'val/acc']
    """
    table = Table(title="Final metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name in sorted(metrics):
        # Per-step values are noisy and bare names duplicate their epoch means: keep the means.
        if name.endswith("_step") or f"{name}_epoch" in metrics:
            continue
        table.add_row(name, f"{float(metrics[name]):.4f}")
    return table


def run_cli(args: Sequence[str] | None = None, **options: Any) -> MultiObjectiveCLI:
    """The ``lightning-mtl`` command from Python: any ``LightningModule`` and
    ``LightningDataModule`` by class path (or by class name, for the slices' classes), a
    bundled recipe by name, the config saved over an earlier one.

    The model and data arguments take any ``LightningModule`` and ``LightningDataModule``
    rather than a project base class: a user's own module, with or without
    :class:`~lightning_mtl.MultiObjectiveMixin`, trains through the same command (the mixin is
    not a ``LightningModule``, so it could not be the base). jsonargparse lists the subclasses
    imported when the parser is built, so the slices are imported first
    (:func:`load_task_slices`): that is what puts ``GCDModule``, ``MultiDigitsModule``, … into
    ``fit --help`` instead of ``lightning.LightningModule`` alone.

    Args:
        args: the command line after ``lightning-mtl`` (``None``: ``sys.argv``).
        options: further ``LightningCLI`` arguments, overriding those defaults (e.g.
            ``run=False`` to only build the model and data module, ``save_config_callback=None``).

    Returns:
        The CLI, with its ``trainer``, ``model`` and ``datamodule``.

    Example::

        cli = run_cli(["fit", "--config", "digits_pgi", "--trainer.max_epochs", "1"])
        cli.trainer.callback_metrics["test/acc"]
    """
    description = describe(load_task_slices())
    help_text = {"description": description, "formatter_class": _HelpFormatter}
    settings: dict[str, Any] = {
        "subclass_mode_model": True,
        "subclass_mode_data": True,
        "save_config_kwargs": {"overwrite": True},
        "parser_kwargs": {**help_text, "fit": help_text},
    }
    settings.update(options)
    return MultiObjectiveCLI(
        LightningModule, LightningDataModule, args=None if args is None else list(args), **settings
    )


def main() -> None:
    """Entry point of the ``lightning-mtl`` console script."""
    # A deprecation inside Lightning's own pytree use under recent torch: nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    if sys.argv[1:2] == ["recipes"]:
        sys.exit(_recipes_command(sys.argv[2:]))
    run_cli()


def _recipes_command(argv: list[str]) -> int:
    """``lightning-mtl recipes [NAME]``: the listing, or the text of one recipe."""
    if not argv:
        print(recipes_listing())
        return 0
    recipes = bundled_recipes()
    name = argv[0].removesuffix(".yaml")
    if len(argv) == 1 and name in recipes:
        print(recipes[name].read_text(), end="")
        return 0
    usage = "usage: lightning-mtl recipes [NAME]"
    if argv[0] in ("-h", "--help"):
        print(f"{usage}\n\n{recipes_listing()}")
        return 0
    print(f"{usage}\nerror: no bundled recipe {argv[0]!r}\n\n{recipes_listing()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    main()
