"""Runs inside the booted test container: installs lkbridge as docs/deployment.md says, checks it.

Started by the container's systemd (lkb-systemd-test.service, made by scripts/test-systemd).
Prints one TAP-like line per check to /results/result.txt, then powers the container off.
Only the Python standard library and the mosquitto clients: this is the admin's side.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path("/results")
SRC = Path("/src")
ADDR = "198.18.0.1"
AGENT = "systemd-agent"
UNIT = "lkbridge.service"
CONF_DIR = Path("/etc/lkbridge")
CONFIG = CONF_DIR / "config.toml"
CRED = CONF_DIR / "credentials" / "livekit-api-secret"
DROPINS = Path("/etc/systemd/system/lkbridge.service.d")
BASE = "lkbridge"

results: list[str] = []
failures = 0


def say(line: str) -> None:
    print(line, flush=True)
    with (RESULTS / "result.txt").open("a") as handle:
        handle.write(line + "\n")


def check(name: str, ok: bool, detail: str = "") -> bool:
    global failures
    if not ok:
        failures += 1
    say(f"{'ok' if ok else 'not ok'} {len(results) + 1} - {name}" + (f"  # {detail}" if detail else ""))
    results.append(name)
    return ok


def run(*cmd: str, check_rc: bool = False, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check_rc and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def show(prop: str) -> str:
    return run("systemctl", "show", "-p", prop, "--value", UNIT).stdout.strip()


def until(predicate: Callable[[], Any], timeout: float, step: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def retained(topic: str, timeout: float = 5) -> dict[str, Any] | None:
    proc = run("mosquitto_sub", "-h", "127.0.0.1", "-t", topic, "-C", "1", "-W", str(int(timeout)), timeout=timeout + 5)
    text = proc.stdout.strip()
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return {"_raw": text}


def request(action: str, body: dict[str, Any], timeout: float = 15) -> dict[str, Any] | None:
    proc = run(
        "mosquitto_rr", "-h", "127.0.0.1", "-V", "mqttv5", "-t", f"{BASE}/bridge/request/{action}",
        "-e", f"{BASE}/test-replies/{time.monotonic_ns()}", "-m", json.dumps(body),
        "-W", str(int(timeout)), timeout=timeout + 5,
    )
    text = proc.stdout.strip()
    return json.loads(text) if text else None


def journal(since: str = "") -> str:
    args = ["journalctl", "-u", UNIT, "-o", "cat", "--no-pager"]
    if since:
        args += ["--since", since]
    return run(*args).stdout


class EventLog:
    """mosquitto_sub on a topic (bridge/event by default), in the background."""

    def __init__(self, topic: str = f"{BASE}/bridge/event", name: str = "bridge-events.txt") -> None:
        self.path = RESULTS / name
        self.handle = self.path.open("a")
        self.proc = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-t", topic], stdout=self.handle,
            stderr=subprocess.DEVNULL,
        )

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        return out

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") == name]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        self.handle.close()


def kitchen_state() -> dict[str, Any]:
    return retained(f"{BASE}/kitchen/state") or {}


def kitchen_ready() -> bool:
    state = kitchen_state()
    return state.get("connection_state") == "connected" and (state.get("agent") or {}).get(
        "state"
    ) == "listening"


def write_config(stack: dict[str, str], *, extra_session: bool = False, broken: bool = False) -> None:
    text = (
        '[mqtt]\nhost = "127.0.0.1"\nport = 1883\nbase_topic = "lkbridge"\n\n'
        f'[sessions.kitchen]\nagent_name = "{AGENT}"\n\n'
        f'[sessions.kitchen.token]\nsource = "minted"\nurl = "{stack["url"]}"\n'
        f'api_key = "{stack["api_key"]}"\napi_secret = {{ credential = "livekit-api-secret" }}\n'
    )
    if extra_session:
        text += (
            f'\n[sessions.hall]\nagent_name = "{AGENT}"\nautostart = false\n\n'
            f'[sessions.hall.token]\nsource = "minted"\nurl = "{stack["url"]}"\n'
            f'api_key = "{stack["api_key"]}"\napi_secret = {{ credential = "livekit-api-secret" }}\n'
        )
    if broken:
        text += "\n[sessions.hall\n"  # a typo: invalid TOML
    # As an admin edits it: the file keeps its mode (sudoedit does the same).
    CONFIG.write_text(text)


def install() -> None:
    """docs/deployment.md, "Install": this checkout, its dependencies from the host's wheels."""
    run("python3", "-m", "venv", "/opt/lkbridge", check_rc=True)
    run(
        "/opt/lkbridge/bin/pip", "install", "-q", "--no-index", "--find-links", "/wheels",
        "--only-binary=livekit", str(SRC), check_rc=True, timeout=300,
    )


def start_stack() -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    ready = Path("/run/lkb-stack.json")
    log = (RESULTS / "stack.log").open("ab")
    proc = subprocess.Popen(
        ["/opt/lkbridge/bin/python", str(SRC / "scripts/systemd-test/stack.py"), ADDR, AGENT,
         str(ready)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    if not until(ready.exists, 60) or proc.poll() is not None:
        raise RuntimeError("the LiveKit server and agent did not start (see stack.log)")
    time.sleep(0.2)
    return proc, json.loads(ready.read_text())


def configure(stack: dict[str, str]) -> None:
    """docs/deployment.md, "Configure" and "Secrets", as root with the usual umask 022."""
    os.umask(0o022)
    run("mkdir", "-p", str(CRED.parent), check_rc=True)
    run("/opt/lkbridge/bin/lkbridge", "init", str(CONFIG), check_rc=True)
    write_config(stack)
    run("install", "-m", "0600", "/dev/stdin", str(CRED), input=stack["api_secret"], check_rc=True)
    DROPINS.mkdir(parents=True, exist_ok=True)
    (DROPINS / "credentials.conf").write_text(
        f"[Service]\nLoadCredential=livekit-api-secret:{CRED}\n"
    )
    run("install", "-m", "0644", str(SRC / "systemd/lkbridge.service"),
        f"/etc/systemd/system/{UNIT}", check_rc=True)
    run("systemctl", "daemon-reload", check_rc=True)


def main() -> int:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "result.txt").write_text("")
    t0 = time.monotonic()
    install()
    say(f"# installed in {time.monotonic() - t0:.1f} s")
    stack_proc, stack = start_stack()
    configure(stack)
    check_cfg = run("/opt/lkbridge/bin/lkbridge", "check", "-c", str(CONFIG))
    check("lkbridge check accepts the documented config", check_cfg.returncode == 0,
          check_cfg.stdout.strip() + check_cfg.stderr.strip())
    events = EventLog()
    messages = EventLog(f"{BASE}/kitchen/message", "kitchen-messages.txt")

    # -- start and READY --------------------------------------------------------------------
    started = run("systemctl", "enable", "--now", UNIT, timeout=90)
    check("systemctl enable --now returns 0 (READY=1 arrived)", started.returncode == 0,
          started.stderr.strip())
    check("active (running) after start", show("ActiveState") == "active"
          and show("SubState") == "running", show("ActiveState") + "/" + show("SubState"))
    mode_warnings = [ln for ln in journal().splitlines() if "mode" in ln.lower() and "directory" in ln.lower()]
    check("no directory mode warning from systemd", not mode_warnings, "; ".join(mode_warnings))
    online = until(lambda: (retained(f"{BASE}/bridge/state") or {}).get("state") == "online", 10)
    check("bridge/state online over MQTT", bool(online))

    # -- secrets from LoadCredential, the native library under the hardening ----------------
    connected = until(kitchen_ready, 45, step=1)
    check("session connected with the credential secret and the agent listening "
          "(LiveKit native library under MemoryDenyWriteExecute + SystemCallFilter)",
          bool(connected), json.dumps(kitchen_state())[:400])
    status = until(lambda: "1/1 session(s) connected" in show("StatusText") and show("StatusText"), 10)
    check("STATUS says 1/1 connected once connected", bool(status), show("StatusText"))
    hardening = {p: show(p) for p in ("MemoryDenyWriteExecute", "DynamicUser", "NoNewPrivileges",
                                        "ProtectSystem", "PrivateUsers")}
    check("hardening in force", hardening["MemoryDenyWriteExecute"] == "yes"
          and hardening["DynamicUser"] == "yes" and hardening["ProtectSystem"] == "strict",
          json.dumps(hardening))
    secret_leaks = [p for p in (journal(), Path("/var/lib/private/lkbridge").as_posix())
                    if stack["api_secret"] in p]
    check("the secret is not in the journal", not secret_leaks)

    # -- a message, then history across a restart -------------------------------------------
    run("mosquitto_pub", "-h", "127.0.0.1", "-q", "1", "-t", f"{BASE}/kitchen/send",
        "-m", json.dumps({"text": "remember me", "id": "sd-1"}), check_rc=True)

    def history() -> list[dict[str, Any]]:
        reply = request("session/history", {"session": "kitchen"}) or {}
        return list((reply.get("data") or {}).get("messages", []))

    def history_texts() -> list[str]:
        return [m.get("text", "") for m in history()]

    def answered_once() -> bool:
        kinds = [(m.get("type"), m.get("final")) for m in history()]
        return ("user_input", True) in kinds and ("agent_transcript", True) in kinds

    answered = until(answered_once, 20, step=0.5)
    check("a send reaches the agent and its final answer is in history", bool(answered),
          json.dumps(history())[:600])
    database = Path("/var/lib/private/lkbridge/lkbridge.sqlite3")
    check("history database in the StateDirectory", database.exists(), str(database))
    pid_before = show("MainPID")
    restarted = run("systemctl", "restart", UNIT, timeout=90)
    check("systemctl restart", restarted.returncode == 0 and show("MainPID") != pid_before,
          restarted.stderr.strip())
    kept = until(lambda: "remember me" in history_texts() and answered_once(), 15, step=0.5)
    check("history kept across a restart", bool(kept), str(history_texts()))

    # -- reload -----------------------------------------------------------------------------
    pid = show("MainPID")
    write_config(stack, extra_session=True)
    reloaded = run("systemctl", "reload", UNIT, timeout=60)
    info = until(lambda: "hall" in ((retained(f"{BASE}/bridge/info") or {}).get("sessions") or [])
                 and retained(f"{BASE}/bridge/info"), 10)
    check("systemctl reload applies a new session", reloaded.returncode == 0 and bool(info)
          and show("MainPID") == pid, reloaded.stderr.strip())
    write_config(stack, extra_session=True, broken=True)
    failed = run("systemctl", "reload", UNIT, timeout=60)
    check("systemctl reload fails for an invalid config", failed.returncode != 0,
          f"rc={failed.returncode} {failed.stderr.strip()[:300]}")
    check("STATUS tells of the failed reload", "reload failed" in show("StatusText"),
          show("StatusText"))
    check("bridge/event config_reload_failed", bool(until(lambda: events.named("config_reload_failed"), 5)),
          json.dumps(events.events()[-3:]))
    check("still running the old config after a failed reload",
          show("ActiveState") == "active" and show("MainPID") == pid and kitchen_ready(),
          show("ActiveState"))
    write_config(stack, extra_session=True)
    fixed = run("systemctl", "reload", UNIT, timeout=60)
    check("reload after the fix succeeds and STATUS clears",
          fixed.returncode == 0 and "reload failed" not in until(
              lambda: "reload failed" not in show("StatusText") and show("StatusText"), 10) ,
          show("StatusText"))

    # -- watchdog ---------------------------------------------------------------------------
    (DROPINS / "watchdog-test.conf").write_text("[Service]\nWatchdogSec=4s\nTimeoutAbortSec=3s\n")
    run("systemctl", "daemon-reload", check_rc=True)
    run("systemctl", "restart", UNIT, check_rc=True, timeout=90)
    restarts = int(show("NRestarts") or 0)
    stopped_pid = show("MainPID")
    run("kill", "-STOP", stopped_pid, check_rc=True)
    fired = until(lambda: int(show("NRestarts") or 0) > restarts and show("ActiveState") == "active"
                  and show("MainPID") != stopped_pid, 40, step=0.5)
    wd_lines = [ln for ln in journal().splitlines() if "atchdog" in ln]
    check("watchdog restarts a stopped event loop", bool(fired),
          f"NRestarts={show('NRestarts')} {wd_lines[-2:]}")
    (DROPINS / "watchdog-test.conf").unlink()
    run("systemctl", "daemon-reload", check_rc=True)

    # -- clean stop -------------------------------------------------------------------------
    run("systemctl", "restart", UNIT, check_rc=True, timeout=90)
    until(kitchen_ready, 30, step=1)
    stop = run("systemctl", "stop", UNIT, timeout=60)
    result = show("Result")
    code = show("ExecMainStatus")
    state = (retained(f"{BASE}/bridge/state") or {}).get("state")
    check("clean stop: exit 0, result success, bridge/state offline",
          stop.returncode == 0 and result == "success" and code == "0" and state == "offline",
          f"Result={result} ExecMainStatus={code} bridge/state={state}")

    # -- modes an admin with umask 077 makes: a clear error, no restart loop ----------------
    CONF_DIR.chmod(0o750)
    CONFIG.chmod(0o600)
    run("systemctl", "reset-failed", UNIT)
    bad = run("systemctl", "start", UNIT, timeout=60)
    time.sleep(12)  # RestartSec=5s: two restarts would have happened by now
    nrestarts = show("NRestarts")
    text = journal()
    check("unreadable config: start fails, no restart loop",
          bad.returncode != 0 and show("ActiveState") == "failed" and nrestarts == "0"
          and show("ExecMainStatus") == "2",
          f"rc={bad.returncode} state={show('ActiveState')} NRestarts={nrestarts}"
          f" status={show('ExecMainStatus')}")
    why = [ln for ln in text.splitlines() if "Permission denied" in ln or "deployment.md" in ln]
    check("the journal says why and what to do", "Permission denied" in text
          and "deployment.md" in text, " | ".join(why[-2:])[:500])
    # The upgrade note's fix.
    CONF_DIR.chmod(0o755)
    CONFIG.chmod(0o644)
    run("systemctl", "reset-failed", UNIT)
    fixed = run("systemctl", "start", UNIT, timeout=90)
    check("after the upgrade note's chmod it starts", fixed.returncode == 0
          and show("ActiveState") == "active", fixed.stderr.strip())
    run("systemctl", "stop", UNIT, timeout=60)

    events.close()
    messages.close()
    stack_proc.terminate()
    stack_proc.wait(20)
    (RESULTS / "journal.txt").write_text(journal())
    say(f"# {len(results)} checks, {failures} failed, {time.monotonic() - t0:.1f} s inside the container")
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        code = main()
    except Exception:
        say("not ok - the test driver failed: " + traceback.format_exc().replace("\n", "\n# "))
        code = 1
        with __import__("contextlib").suppress(Exception):
            (RESULTS / "journal.txt").write_text(journal())
    (RESULTS / "exit-code").write_text(f"{code}\n")
    subprocess.run(["systemctl", "--no-block", "poweroff"])
    sys.exit(code)
