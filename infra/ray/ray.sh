#!/usr/bin/env bash
# Local Ray head, the serving tier's model cluster, started beside Kafka and Redis so that a
# restart of the serving ingress does not take Ray and its model replicas with it.
#
#   ray.sh start     start a head on 127.0.0.1:$STREAMLOOP_RAY_PORT (no-op when ours runs)
#   ray.sh stop      SIGTERM its processes, SIGKILL after 5 s (only ours: never `ray stop`,
#                    which ends every Ray on the machine)
#   ray.sh status    session, address, processes, resident memory
#   ray.sh running   exit 0 when our head runs
#   ray.sh address   print the address services join (RAY_ADDRESS)
#
# STREAMLOOP_RAY_PORT (6380: 6379 is Redis's; the next two ports are the head's too, so that
# two heads on one machine never meet), STREAMLOOP_RAY_CPUS (the machine's cores) and
# STREAMLOOP_RAY_OBJECT_STORE_MB (256) configure it. Token authentication is off: the head is
# for one machine; a shared cluster keeps Ray's default token authentication.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VAR="${STREAMLOOP_VAR:-$ROOT/var}"
DIR="$VAR/ray"
PORT="${STREAMLOOP_RAY_PORT:-6380}"
CPUS="${STREAMLOOP_RAY_CPUS:-$(nproc)}"
STORE_MB="${STREAMLOOP_RAY_OBJECT_STORE_MB:-256}"
SIDFILE="$DIR/head-$PORT.sid"
RAY="${STREAMLOOP_RAY_BIN:-$ROOT/.venv/bin/ray}"

log() { printf '[ray] %s\n' "$*" >&2; }
die() { printf '[ray] error: %s\n' "$*" >&2; exit 1; }

# Every process of the head shares the session that `setsid` gave `ray start`.
session() { [ -f "$SIDFILE" ] && cat "$SIDFILE"; }
members() { local s; s=$(session) || return 1; ps -eo pid=,sid= | awk -v s="$s" '$2==s {print $1}'; }
our_head() { local s; s=$(session) || return 1; pgrep -s "$s" -x gcs_server >/dev/null; }

cmd_start() {
  [ -x "$RAY" ] || die "$RAY not found; run make setup first"
  if our_head; then log "already running (session $(session)) on 127.0.0.1:$PORT"; return 0; fi
  mkdir -p "$DIR"
  log "starting a head on 127.0.0.1:$PORT ($CPUS CPUs, object store $STORE_MB MiB)"
  # Serve's controller loop and metric exports as serving sets them for a local Ray
  # (services/serving/ray_app.py, QUIET_SERVE): little CPU at rest.
  RAY_SERVE_CONTROL_LOOP_INTERVAL_S="${RAY_SERVE_CONTROL_LOOP_INTERVAL_S:-0.5}" \
  RAY_SERVE_METRICS_EXPORT_INTERVAL_MS="${RAY_SERVE_METRICS_EXPORT_INTERVAL_MS:-1000}" \
  RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 setsid "$RAY" start --head \
      --port "$PORT" --node-ip-address 127.0.0.1 --num-cpus "$CPUS" \
      --ray-client-server-port $((PORT + 1)) --dashboard-agent-listen-port $((PORT + 2)) \
      --object-store-memory $((STORE_MB * 1024 * 1024)) --include-dashboard=false \
      --disable-usage-stats >"$DIR/head-$PORT.log" 2>&1 &
  local starter=$!
  echo "$starter" >"$SIDFILE"
  wait "$starter" || { cmd_stop; die "ray start failed; see $DIR/head-$PORT.log"; }
  our_head || die "the head exited; see $DIR/head-$PORT.log"
  log "started (session $starter); services join with RAY_ADDRESS=127.0.0.1:$PORT"
}

# `ray start` names its head in Ray's address file, where anything that looks for "the" Ray
# on this machine reads it (Ray Train's placement-group cleaner, through Ray's state API, waits
# 12 s a fit on a head that has gone); `ray stop` removes it, and so does our stop.
ADDRESS_FILE="${RAY_TMPDIR:-${TMPDIR:-/tmp}}/ray/ray_current_cluster"
forget_address() {
  if [ -f "$ADDRESS_FILE" ] && grep -q ":$PORT\$" "$ADDRESS_FILE"; then rm -f "$ADDRESS_FILE"; fi
}

cmd_stop() {
  local pids
  pids=$(members) || { rm -f "$SIDFILE"; forget_address; return 0; }
  if [ -n "$pids" ]; then
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    local i; for i in $(seq 1 25); do [ -n "$(members)" ] || break; sleep 0.2; done
    pids=$(members)
    # shellcheck disable=SC2086
    [ -z "$pids" ] || { log "SIGKILL after 5 s"; kill -KILL $pids 2>/dev/null || true; }
  fi
  rm -f "$SIDFILE"
  forget_address
  log "stopped (port $PORT)"
}

cmd_status() {
  local pids rss
  if our_head; then
    pids=$(members)
    # shellcheck disable=SC2086
    rss=$(for p in $pids; do awk '/VmRSS/{print $2}' "/proc/$p/status" 2>/dev/null; done \
          | awk '{s+=$1} END {printf "%d MiB", s/1024}')
    printf 'ray head              running  session %-7s 127.0.0.1:%s  %d processes, rss %s\n' \
      "$(session)" "$PORT" "$(echo "$pids" | wc -w)" "$rss"
  else
    printf 'ray head              stopped\n'
  fi
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  running) our_head ;;
  address) echo "127.0.0.1:$PORT" ;;
  *) sed -n '2,14p' "$0"; exit 2 ;;
esac
