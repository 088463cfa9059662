#!/usr/bin/env bash
# Install lkbridge as a systemd service, idempotently (run it again to upgrade):
#   sudo scripts/install.sh                      # from this checkout (built, not editable)
#   sudo scripts/install.sh lkbridge-X.Y.Z-py3-none-any.whl   # a wheel from `make dist`
# It creates the virtualenv /opt/lkbridge, links /usr/local/bin/lkbridge, creates
# /etc/lkbridge (0755) and /etc/lkbridge/credentials (0700), and installs the unit
# (/etc/systemd/system/lkbridge.service) and a starter config (/etc/lkbridge/config.toml)
# only where none exists: nothing of yours is overwritten.
# --prefix DIR: the virtualenv (default /opt/lkbridge). --root DIR: install below DIR instead
# of / (a staging or test root: the unit and the link name the final paths; systemctl is not
# called). PYTHON=python3.12 picks the interpreter. pip's own settings apply (e.g.
# PIP_INDEX_URL, PIP_NO_INDEX, PIP_FIND_LINKS).
set -euo pipefail

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
fail() { echo "install.sh: $*" >&2; exit 1; }
step() { echo "==> $*"; }

prefix=/opt/lkbridge
root=/
source_arg=""
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || usage 2; prefix="$2"; shift 2 ;;
        --prefix=*) prefix="${1#*=}"; shift ;;
        --root) [ $# -ge 2 ] || usage 2; root="$2"; shift 2 ;;
        --root=*) root="${1#*=}"; shift ;;
        -h|--help) usage 0 ;;
        -*) echo "install.sh: unknown option $1" >&2; usage 2 ;;
        *) [ -z "$source_arg" ] || usage 2; source_arg="$1"; shift ;;
    esac
done
case "$prefix" in /*) ;; *) fail "--prefix must be an absolute path" ;; esac
root="$(cd "${root:-/}" 2>/dev/null && pwd)" || fail "--root $root does not exist"
[ "$root" = / ] && dest="" || dest="$root"
if [ -z "$dest" ] && [ "$(id -u)" != 0 ]; then
    fail "run it as root (sudo), or with --root DIR to install below DIR"
fi

# What to install: a wheel, or a checkout (this one by default), built by pip, not editable.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source_arg="${source_arg:-$here}"
if [ -f "$source_arg" ]; then
    case "$source_arg" in *.whl) ;; *) fail "$source_arg is not a wheel (.whl)" ;; esac
    package="$(cd "$(dirname "$source_arg")" && pwd)/$(basename "$source_arg")"
elif [ -f "$source_arg/pyproject.toml" ]; then
    package="$(cd "$source_arg" && pwd)"
else
    fail "$source_arg is neither a wheel nor an lkbridge checkout"
fi

py=""
for cand in ${PYTHON:-python3 python3.13 python3.12 python3.11}; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        py="$cand"; break
    fi
done
[ -n "$py" ] || fail "Python 3.11 or newer is needed (Debian: apt-get install python3 python3-venv)"

venv="$dest$prefix"
etc="$dest/etc/lkbridge"
unit="$dest/etc/systemd/system/lkbridge.service"
link="$dest/usr/local/bin/lkbridge"

if [ ! -x "$venv/bin/python" ]; then
    step "creating the virtualenv $prefix"
    mkdir -p "$(dirname "$venv")"
    "$py" -m venv "$venv" || fail "python3 -m venv failed (Debian: apt-get install python3-venv)"
fi
step "installing lkbridge from $package into $prefix"
# livekit ships its native library in wheels only; never let pip try to build it.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade \
    --only-binary=livekit "$package"
lkbridge="$venv/bin/lkbridge"
version="$("$lkbridge" --version)"

# 0755: the service's dynamic user reads the config (the unit's ConfigurationDirectoryMode)
step "creating $etc (0755) and $etc/credentials (0700)"
install -d -m 0755 "$etc"
install -d -m 0700 "$etc/credentials"

if [ -e "$etc/config.toml" ]; then
    step "keeping the existing $etc/config.toml"
else
    step "writing a starter config (0644; it holds no secrets): $etc/config.toml"
    "$lkbridge" init "$etc/config.toml" >/dev/null
fi

unit_text="$("$lkbridge" init --print-unit)"
if [ "$prefix" != /opt/lkbridge ]; then
    unit_text="${unit_text//\/opt\/lkbridge\/bin\/lkbridge/$prefix/bin/lkbridge}"
fi
if [ -e "$unit" ]; then
    if [ "$(cat "$unit")" = "$unit_text" ]; then
        step "the unit $unit is up to date"
    else
        step "keeping your $unit; this version's unit is in $unit.new (compare them)"
        printf '%s\n' "$unit_text" > "$unit.new"
    fi
else
    step "installing the unit $unit"
    mkdir -p "$(dirname "$unit")"
    printf '%s\n' "$unit_text" > "$unit"
    chmod 0644 "$unit"
fi

if [ -L "$link" ] || [ ! -e "$link" ]; then
    step "linking /usr/local/bin/lkbridge -> $prefix/bin/lkbridge"
    mkdir -p "$(dirname "$link")"
    ln -sfn "$prefix/bin/lkbridge" "$link"
else
    step "leaving $link alone (not a link); run $prefix/bin/lkbridge"
fi

if [ -z "$dest" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi

cat <<EOF

$version is installed. Next steps:
  1. Edit /etc/lkbridge/config.toml: [mqtt] server, and each session's agent_name and token
     (url, api_key). Every key: lkbridge init --print-example
  2. Put the LiveKit API secret in /etc/lkbridge/credentials/livekit-api-secret (mode 0600),
     enable its LoadCredential= line (systemctl edit --full lkbridge), and in the config
     write: api_secret = { credential = "livekit-api-secret" }
  3. lkbridge check -c /etc/lkbridge/config.toml
  4. systemctl enable --now lkbridge && journalctl -u lkbridge -f
EOF
