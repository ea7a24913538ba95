"""Generalized category discovery plug-ins: EAGC, the energy-aware gradient coordinator."""

from lightning_mtl.gcd.eagc import EAGC, ReferenceAnchor, conceptor, feature_energy

__all__ = ["EAGC", "ReferenceAnchor", "conceptor", "feature_energy"]
