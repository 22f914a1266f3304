"""The multimodal_align component: on the default image, or `build(image)` on another."""

from .component import build, multimodal_align

__all__ = ["build", "multimodal_align"]
