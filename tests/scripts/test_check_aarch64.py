"""scripts/check-aarch64 refuses, with exit code 2 and one clear line, where it cannot run.

The full check (minutes under qemu) runs in .ci/run; these cases take a second each. Where binfmt_misc
or mounting is unavailable is made real with Linux namespaces: an unprivileged user, or a user
namespace whose "root" may not mount proc nor register binary formats.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check-aarch64"
TOOLS_INSTALLED = bool(shutil.which("debootstrap") and shutil.which("update-binfmts")
                       and Path("/usr/bin/qemu-aarch64-static").exists())

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("setpriv"),
                                reason="needs root and util-linux (unshare, setpriv) to build the cases")


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def assert_refused(result: subprocess.CompletedProcess, reason: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert lines == [f"check-aarch64: cannot run here: {reason}"], result.stderr


def test_refuses_without_root():
    result = run("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", str(SCRIPT))
    assert_refused(result, "needs root (debootstrap, chroot, mount, binfmt); run it with sudo")


@pytest.mark.skipif(not TOOLS_INSTALLED, reason="debootstrap, qemu-user-static and binfmt-support not installed yet")
def test_refuses_where_binfmt_misc_is_not_available():
    # an empty tmpfs over binfmt_misc, in a private mount namespace: the kernel feature is not there
    hide = f"mount -t tmpfs none /proc/sys/fs/binfmt_misc && exec bash {SCRIPT} --no-parity"
    result = run("unshare", "--user", "--map-root-user", "--mount", "bash", "-c", hide)
    assert_refused(result, "/proc/sys/fs/binfmt_misc is not a binfmt_misc file system (it has no register file)")


@pytest.mark.skipif(not TOOLS_INSTALLED, reason="debootstrap, qemu-user-static and binfmt-support not installed yet")
def test_refuses_where_it_may_not_mount(tmp_path):
    root = tmp_path / "arm64"  # marked as bootstrapped, so the script goes straight to mounting /proc in it
    root.mkdir()
    (root / ".edgefleet-bootstrap-ok").write_text("2026-01-01T00:00:00Z\n")
    result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", str(SCRIPT), "--no-parity"],
                            capture_output=True, text=True, timeout=60, check=False,
                            env={**os.environ, "EDGEFLEET_ARM64_ROOT": str(root)})
    assert_refused(result, "cannot mount /proc in the arm64 root (mount -t proc proc): no mount privilege here?")
