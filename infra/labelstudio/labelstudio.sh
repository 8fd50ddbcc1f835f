#!/usr/bin/env bash
# Local Label Studio from the package index, in its own environment, data under var/labelstudio.
#
#   labelstudio.sh start     start and wait for /health (no-op when ours is running)
#   labelstudio.sh stop      SIGTERM, SIGKILL after 15 s
#   labelstudio.sh status    pid, port, resident memory
#
# STREAMLOOP_LABELSTUDIO_PORT (8740), STREAMLOOP_LABELSTUDIO_USERNAME (an e-mail address),
# STREAMLOOP_LABELSTUDIO_PASSWORD and STREAMLOOP_LABELSTUDIO_TOKEN (the API token the bridge
# uses, STREAMLOOP_ANNOTATION_STUDIO_TOKEN) configure its first start; later starts keep the
# account and token the first made. The first start migrates its database (about a minute).
# Its webhooks may call addresses on loopback and private networks (the bridge's).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VAR="${STREAMLOOP_VAR:-$ROOT/var}"
DIR="$VAR/labelstudio"
ENV_DIR="${STREAMLOOP_LABELSTUDIO_ENV:-$ROOT/var/envs/labelstudio}"
PORT="${STREAMLOOP_LABELSTUDIO_PORT:-8740}"
USERNAME="${STREAMLOOP_LABELSTUDIO_USERNAME:-annotator@streamloop.local}"
PASSWORD="${STREAMLOOP_LABELSTUDIO_PASSWORD:-streamloop-dev}"
TOKEN="${STREAMLOOP_LABELSTUDIO_TOKEN:-streamloop-dev-labelstudio-token}"
PIDFILE="$DIR/labelstudio.pid"

log() { printf '[labelstudio] %s\n' "$*" >&2; }
die() { printf '[labelstudio] error: %s\n' "$*" >&2; exit 1; }

our_pid() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null && cat "$PIDFILE"; }
healthy() { curl -fsS -m 2 "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; }

cmd_start() {
  [ -x "$ENV_DIR/bin/label-studio" ] || die "no Label Studio in $ENV_DIR: run make labelstudio-env"
  if our_pid >/dev/null; then log "already running (pid $(our_pid))"; return 0; fi
  if healthy; then die "something else answers on 127.0.0.1:$PORT"; fi
  mkdir -p "$DIR/data"
  SSRF_PROTECTION_ENABLED=false LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK=true \
  SENTRY_DSN= FRONTEND_SENTRY_DSN= \
    setsid "$ENV_DIR/bin/label-studio" start --no-browser --agree-fix-sqlite \
      --internal-host 127.0.0.1 -p "$PORT" --data-dir "$DIR/data" \
      --username "$USERNAME" --password "$PASSWORD" --user-token "$TOKEN" \
      --enable-legacy-api-token >"$DIR/labelstudio.log" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  local deadline=$((SECONDS + ${STREAMLOOP_LABELSTUDIO_WAIT_S:-300}))
  until healthy; do
    our_pid >/dev/null || die "Label Studio exited; see $DIR/labelstudio.log"
    [ $SECONDS -lt $deadline ] || die "Label Studio did not answer in time; see $DIR/labelstudio.log"
    sleep 1
  done
  log "started (pid $(cat "$PIDFILE")) on http://127.0.0.1:$PORT, data in $DIR/data"
}

cmd_stop() {
  local p; p=$(our_pid) || { rm -f "$PIDFILE"; return 0; }
  kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true
  local i; for i in $(seq 1 75); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$p" 2>/dev/null && { log "SIGKILL after 15 s"; kill -9 -- "-$p" 2>/dev/null || true; }
  rm -f "$PIDFILE"
  log "stopped (pid $p)"
}

cmd_status() {
  local p rss
  if p=$(our_pid); then
    rss=$(awk '/VmRSS/{printf "%d MiB", $2/1024}' "/proc/$p/status" 2>/dev/null || echo "?")
    printf 'labelstudio           running  pid %-7s 127.0.0.1:%s  rss %s\n' "$p" "$PORT" "$rss"
  else
    printf 'labelstudio           stopped\n'
  fi
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) die "usage: $0 start|stop|status" ;;
esac
