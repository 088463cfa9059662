"""Build (once, cached by version) and run a real LiveKit server configured for local-only traffic."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from devstack.procs import (
    cache_dir,
    free_port,
    free_tcp_udp_port,
    log_tail,
    stop_process,
)

LIVEKIT_SERVER_VERSION = "v1.13.5"
LIVEKIT_SERVER_MODULE = "github.com/livekit/livekit-server/cmd/server"
DEV_API_KEY = "devkey"
# A closed local port: clients and the server are told to use it for STUN, so nothing
# ever asks a public STUN server. Nothing listens there.
CLOSED_STUN = "127.0.0.1:3478"


class ServerUnavailable(RuntimeError):
    """The LiveKit server binary is not available and could not be built."""


def binary_path(version: str = LIVEKIT_SERVER_VERSION) -> Path:
    """Where the cached binary for version lives (outside the repository)."""
    override = os.environ.get("LKBRIDGE_LIVEKIT_SERVER")
    if override:
        return Path(override)
    return cache_dir() / f"livekit-server-{version}" / "livekit-server"


def ensure_binary(version: str = LIVEKIT_SERVER_VERSION, *, build: bool = True) -> Path:
    """Return the cached binary, building it with `go install` from the module proxy if missing."""
    path = binary_path(version)
    if path.is_file() and os.access(path, os.X_OK):
        return path
    if not build:
        raise ServerUnavailable(f"LiveKit server {version} is not built yet (expected at {path})")
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        raise ServerUnavailable(
            "the Go toolchain (1.26+) is needed to build the LiveKit server: install Go, "
            f"or set LKBRIDGE_LIVEKIT_SERVER to a livekit-server {version} binary"
        )
    gobin = path.parent / "bin"
    gobin.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CGO_ENABLED="0", GOBIN=str(gobin))
    started = time.monotonic()
    cmd = [go, "install", "-trimpath", "-ldflags=-s -w", f"{LIVEKIT_SERVER_MODULE}@{version}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ServerUnavailable(
            f"building the LiveKit server failed ({' '.join(cmd)}):\n{proc.stderr.strip()[-3000:]}"
        )
    built = gobin / "server"
    os.replace(built, path)
    elapsed = time.monotonic() - started
    size_mb = path.stat().st_size / 1e6
    print(f"built livekit-server {version} in {elapsed:.0f} s ({size_mb:.0f} MB) -> {path}", flush=True)
    return path


def server_config(addr: str, http_port: int, rtc_port: int) -> dict[str, object]:
    """A config that listens and advertises only on addr and never uses public STUN."""
    return {
        "port": http_port,
        "bind_addresses": [addr],
        "logging": {"level": "info", "json": False},
        "rtc": {
            "tcp_port": rtc_port,
            "udp_port": str(rtc_port),
            "use_external_ip": False,
            "node_ip": addr,
            "stun_servers": [CLOSED_STUN],
            "enable_loopback_candidate": addr.startswith("127."),
            "ips": {"includes": [f"{addr}/32"]},
        },
        "turn": {"enabled": False},
        "room": {"empty_timeout": 30, "departure_timeout": 5},
    }


@dataclass
class LiveKitServer:
    """One running livekit-server process on a test address."""

    addr: str
    log_dir: Path
    api_key: str = DEV_API_KEY
    # A fresh random secret per server: 32+ bytes, as HS256 wants, and never a well-known value.
    api_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    http_port: int = 0
    rtc_port: int = 0
    binary: Path | None = None
    # In its own session, a terminal's Ctrl-C does not reach it: its owner stops it in order.
    new_session: bool = False
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"ws://{self.addr}:{self.http_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.addr}:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / "livekit-server.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """Start (or restart on the same ports) and wait until GET / answers OK."""
        if self.running:
            return
        binary = self.binary or ensure_binary()
        if not self.http_port:
            self.http_port = free_port(self.addr)
        if not self.rtc_port:
            self.rtc_port = free_tcp_udp_port(self.addr)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        cfg_path = self.log_dir / "livekit-server.yaml"
        config = server_config(self.addr, self.http_port, self.rtc_port)
        cfg_path.write_text(json.dumps(config, indent=2))  # JSON is valid YAML
        # The key pair goes in through the environment, never into a file on disk.
        env = {**os.environ, "LIVEKIT_KEYS": f"{self.api_key}: {self.api_secret}"}
        log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [str(binary), "--config", str(cfg_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=self.new_session,
        )
        log.close()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"livekit-server exited with code {self._proc.returncode}{log_tail(self.log_path)}"
                )
            try:
                with urllib.request.urlopen(self.http_url + "/", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError as exc:
                last = str(exc)
            time.sleep(0.1)
        raise RuntimeError(f"livekit-server not ready within {timeout:.0f} s ({last}){log_tail(self.log_path)}")

    def token(
        self,
        identity: str,
        room: str,
        *,
        agent_name: str | None = None,
        agent_metadata: str = "",
        ttl_seconds: int = 3600,
    ) -> str:
        """A participant token for room; with agent_name the token dispatches that agent."""
        from datetime import timedelta

        from livekit import api

        token = (
            api.AccessToken(self.api_key, self.api_secret)
            .with_identity(identity)
            .with_grants(api.VideoGrants(room_join=True, room=room))
            .with_ttl(timedelta(seconds=ttl_seconds))
        )
        if agent_name is not None:
            token = token.with_room_config(
                api.RoomConfiguration(
                    agents=[api.RoomAgentDispatch(agent_name=agent_name, metadata=agent_metadata)]
                )
            )
        return token.to_jwt()

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc)

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)


def _main() -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="Build (once) and locate the LiveKit server binary.")
    parser.add_argument("--ensure", action="store_true", help="build it if it is not cached yet")
    args = parser.parse_args()
    try:
        path = ensure_binary(build=args.ensure)
    except ServerUnavailable as exc:
        print(f"livekit-server: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
