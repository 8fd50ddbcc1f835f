#!/usr/bin/env bash
# Run a command with local Kafka and Redis up: start whichever is not running, run the
# command, then stop only what this script started (also on failure or Ctrl-C).
#
#   infra/with-infra.sh .venv/bin/pytest tests
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
started=()

cleanup() {
  local s
  for s in "${started[@]}"; do
    case "$s" in
      kafka) "$HERE/kafka/kafka.sh" stop single ;;
      redis) "$HERE/redis/redis.sh" stop ;;
    esac
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! "$HERE/kafka/kafka.sh" running single; then
  "$HERE/kafka/kafka.sh" start single || exit 1
  started+=(kafka)
fi
if ! "$HERE/redis/redis.sh" running; then
  "$HERE/redis/redis.sh" start || exit 1
  started+=(redis)
fi

"$@"
