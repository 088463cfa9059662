"""The documented install route: the built wheel, installed by scripts/install.sh into a clean
virtualenv (not editable), then --version, init, check and a short run against real Mosquitto."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.mosquitto import Mosquitto
from tests.conftest import IN_CI, ROOT
from tests.support.mqtt_probe import MqttProbe

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

WHEELHOUSE = ROOT / ".venv" / "wheelhouse"  # the dependencies' wheels (scripts/bootstrap.sh)
INSTALL = ROOT / "scripts" / "install.sh"


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, check=False, timeout=300,
                            **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`make dist`'s build (offline: the test venv's setuptools instead of an isolated one)."""
    if not (WHEELHOUSE / ".stamp").exists():
        reason = f"{WHEELHOUSE} is missing (scripts/bootstrap.sh collects it)"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)])
    yield out


@pytest.fixture(scope="module")
def installed(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """scripts/install.sh WHEEL --root DIR: what it printed, and DIR."""
    (wheel,) = built.glob("lkbridge-*.whl")
    root = tmp_path_factory.mktemp("root")
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(WHEELHOUSE),
           "PYTHON": sys.executable}
    env.pop("LKBRIDGE_CONFIG", None)
    done = _run(["bash", str(INSTALL), "--root", str(root), str(wheel)], env=env, cwd=root)
    yield root, done.stdout


def lkbridge_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LKBRIDGE_CONFIG", "PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, **extra}


def test_the_sdist_carries_what_installing_needs(built: Path) -> None:
    import tarfile

    (sdist,) = built.glob("lkbridge-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    for needed in ("scripts/install.sh", "systemd/lkbridge.service", "config.example.toml",
                   "lkbridge/data/lkbridge.service", "lkbridge/data/config.example.toml",
                   "docs/deployment.md"):
        assert needed in names


def test_install_script_lays_out_the_service(installed: tuple[Path, str]) -> None:
    root, printed = installed
    venv = root / "opt" / "lkbridge"
    assert (venv / "bin" / "lkbridge").exists()
    assert os.readlink(root / "usr/local/bin/lkbridge") == "/opt/lkbridge/bin/lkbridge"
    unit = root / "etc/systemd/system/lkbridge.service"
    assert unit.read_text() == (ROOT / "systemd/lkbridge.service").read_text()
    config = root / "etc/lkbridge/config.toml"
    assert config.read_text().startswith("# lkbridge configuration, written by `lkbridge init`")
    assert (root / "etc/lkbridge").stat().st_mode & 0o777 == 0o755
    assert config.stat().st_mode & 0o777 == 0o644
    assert (root / "etc/lkbridge/credentials").stat().st_mode & 0o777 == 0o700
    assert "lkbridge 0.1.0 is installed. Next steps:" in printed
    # not an editable install: the package is the wheel's copy in the virtualenv
    where = _run([str(venv / "bin/python"), "-c", "import lkbridge, importlib.metadata as m; "
                  "print(lkbridge.__file__); print(m.distribution('lkbridge').read_text("
                  "'direct_url.json'))"], cwd=root, env=lkbridge_env())
    file, direct_url = where.stdout.split("\n", 1)
    assert file.startswith(str(venv / "lib"))
    assert "editable" not in json.loads(direct_url).get("dir_info", {})


def test_install_script_is_idempotent_and_keeps_what_is_there(
    installed: tuple[Path, str], built: Path
) -> None:
    root, _ = installed
    (wheel,) = built.glob("lkbridge-*.whl")
    config = root / "etc/lkbridge/config.toml"
    unit = root / "etc/systemd/system/lkbridge.service"
    config.write_text(config.read_text() + "# my edit\n")
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(WHEELHOUSE),
           "PYTHON": sys.executable}
    again = _run(["bash", str(INSTALL), "--root", str(root), str(wheel)], env=env)
    assert config.read_text().endswith("# my edit\n")
    assert f"keeping the existing {root}/etc/lkbridge/config.toml" in again.stdout
    assert "is up to date" in again.stdout
    unit.write_text(unit.read_text() + "# my unit edit\n")
    third = _run(["bash", str(INSTALL), "--root", str(root), str(wheel)], env=env)
    assert unit.read_text().endswith("# my unit edit\n")
    assert (root / "etc/systemd/system/lkbridge.service.new").read_text() == (
        ROOT / "systemd/lkbridge.service").read_text()
    assert "keeping your" in third.stdout


def test_the_installed_wheel_runs(installed: tuple[Path, str], tmp_path: Path,
                                  mqtt_broker: Mosquitto) -> None:
    root, _ = installed
    lkbridge = str(root / "opt/lkbridge/bin/lkbridge")
    work = tmp_path / "work"
    (work / "lkbridge").mkdir(parents=True)  # a folder named like the package must not shadow it
    env = lkbridge_env(LIVEKIT_API_SECRET="s" * 32)

    version = _run([lkbridge, "--version"], cwd=work, env=env)
    assert version.stdout == "lkbridge 0.1.0\n"
    config = work / "etc" / "config.toml"
    _run([lkbridge, "init", str(config)], cwd=work, env=env)
    assert _run([lkbridge, "init", "--print-unit"], cwd=work, env=env).stdout == (
        ROOT / "systemd/lkbridge.service").read_text()
    # the documented edits: the broker's address, and here a state directory of the test's own
    text = config.read_text().replace(
        'server = "mqtt://127.0.0.1:1883"', f'server = "mqtt://127.0.0.1:{mqtt_broker.port}"')
    base = f"install-{os.getpid()}"
    text = text.replace('base_topic = "lkbridge"', f'base_topic = "{base}"')
    config.write_text(text + f'\n[state]\ndirectory = "{tmp_path / "state"}"\n')
    checked = _run([lkbridge, "check", "-c", str(config)], cwd=work, env=env)
    assert checked.stdout.startswith(f"{config}: OK — 1 session(s) (demo); MQTT 127.0.0.1:"
                                     f"{mqtt_broker.port}")

    probe = MqttProbe("127.0.0.1", mqtt_broker.port, f"{base}/#")
    log = (tmp_path / "daemon.log").open("w")
    daemon = subprocess.Popen([lkbridge, "run"], cwd=work, stdout=log, stderr=subprocess.STDOUT,
                              env={**env, "LKBRIDGE_CONFIG": str(config)})
    try:
        import asyncio

        asyncio.run(probe.wait_for(f"{base}/bridge/state",
                                   lambda m: m.json() == {"state": "online"}, timeout=60))
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
        asyncio.run(probe.wait_for(f"{base}/bridge/state",
                                   lambda m: m.json() == {"state": "offline"}, timeout=10))
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)
        log.close()
        probe.close()
    lines = (tmp_path / "daemon.log").read_text().splitlines()
    # lkbridge's own events; a LiveKit native line (its own thread, here about the starter
    # config's unreachable server) may be written after the last of them
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    events = [e["event"] for e in entries if str(e.get("logger", "")).startswith("lkbridge")]
    assert "daemon_ready" in events and events[-1] == "daemon_stopped", lines
