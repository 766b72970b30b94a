#!/usr/bin/env bash
# Install everything kube-mcast's tests need on a fresh Debian 12 machine (run as root).
# Idempotent: apt work is skipped when every package is already installed, and the venv is
# only (re)built when pyproject.toml or the Python version changed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
VENV=$REPO/.venv
PKGS=(openvswitch-switch ethtool iproute2 socat iperf tcpdump containernetworking-plugins
      python3-venv iputils-ping procps)

say() { printf '[install] %s\n' "$*"; }
die() { printf '[install] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (apt-get, network namespaces): sudo $0"

# --- Debian packages ------------------------------------------------------------------------
missing=()
for p in "${PKGS[@]}"; do
  st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$st" = installed ] || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  say "apt: all ${#PKGS[@]} packages present"
else
  say "apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -qq -o DPkg::Lock::Timeout=300 update
  apt-get -qq -y -o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0 \
    install --no-install-recommends "${PKGS[@]}" >/dev/null
fi

# --- kubectl: tests drive the lab API server (tools/kubeapi) with the real binary -------------
# The machine image ships kubectl 1.32 at /usr/bin/kubectl; elsewhere Debian's
# kubernetes-client (1.20). Verified against tests/tools/test_kubeapi.py: Debian's 1.20.2 and
# 1.27-1.33 all pass (with < 1.24, which lacks `patch --subresource`, the tests write statuses
# through the Python client instead).
KUBECTL_MIN_MINOR=20
if ! command -v kubectl >/dev/null; then
  say "apt: installing kubernetes-client (kubectl)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -qq -o DPkg::Lock::Timeout=300 update
  apt-get -qq -y -o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0 \
    install --no-install-recommends kubernetes-client >/dev/null
fi
kubectl_minor=$(kubectl version --client -o json 2>/dev/null \
  | python3 -c 'import json,sys; print(int("".join(c for c in json.load(sys.stdin)["clientVersion"]["minor"] if c.isdigit())))' \
  2>/dev/null || echo 0)
[ "$kubectl_minor" -ge "$KUBECTL_MIN_MINOR" ] \
  || die "kubectl $(command -v kubectl) is 1.$kubectl_minor; the tests need >= 1.$KUBECTL_MIN_MINOR"
say "kubectl: $(command -v kubectl) (1.$kubectl_minor)"

# --- no system OVS daemons: tests run private ones inside network namespaces ----------------
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  for u in openvswitch-switch ovs-vswitchd ovsdb-server; do
    if systemctl is-active --quiet "$u" || systemctl is-enabled --quiet "$u" 2>/dev/null; then
      say "systemd: stopping and disabling $u"
      systemctl disable --now "$u" >/dev/null 2>&1 || true
    fi
  done
fi
for d in ovs-vswitchd ovsdb-server; do  # the package's daemons use /run/openvswitch
  pidfile=/run/openvswitch/$d.pid
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    say "stopping system $d (pid $(cat "$pidfile"))"
    env -u OVS_RUNDIR -u OVS_DBDIR -u OVS_LOGDIR \
      /usr/share/openvswitch/scripts/ovs-ctl stop >/dev/null 2>&1 || kill "$(cat "$pidfile")" || true
  fi
done

# --- Python venv ----------------------------------------------------------------------------
is311() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; }
PY=""
for cand in python3 python3.11; do
  if command -v "$cand" >/dev/null && is311 "$cand"; then PY=$(command -v "$cand"); break; fi
done
[ -n "$PY" ] || die "no python3.11 found (python3 is $(python3 -V 2>&1 || echo missing))"

if [ -x "$VENV/bin/python" ] && is311 "$VENV/bin/python" && "$VENV/bin/python" -m pip -V >/dev/null 2>&1
then :
else
  say "venv: creating $VENV with $PY ($("$PY" -V 2>&1))"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
fi

stamp_file=$VENV/.kube-mcast-install
stamp="$(sha256sum pyproject.toml | cut -d' ' -f1) $("$VENV/bin/python" -V 2>&1)"
if [ "$(cat "$stamp_file" 2>/dev/null)" = "$stamp" ] && [ -x "$VENV/bin/pytest" ] \
   && [ -x "$VENV/bin/ruff" ]; then
  say "venv: up to date ($VENV)"
else
  say "venv: pip install -e '.[test]' (log: $VENV/pip-install.log)"
  log=$VENV/pip-install.log
  pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
  if ! { "${pip[@]}" --upgrade pip && "${pip[@]}" -e '.[test]'; } >"$log" 2>&1; then
    cat "$log" >&2
    die "pip install failed"
  fi
  echo "$stamp" > "$stamp_file"
fi
say "done"
