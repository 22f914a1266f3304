"""The pretrain component: ``pretrain`` on the default image, ``build(image)`` on another."""

from .component import build, pretrain

__all__ = ["build", "pretrain"]
