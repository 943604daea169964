# Helpers sourced by demo.sh and bench/*.sh: start a private docker-registry
# and containerd in a scratch directory on 127.0.0.1, remember their PIDs,
# and stop exactly those (never by name) on exit, unmounting what is left.
# shellcheck shell=bash

LIB_PIDS=()
LIB_DIRS=()

log() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }

# A TCP port on 127.0.0.1 nobody listens on (probe upward from a random base).
free_port() {
  local p=$((20000 + RANDOM % 20000))
  while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
  echo "$p"
}

wait_for() { # SECONDS CMD...
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

# start_registry DIR -> sets REGISTRY=127.0.0.1:PORT
start_registry() {
  local dir="$1" port
  port="$(free_port)"
  mkdir -p "$dir/data"
  cat >"$dir/config.yml" <<YML
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $dir/data}
  delete: {enabled: true}
http: {addr: 127.0.0.1:$port}
YML
  docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
  LIB_PIDS+=("$!")
  REGISTRY="127.0.0.1:$port"
  wait_for 15 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" || { cat "$dir/registry.log" >&2; return 1; }
}

# start_containerd DIR [SNAPSHOTTER_SOCKET] -> sets CTRD_SOCK; use `ctrd ARGS`
# The CRI plugin is off unless CRI_SANDBOX_IMAGE is set (a pause image on a
# local registry): then it pulls with the snapshotter `remote`, passes the
# cri.* snapshot labels, and reaches the hosts in CRI_PLAIN_HTTP (space
# separated 127.0.0.1:PORT) over plain HTTP. Host-network pods only.
start_containerd() {
  local dir="$1" snap="${2:-}" disabled h
  mkdir -p "$dir/root" "$dir/state"
  CTRD_SOCK="$dir/c.sock"
  CTRD_DIR="$dir"
  disabled='disabled_plugins = ["io.containerd.grpc.v1.cri"]'
  [ -z "${CRI_SANDBOX_IMAGE:-}" ] || disabled=""
  cat >"$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
$disabled
[grpc]
  address = "$CTRD_SOCK"
[ttrpc]
  address = "$CTRD_SOCK.ttrpc"
[debug]
  address = "$dir/debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
TOML
  if [ -n "$snap" ]; then
    printf '[proxy_plugins.remote]\n  type = "snapshot"\n  address = "%s"\n' "$snap" >>"$dir/config.toml"
  fi
  if [ -n "${CRI_SANDBOX_IMAGE:-}" ]; then
    mkdir -p "$dir/cni/conf" "$dir/cni/bin"
    # restrict_oom_score_adj: a sandbox may refuse the negative
    # oom_score_adj CRI gives pods; a real node does not need it.
    cat >>"$dir/config.toml" <<TOML
[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
  sandbox_image = "$CRI_SANDBOX_IMAGE"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "remote"
    disable_snapshot_annotations = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$dir/cni/bin"
    conf_dir = "$dir/cni/conf"
TOML
    for h in ${CRI_PLAIN_HTTP:-}; do
      printf '  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."%s"]\n    endpoint = ["http://%s"]\n' "$h" "$h" >>"$dir/config.toml"
    done
  fi
  containerd --config "$dir/config.toml" >"$dir/containerd.log" 2>&1 &
  LIB_PIDS+=("$!")
  LIB_DIRS+=("$dir")
  wait_for 20 ctr -a "$CTRD_SOCK" version || { tail -20 "$dir/containerd.log" >&2; return 1; }
}

ctrd() { ctr -a "$CTRD_SOCK" -n demo "$@"; }

# Stop what we started (newest first), then unmount and tidy what containerd
# leaves behind. Installed as the EXIT trap by lib_init.
lib_cleanup() {
  local i pid d id
  if [ -n "${CTRD_SOCK:-}" ] && [ -S "$CTRD_SOCK" ]; then
    for id in $(ctrd tasks ls -q 2>/dev/null); do
      ctrd tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
      sleep 0.2
      ctrd tasks rm -f "$id" >/dev/null 2>&1 || true
    done
    for id in $(ctrd containers ls -q 2>/dev/null); do ctrd containers rm "$id" >/dev/null 2>&1 || true; done
    # Pods started through CRI live in the k8s.io namespace.
    for id in $(ctr -a "$CTRD_SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr -a "$CTRD_SOCK" -n k8s.io tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
      sleep 0.2
      ctr -a "$CTRD_SOCK" -n k8s.io tasks rm -f "$id" >/dev/null 2>&1 || true
    done
    for id in $(ctr -a "$CTRD_SOCK" -n k8s.io containers ls -q 2>/dev/null); do
      ctr -a "$CTRD_SOCK" -n k8s.io containers rm "$id" >/dev/null 2>&1 || true
    done
  fi
  for ((i = ${#LIB_PIDS[@]} - 1; i >= 0; i--)); do
    pid="${LIB_PIDS[$i]}"
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  for d in "${LIB_DIRS[@]}"; do
    # Deepest mount points first.
    awk -v d="$d/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r |
      while read -r m; do umount -l "$m" 2>/dev/null || true; done
  done
  for d in /run/containerd/runc/demo /run/containerd/runc /run/containerd/fifo /run/containerd/s /run/containerd; do
    rmdir "$d" 2>/dev/null || true
  done
  for d in /sys/fs/cgroup/*/demo /sys/fs/cgroup/demo; do rmdir "$d" 2>/dev/null || true; done
  if [ -n "${LIB_SCRATCH:-}" ] && [ "${KEEP:-0}" != 1 ]; then rm -rf "$LIB_SCRATCH"; fi
}

# lib_init -> LIB_SCRATCH: a fresh scratch dir, cleaned up on exit (KEEP=1 keeps it).
lib_init() {
  LIB_SCRATCH="$(mktemp -d /tmp/rsnap-XXXXXX)"
  trap lib_cleanup EXIT
  trap 'exit 130' INT TERM
}

# Seconds since the epoch with milliseconds, and a difference of two of them.
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", b - a}'; }
