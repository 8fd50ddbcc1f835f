#!/usr/bin/env bash
# Local Redis from the OS package, on loopback, append-only file on, data under var/redis.
#
#   redis.sh install   install redis-server with apt-get when missing (root only), else explain
#   redis.sh start     start and wait for PONG (no-op when ours is running)
#   redis.sh stop      SHUTDOWN (AOF is fsynced), SIGKILL after 15 s
#   redis.sh status    pid, port, resident memory
#   redis.sh running   exit 0 when the port answers PING
#
# STREAMLOOP_REDIS_PORT (6379) and STREAMLOOP_REDIS_PASSWORD (unset: no auth) configure it.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VAR="${STREAMLOOP_VAR:-$ROOT/var}"
DIR="$VAR/redis"
PORT="${STREAMLOOP_REDIS_PORT:-6379}"
PIDFILE="$DIR/redis.pid"

log() { printf '[redis] %s\n' "$*" >&2; }
die() { printf '[redis] error: %s\n' "$*" >&2; exit 1; }

cli() {
  if [ -n "${STREAMLOOP_REDIS_PASSWORD:-}" ]; then
    REDISCLI_AUTH="$STREAMLOOP_REDIS_PASSWORD" redis-cli -h 127.0.0.1 -p "$PORT" "$@"
  else
    redis-cli -h 127.0.0.1 -p "$PORT" "$@"
  fi
}

cmd_install() {
  command -v redis-server >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing redis-server (Debian package)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >/dev/null; }
  else
    die "redis-server is not installed. Install it with: sudo apt-get install redis-server (or your OS's redis package), then run this again."
  fi
}

our_pid() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null && cat "$PIDFILE"; }
answers() { cli ping 2>/dev/null | grep -q PONG; }

cmd_start() {
  cmd_install
  if our_pid >/dev/null; then log "already running (pid $(our_pid))"; return 0; fi
  if answers; then log "a Redis that is not ours answers on 127.0.0.1:$PORT; using it"; return 0; fi
  mkdir -p "$DIR"
  local args=(--bind 127.0.0.1 --port "$PORT" --protected-mode yes --daemonize yes
              --dir "$DIR" --pidfile "$PIDFILE" --logfile "$DIR/redis.log"
              --appendonly yes --appendfsync everysec --save "" --maxmemory 512mb
              --maxmemory-policy noeviction)
  [ -z "${STREAMLOOP_REDIS_PASSWORD:-}" ] || args+=(--requirepass "$STREAMLOOP_REDIS_PASSWORD")
  redis-server "${args[@]}"
  local deadline=$((SECONDS + 20))
  until answers; do
    [ $SECONDS -lt $deadline ] || die "Redis did not answer within 20 s; see $DIR/redis.log"
    sleep 0.2
  done
  log "started (pid $(cat "$PIDFILE")) on 127.0.0.1:$PORT, append-only file in $DIR"
}

cmd_stop() {
  local p; p=$(our_pid) || { rm -f "$PIDFILE"; return 0; }
  cli shutdown >/dev/null 2>&1 || kill -TERM "$p" 2>/dev/null || true
  local i; for i in $(seq 1 75); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$p" 2>/dev/null && { log "SIGKILL after 15 s"; kill -9 "$p" 2>/dev/null || true; }
  rm -f "$PIDFILE"
  log "stopped (pid $p)"
}

cmd_status() {
  local p rss
  if p=$(our_pid); then
    rss=$(awk '/VmRSS/{printf "%d MiB", $2/1024}' "/proc/$p/status" 2>/dev/null || echo "?")
    printf 'redis                 running  pid %-7s 127.0.0.1:%s  rss %s\n' "$p" "$PORT" "$rss"
  elif command -v redis-cli >/dev/null 2>&1 && answers; then
    printf 'redis                 running  (not started by StreamLoop) 127.0.0.1:%s\n' "$PORT"
  else
    printf 'redis                 stopped\n'
  fi
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  running) answers ;;
  *) sed -n '2,11p' "$0"; exit 2 ;;
esac
