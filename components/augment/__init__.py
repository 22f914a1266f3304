"""The augment component: ``augment`` on the default image, ``build(image)`` on another."""

from .component import augment, build

__all__ = ["augment", "build"]
