"""scripts/system-deps: which packages it installs for which missing needs, and its one-line refusal.

A fresh machine is made real with Linux namespaces: in a private mount namespace, empty tmpfs mounts hide
/usr/sbin (mosquitto), /usr/lib/postgresql (initdb, pg_ctl) or the Python headers, and PATH holds only a
directory the test fills. Running apt-get for real would change the machine every engineer shares, so
PATH's apt-get is a stand-in: it records its arguments and "installs" a package by dropping executables
with the package's program names into that directory, which is all the script looks for.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "system-deps"
# Debian's own Python, which make test completes with python3.X-dev and python3.X-venv (a pyenv Python in
# /root would not be readable by the unprivileged user of the refusal test)
PYTHON = "/usr/bin/python3"
PROGRAMS = {"mosquitto": ["mosquitto", "mosquitto_passwd"], "postgresql": ["initdb", "pg_ctl"], "g++": ["g++"],
            "chromium": ["chromium"], "chromium-driver": ["chromedriver"], "systemd": ["systemd-analyze"],
            "nats-server": ["nats-server"]}
# the dashboard tests' browser, the service-unit check and the NATS cluster: given in the cases about other needs
BROWSER = ("chromium", "chromedriver", "systemd-analyze", "nats-server")
FAKE_APT = """#!{python}
import os, sys
from pathlib import Path
here = Path(sys.argv[0]).parent
with open(here.parent / "apt.log", "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
programs = {programs!r}
for package in sys.argv[1:]:
    for name in programs.get(package, []):
        (here / name).unlink(missing_ok=True)  # a symlink to the real program: never write through it
        (here / name).write_text("#!/bin/sh\\n")
        (here / name).chmod(0o755)
"""


def python_facts() -> tuple[str, str, bool]:
    """PYTHON's Debian package stem ("python3.11"), its include directory, and whether it is complete."""
    code = ("import importlib.util, os, sys, sysconfig; inc = sysconfig.get_paths()['include']; "
            "print(f'python3.{sys.version_info[1]}', inc, importlib.util.find_spec('ensurepip') is not None "
            "and os.path.isfile(os.path.join(inc, 'Python.h')))")
    if not Path(PYTHON).exists():
        return "", "", False
    done = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=30, check=False)
    version, include, complete = (done.stdout.split() + ["", "", ""])[:3]
    return version, include, complete == "True"


VERSION, INCLUDE, COMPLETE = python_facts()
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("setpriv"),
                       reason="needs root and util-linux (unshare, setpriv) to build the cases"),
    pytest.mark.skipif(not COMPLETE,
                       reason=f"{PYTHON} with its headers and ensurepip (make test installs them on Debian)"),
]


@pytest.fixture
def machine():
    """A world-readable directory: bin/ (PATH) and apt.log."""
    root = Path(tempfile.mkdtemp(prefix="edgefleet-deps-"))
    root.chmod(0o755)
    (root / "bin").mkdir(mode=0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def provide(machine: Path, *names: str) -> None:
    """Puts the real program (or, for apt-get, the recording stand-in) on the test's PATH; the browser's
    programs are stand-ins too, where this machine has none or keeps them in /usr/sbin (hidden in some cases)."""
    for name in names:
        target = machine / "bin" / name
        if name in BROWSER and not (shutil.which(name) or "/usr/sbin/").startswith(("/usr/bin/", "/bin/")):
            target.write_text("#!/bin/sh\n")
            target.chmod(0o755)
        elif name == "apt-get":
            target.write_text(FAKE_APT.format(python=sys.executable, programs=PROGRAMS))
            target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        else:
            target.symlink_to(shutil.which(name) or f"/usr/sbin/{name}")


def run(machine: Path, mode: str = "test", *, hide: tuple[str, ...] = (), user: int | None = None,
        make: bool = False, passwd: Path | None = None) -> subprocess.CompletedProcess:
    """The script (or `make test`) with PATH = machine/bin, `hide` covered by empty tmpfs mounts, and
    `passwd` bound over /etc/passwd."""
    mount = shutil.which("mount")
    mounts = "".join(f"if [ -d {path} ]; then {mount} -t tmpfs none {path} || exit 99; fi; " for path in hide)
    if passwd is not None:
        mounts += f"{mount} --bind {passwd} /etc/passwd || exit 99; "
    drop = f"{shutil.which('setpriv')} --reuid={user} --regid={user} --clear-groups " if user is not None else ""
    command = f"{shutil.which('make')} -s -C {REPO} test" if make else f"{shutil.which('bash')} {SCRIPT} {mode}"
    env = {"PATH": str(machine / "bin"), "PYTHON": PYTHON, "HOME": str(machine), "LANG": "C.UTF-8"}
    return subprocess.run([shutil.which("unshare"), "--mount", shutil.which("bash"), "-c", mounts + "exec " + drop
                           + command], capture_output=True, text=True, timeout=120, check=False, env=env)


def apt_calls(machine: Path) -> list[str]:
    log = machine / "apt.log"
    return log.read_text().splitlines() if log.exists() else []


SERVICES = ("/usr/sbin", "/usr/lib/postgresql")
ALL_MISSING = "mosquitto, mosquitto_passwd, initdb, pg_ctl"


def test_nothing_missing_installs_nothing(machine):
    if not all(shutil.which(n) for n in ("g++", "mosquitto_passwd")) or not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("this machine lacks a test dependency (make test installs them)")
    provide(machine, *BROWSER, "g++", "mosquitto_passwd", "apt-get")  # initdb, pg_ctl: /usr/lib/postgresql/*/bin
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        provide(machine, "initdb", "pg_ctl")
    result = run(machine)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert apt_calls(machine) == []  # not even apt-get update


def test_as_root_installs_only_the_missing_packages_after_one_update(machine):
    provide(machine, *BROWSER, "g++", "apt-get")
    result = run(machine, hide=SERVICES)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"system-deps: installing mosquitto postgresql (missing: {ALL_MISSING})\n"
    assert apt_calls(machine) == ["update -qq", "install -y -qq --no-install-recommends mosquitto postgresql"]


def test_postgresql_present_means_only_mosquitto_is_installed(machine):
    if not list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")):
        pytest.skip("PostgreSQL's server binaries are not installed here")
    provide(machine, *BROWSER, "g++", "apt-get")
    result = run(machine, hide=("/usr/sbin",))
    assert result.returncode == 0, result.stderr
    assert apt_calls(machine) == ["update -qq", "install -y -qq --no-install-recommends mosquitto"]


def test_as_root_without_the_postgres_user_installs_postgresql(machine):
    if not list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")) or not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("PostgreSQL's server binaries or mosquitto are not installed here")
    provide(machine, *BROWSER, "g++", "mosquitto_passwd", "apt-get")
    passwd = machine / "passwd"
    passwd.write_text("".join(line + "\n" for line in Path("/etc/passwd").read_text().splitlines()
                              if not line.startswith("postgres:")))
    result = run(machine, passwd=passwd)
    # the stand-in apt-get makes no user: the script checks again and says so
    assert result.returncode == 2
    assert result.stderr == ("system-deps: make test needs the postgres user, which this machine lacks; "
                             "still missing after apt-get install\n")
    assert apt_calls(machine) == ["update -qq", "install -y -qq --no-install-recommends postgresql"]


def test_build_mode_wants_the_compiler_and_python_headers_but_no_services(machine):
    provide(machine, "apt-get")
    result = run(machine, "build", hide=(*SERVICES, INCLUDE))
    # the stand-in apt-get brings no headers: the script checks again and says what is still missing
    assert result.returncode == 2
    assert result.stderr == (f"system-deps: make venv needs Python.h ({VERSION}), which this machine lacks; "
                             "still missing after apt-get install\n")
    assert apt_calls(machine) == ["update -qq", f"install -y -qq --no-install-recommends g++ {VERSION}-dev"]


def test_refuses_in_one_line_when_not_root(machine):
    provide(machine, *BROWSER, "g++", "apt-get")
    result = run(machine, hide=SERVICES, user=65534)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (f"system-deps: make test needs {ALL_MISSING}, which this machine lacks; run as root: "
                             "apt-get install --no-install-recommends mosquitto postgresql\n")
    assert apt_calls(machine) == []


def test_refuses_in_one_line_without_apt_get(machine):
    provide(machine, *BROWSER, "g++")
    result = run(machine, hide=SERVICES)
    assert result.returncode == 2
    assert result.stderr == (f"system-deps: make test needs {ALL_MISSING}, which this machine lacks; install the "
                             "packages that provide them (Debian/Ubuntu: mosquitto postgresql)\n")


def test_make_test_stops_before_building_or_testing_anything(machine):
    provide(machine, *BROWSER, "g++", "bash", "sh")  # no apt-get
    result = run(machine, hide=SERVICES, make=True)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"system-deps: make test needs {ALL_MISSING}, which this machine lacks")
    assert len(lines) == 2 and "Error 2" in lines[1]  # make's own line naming the failed step
    assert "pytest" not in result.stdout + result.stderr and "pip" not in result.stdout


def test_a_machine_without_chromium_gets_it_and_its_driver(machine):
    if not list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")) or not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("PostgreSQL's server binaries or mosquitto are not installed here")
    provide(machine, "g++", "mosquitto_passwd", "apt-get", "systemd-analyze")
    result = run(machine)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "system-deps: installing chromium chromium-driver (missing: chromium, chromedriver)\n"
    assert apt_calls(machine) == ["update -qq", "install -y -qq --no-install-recommends chromium chromium-driver"]



def test_a_machine_without_systemd_analyze_gets_systemd(machine):
    if not list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")) or not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("PostgreSQL's server binaries or mosquitto are not installed here")
    provide(machine, "g++", "mosquitto_passwd", "apt-get", "chromium", "chromedriver")
    result = run(machine)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "system-deps: installing systemd (missing: systemd-analyze)\n"
    assert apt_calls(machine) == ["update -qq", "install -y -qq --no-install-recommends systemd"]


def test_a_machine_without_nats_server_gets_it(machine):
    if not list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")) or not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("PostgreSQL's server binaries or mosquitto are not installed here")
    provide(machine, "g++", "mosquitto_passwd", "apt-get", "chromium", "chromedriver", "systemd-analyze")
    result = run(machine, hide=("/usr/sbin",))  # where Debian puts nats-server (and mosquitto)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "system-deps: installing mosquitto nats-server (missing: mosquitto, nats-server)\n"
    assert apt_calls(machine) == ["update -qq", "install -y -qq --no-install-recommends mosquitto nats-server"]
