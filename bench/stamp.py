"""The header stamp of every result: which GPU, which software, which commit, when, by which command."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch
import triton

REPO_ROOT = Path(__file__).resolve().parent.parent
# Distributions whose versions are stamped when installed; the peers are absent on most machines.
STAMPED_DISTRIBUTIONS = ("quack-kernels", "nvidia-cutlass-dsl", "liger-kernel")


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit() -> str:
    """$RMSNORM_GIT_COMMIT when set; else HEAD's hash, "+dirty" when the work tree differs.

    The variable comes first: a copy of the work tree sent to a GPU machine can carry a stale .git
    (on 2026-11-25 it named the session's first commit, "+dirty", for every later tree).
    """
    if os.environ.get("RMSNORM_GIT_COMMIT"):
        return os.environ["RMSNORM_GIT_COMMIT"]
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return "unknown"
    return commit + ("+dirty" if _git("status", "--porcelain", "--untracked-files=no") else "")


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def gpu_slug(name: str) -> str:
    """Folder name of a GPU: "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def stamp() -> dict:
    """GPU name, SM count, memory, software versions, commit, UTC date and the command line of this run."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {
        "gpu": props.name,
        "sm_count": props.multi_processor_count,
        "compute_capability": f"{props.major}.{props.minor}",
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "peers": {d: v for d in STAMPED_DISTRIBUTIONS if (v := _version(d))},
        "git_commit": git_commit(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
    }
