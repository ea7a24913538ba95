"""Metric names that every logger keeps as written.

TensorBoard and CSV keep any name; MLflow drops every character outside letters, digits and
``_/. -`` (Lightning's ``MLFlowLogger``), and W&B reads ``/`` as a section and ``.`` as nesting.
So names are built from letters, digits, ``_``, ``-`` and ``/`` only: objective names that hold
anything else (PLOT's pooled ``class_3+9``) have it replaced by ``_``, and pairs of objectives are
joined by ``_vs_``.
"""

from __future__ import annotations

import re

_UNSAFE = re.compile(r"[^A-Za-z0-9_/\-]")


def metric_name(*parts: str) -> str:
    """``parts`` joined by ``/``, each character outside ``[A-Za-z0-9_/-]`` replaced by ``_``.

    Example::

        >>> metric_name("weight", "class_3+9")
        'weight/class_3_9'
        >>> metric_name("angle", pair("cls", "rep"))
        'angle/cls_vs_rep'
    """
    return "/".join(_UNSAFE.sub("_", part) for part in parts)


def pair(first: str, second: str) -> str:
    """The name of a pair of objectives (or of an objective and the update).

    Example::

        >>> pair("cls", "update")
        'cls_vs_update'
    """
    return f"{first}_vs_{second}"
