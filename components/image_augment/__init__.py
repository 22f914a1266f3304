"""The image_augment component: ``image_augment`` on the default image, ``build(image)`` on
another."""

from .component import build, image_augment

__all__ = ["build", "image_augment"]
