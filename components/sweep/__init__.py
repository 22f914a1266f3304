"""The sweep pipeline's components: ``sweep_plan``, ``sweep_trial``, ``sweep_best`` on the default
image; ``build(image)`` gives the three on another."""

from .component import build, sweep_best, sweep_plan, sweep_trial

__all__ = ["build", "sweep_best", "sweep_plan", "sweep_trial"]
