#!/usr/bin/env bash
# Set up everything the tests and the demo need on a fresh machine, idempotently:
# a virtualenv with lkbridge and its plugins, Mosquitto, and the LiveKit server binary
# (built once from the Go module proxy, cached outside the repository by version).
# With CI=true, anything missing is a hard failure; otherwise it warns and the e2e tests skip.
set -euo pipefail
shopt -s nullglob
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV="${VENV:-.venv}"
ci=0; case "${CI:-}" in true|1|yes) ci=1 ;; esac
fail() { echo "bootstrap: ERROR: $*" >&2; exit 1; }
warn() { if [ "$ci" = 1 ]; then fail "$*"; else echo "bootstrap: WARNING: $*" >&2; fi; }
step() { echo "bootstrap: $*" >&2; }

# --- Python ------------------------------------------------------------------------
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    for cand in python3.11 python3 python3.12 python3.13; do
        if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            PY="$cand"; break
        fi
    done
fi
[ -n "$PY" ] || fail "Python 3.11 or newer is needed"
if [ ! -x "$VENV/bin/python" ]; then
    step "creating $VENV with $PY"
    "$PY" -m venv "$VENV"
fi
stamp="$VENV/.lkbridge-installed"
want="$(cat pyproject.toml plugins/*/pyproject.toml 2>/dev/null | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    step "installing lkbridge, its plugins and the test tools into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # livekit ships its native library in wheels; never let pip build the sdist (it downloads).
    plugin_args=()
    for dir in plugins/*/; do [ -f "$dir/pyproject.toml" ] && plugin_args+=("./$dir"); done
    "$VENV/bin/python" -m pip install -q --only-binary=livekit -e ".[test]" "${plugin_args[@]}"
    echo "$want" > "$stamp"
fi

# --- the dependencies' wheels, for the offline test of installing the built wheel ---
# (tests/e2e/test_install.py runs in the test namespace, which has no route to an index)
wheelhouse="$VENV/wheelhouse"
if [ ! -f "$wheelhouse/.stamp" ] || [ "$(cat "$wheelhouse/.stamp")" != "$want" ]; then
    step "collecting lkbridge's dependencies as wheels in $wheelhouse"
    mapfile -t deps < <("$VENV/bin/python" -c 'import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))')
    if "$VENV/bin/python" -m pip download -q --only-binary=:all: -d "$wheelhouse" "${deps[@]}"; then
        echo "$want" > "$wheelhouse/.stamp"
    else
        warn "pip download of the dependencies failed; the wheel install test needs them"
    fi
fi

# --- the LiveKit Agents framework, for the test agent ------------------------------
# livekit-agents pins its own `livekit` rtc, so it gets a venv of its own; the tests start
# devstack/framework_agent/worker.py with this venv's python.
AGENT_VENV="${AGENT_VENV:-.venv-agent}"
agent_req=devstack/framework_agent/requirements.txt
agent_stamp="$AGENT_VENV/.lkbridge-installed"
agent_want="$(sha256sum < "$agent_req" | cut -c1-16)"
if [ ! -f "$agent_stamp" ] || [ "$(cat "$agent_stamp")" != "$agent_want" ]; then
    step "installing the LiveKit Agents framework ($(tr '\n' ' ' < "$agent_req")) into $AGENT_VENV"
    if { [ -x "$AGENT_VENV/bin/python" ] || "$PY" -m venv "$AGENT_VENV"; } \
        && "$AGENT_VENV/bin/python" -m pip install -q --upgrade pip \
        && "$AGENT_VENV/bin/python" -m pip install -q --only-binary=livekit -r "$agent_req"; then
        echo "$agent_want" > "$agent_stamp"
    else
        warn "the LiveKit Agents framework could not be installed into $AGENT_VENV; e2e tests need it"
    fi
fi

# --- system packages (Debian), only when missing and we are root ------------------
need_pkgs=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need_pkgs+=(mosquitto)
command -v mosquitto_pub >/dev/null || need_pkgs+=(mosquitto-clients)
command -v ip >/dev/null || need_pkgs+=(iproute2)
command -v unshare >/dev/null || need_pkgs+=(util-linux)
# The systemd test (scripts/test-systemd) boots Debian in a container made with debootstrap.
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || need_pkgs+=(debootstrap)
command -v systemd-nspawn >/dev/null || need_pkgs+=(systemd-container)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        step "installing ${need_pkgs[*]} from Debian's packages"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null \
            || warn "apt-get install ${need_pkgs[*]} failed"
    else
        warn "missing ${need_pkgs[*]}: install them (Debian: sudo apt-get install ${need_pkgs[*]})"
    fi
fi
# The Debian package may start a system broker on 1883; the tests use their own on free ports.

# --- the LiveKit server -------------------------------------------------------------
if [ -d /usr/local/go/bin ]; then export PATH="$PATH:/usr/local/go/bin"; fi
if ! "$VENV/bin/python" -m devstack.livekit_server --ensure; then
    warn "the LiveKit server could not be built (see above); e2e tests need it"
fi
step "ready"
