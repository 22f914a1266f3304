"""The validate component: ``validate`` on the default image, ``build(image)`` on another."""

from .component import build, validate

__all__ = ["build", "validate"]
