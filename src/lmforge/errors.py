"""Errors a user can act on. The CLI prints their message as is and exits non-zero."""


class LmforgeError(Exception):
    """Base class: the message names the file or field at fault and how to fix it."""

    exit_code = 1


class ConfigError(LmforgeError, ValueError):
    """A params file or override that does not fit the schema; the message says where and how."""

    exit_code = 2


class DataError(LmforgeError):
    """Input data that a stage refuses (bad file, schema, encoding, failed expectations)."""


class TrainingError(LmforgeError):
    """Training that cannot go on (diverged loss, unusable checkpoint, bad launch settings)."""


class RegistryError(LmforgeError):
    """A registry operation refused (promotion gate failed, missing model or alias)."""


class LaunchError(LmforgeError):
    """A PyTorchJob that could not be created, or that failed (its reason is in the message)."""


class PipelineError(LmforgeError):
    """A Kubeflow pipeline that could not be compiled, submitted or run (dirty tree, bad name)."""
