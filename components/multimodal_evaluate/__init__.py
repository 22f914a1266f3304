"""The multimodal_evaluate component: on the default image, or `build(image)` on another."""

from .component import build, multimodal_evaluate

__all__ = ["build", "multimodal_evaluate"]
