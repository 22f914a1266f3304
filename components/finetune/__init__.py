"""The finetune component: ``finetune`` on the default image, ``build(image)`` on another."""

from .component import build, finetune

__all__ = ["build", "finetune"]
