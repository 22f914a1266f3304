"""The multimodal_instruct component: on the default image, or `build(image)` on another."""

from .component import build, multimodal_instruct

__all__ = ["build", "multimodal_instruct"]
