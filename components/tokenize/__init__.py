"""The tokenize component: ``tokenize`` on the default image, ``build(image)`` on another."""

from .component import build, tokenize

__all__ = ["build", "tokenize"]
