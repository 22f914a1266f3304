"""Git facts for lineage (MLflow tags) and pipeline version names."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_state(repo: Path | None = None) -> tuple[str, list[str]]:
    """(HEAD commit, changed tracked files) of ``repo`` (default: the working directory).

    Raises ``OSError`` or ``subprocess.CalledProcessError`` outside a git checkout.
    """
    cwd = repo or Path.cwd()
    sha = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sha, [line[3:] for line in status.splitlines() if line.strip()]
