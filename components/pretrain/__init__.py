"""The pretrain component: ``build(image)`` gives it on the lmforge image."""

from .component import build

__all__ = ["build"]
