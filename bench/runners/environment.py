"""Facts about the process a run executes in: versions, git revision, host and peak memory."""

import logging
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

logger = logging.getLogger(__name__)

PACKAGES = ("bench", "torch", "torchvision", "timm", "anomalib", "numpy", "scikit-learn")
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def package_versions() -> dict[str, str]:
    """Return the installed versions of the packages that shape a result, and Python's."""
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def git_revision() -> str | None:
    """Return the commit of the bench checkout, with "-dirty" for uncommitted changes; None outside git."""
    source = Path(__file__).resolve().parents[2]
    try:
        revision = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{revision}-dirty" if dirty else revision


def host_name() -> str:
    return socket.gethostname()


def reset_peak_memory() -> None:
    """Reset the kernel's peak resident set size of this process (Linux >= 4.0), if allowed."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        logger.debug("cannot reset the peak RSS; the peak will cover the whole process")


def peak_memory_mb() -> float | None:
    """Return the peak resident set size (VmHWM) since the last reset, in MiB; None off Linux."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None
