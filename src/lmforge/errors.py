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


# --------------------------------------------------------------------------------------------
# Explaining any failure in one paragraph (the CLI's single handler)
# --------------------------------------------------------------------------------------------

DEBUG_ENV = "LMFORGE_DEBUG"
_MAX_CHARS = 800


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_CHARS else text[: _MAX_CHARS - 3] + "..."


def _root_cause(exc: BaseException) -> BaseException:
    seen = {id(exc)}
    while (nxt := exc.__cause__ or exc.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        exc = nxt
    return exc


def _tracking_uri() -> str:
    import sys

    mlflow = sys.modules.get("mlflow")
    try:
        return mlflow.get_tracking_uri() if mlflow else "the MLflow tracking server"
    except Exception:  # only decorates the message
        return "the MLflow tracking server"


def _cause_and_fix(exc: BaseException) -> tuple[str, str, int]:
    """What failed, what to do about it, and the exit code, for an exception of any kind."""
    if isinstance(exc, LmforgeError):
        return str(exc), "", exc.exit_code
    kind = f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins.")
    root = _root_cause(exc)
    detail = f"{kind}: {exc}"
    if root is not exc:
        detail += f" (caused by {type(root).__name__}: {root})"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", "outputs of an interrupted step are not written; rerun it", 130
    if kind.startswith("mlflow."):
        return (
            f"MLflow at {_tracking_uri()} failed: {detail}",
            "check that the tracking server is up and MLFLOW_TRACKING_URI (or "
            "tracking.tracking_uri in params.yaml) points at it, with valid credentials",
            1,
        )
    if kind.startswith(("urllib3.", "requests.", "kfp_server_api.", "kubernetes.")) or isinstance(
        exc, ConnectionError | TimeoutError
    ):
        return (
            f"a server could not be reached or refused the request: {detail}",
            "check the address (--host, kubeflow.host, MLFLOW_TRACKING_URI), the network and "
            "the credentials, then rerun",
            1,
        )
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        return (
            f"a file operation failed{where}: {detail}",
            "check that the path exists and is writable, and that the disk has room",
            1,
        )
    if isinstance(exc, MemoryError | RecursionError):
        return detail, "the input is too large or too deeply nested for this step", 1
    return (
        f"unexpected {detail}",
        f"this is a bug or an unanticipated input: rerun with {DEBUG_ENV}=1 for the traceback "
        "and report it",
        1,
    )


def failure_paragraph(exc: BaseException, step: str) -> tuple[str, int]:
    """``(message, exit code)``: one paragraph naming the step, the cause and the fix.

    With ``LMFORGE_DEBUG=1`` the traceback follows the paragraph.
    """
    import os
    import traceback

    cause, fix, code = _cause_and_fix(exc)
    text = f"error: {step}: {_one_line(cause)}"
    if fix:
        text += f". Fix: {fix}."
    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        text += "\n" + "".join(traceback.format_exception(exc)).rstrip()
    return text, code
