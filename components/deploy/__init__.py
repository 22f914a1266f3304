"""The deploy component: ``deploy`` on the default image, ``build(image)`` on another."""

from .component import build, deploy

__all__ = ["build", "deploy"]
