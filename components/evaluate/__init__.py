"""The evaluate component: ``evaluate`` on the default image, ``build(image)`` on another."""

from .component import build, evaluate

__all__ = ["build", "evaluate"]
