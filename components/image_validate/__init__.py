"""The image_validate component: ``image_validate`` on the default image, ``build(image)`` on
another."""

from .component import build, image_validate

__all__ = ["build", "image_validate"]
