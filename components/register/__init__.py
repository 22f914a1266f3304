"""The register component: ``register`` on the default image, ``build(image)`` on another."""

from .component import build, register

__all__ = ["build", "register"]
