"""lmforge: train transformer language models through Kubeflow, DVC and MLflow with one codebase."""

__version__ = "0.1.0"
