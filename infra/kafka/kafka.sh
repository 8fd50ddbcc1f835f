#!/usr/bin/env bash
# Local Apache Kafka (KRaft) from the jars that pom.xml resolves out of Maven Central.
#
#   kafka.sh jars                      resolve the broker jars into infra/kafka/lib (idempotent)
#   kafka.sh start  single|cluster [NODE...]   format storage if new, start, wait until it answers
#                                              (a node that already runs is left as it is, exit 0)
#   kafka.sh stop   single|cluster [NODE...]   SIGTERM (controlled shutdown), SIGKILL after 30 s
#   kafka.sh kill   single|cluster NODE...     SIGKILL at once (fault tests)
#   kafka.sh status [single|cluster]           one line per node: pid, port, resident memory
#   kafka.sh running single|cluster            exit 0 when every node of that mode answers
#
# single : one combined broker+controller, 127.0.0.1:${STREAMLOOP_KAFKA_PORT:-9092}
# cluster: three nodes, 127.0.0.1:9192 / 9194 / 9196 (controllers on port+1), replication 3,
#          min.insync.replicas 2. Its ports differ from the single node's so both can run.
#
# Everything it writes lives under ${STREAMLOOP_VAR:-<repo>/var}/kafka[-cluster]/.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VAR="${STREAMLOOP_VAR:-$ROOT/var}"
LIB="$HERE/lib"
HEAP="${STREAMLOOP_KAFKA_HEAP:-512m}"
SINGLE_PORT="${STREAMLOOP_KAFKA_PORT:-9092}"
CLUSTER_BASE_PORT="${STREAMLOOP_KAFKA_CLUSTER_PORT:-9192}"
START_TIMEOUT="${STREAMLOOP_KAFKA_START_TIMEOUT:-90}"

log() { printf '[kafka] %s\n' "$*" >&2; }
die() { printf '[kafka] error: %s\n' "$*" >&2; exit 1; }

need_java() { command -v java >/dev/null 2>&1 || die "java not found: install a JDK 17 (Debian: apt-get install openjdk-17-jre-headless)"; }

jars() {
  if [ -f "$LIB/.resolved" ] && [ "$LIB/.resolved" -nt "$HERE/pom.xml" ]; then return 0; fi
  command -v mvn >/dev/null 2>&1 || die "mvn not found: install Maven (Debian: apt-get install maven)"
  log "resolving Kafka jars from Maven Central into infra/kafka/lib"
  rm -rf "$LIB"
  mvn -q -B -Dstyle.color=never -f "$HERE/pom.xml" dependency:copy-dependencies >&2
  ls "$LIB"/kafka_2.13-*.jar >/dev/null 2>&1 || die "Maven did not produce kafka_2.13 in $LIB"
  touch "$LIB/.resolved"
}

# mode -> node ids
nodes_of() { case "$1" in single) echo 1 ;; cluster) echo 1 2 3 ;; *) die "unknown mode '$1' (single|cluster)";; esac; }
base_dir() { case "$1" in single) echo "$VAR/kafka" ;; cluster) echo "$VAR/kafka-cluster" ;; esac; }
broker_port() { # mode node
  case "$1" in single) echo "$SINGLE_PORT" ;; cluster) echo $((CLUSTER_BASE_PORT + 2 * ($2 - 1))) ;; esac
}
voters() {
  local mode=$1 out="" n
  for n in $(nodes_of "$mode"); do out+="${out:+,}$n@127.0.0.1:$(( $(broker_port "$mode" "$n") + 1 ))"; done
  echo "$out"
}
pid_of() { local f="$(base_dir "$1")/node-$2/kafka.pid"; [ -f "$f" ] && cat "$f" || true; }
alive() { local p; p=$(pid_of "$1" "$2"); [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Whether the broker logging to $1 (or to a file it rolled over to, since the log rolls at
# 20 MB) said it started at or after $2 ("YYYY-MM-DD HH:MM:SS", as log4j stamps each line).
started_since() { # log since
  local f
  for f in "$1" "$1".[0-9]; do
    [ -f "$f" ] || continue
    awk -v since="$2" '/Kafka Server started/ && substr($0, 2, 19) >= since { found = 1 }
      END { exit !found }' "$f" && return 0
  done
  return 1
}

render() { # mode node -> path of server.properties
  local mode=$1 n=$2 dir tpl port
  dir="$(base_dir "$mode")/node-$n"; port=$(broker_port "$mode" "$n")
  tpl="$HERE/server.properties.template"; [ "$mode" = cluster ] && tpl="$HERE/cluster.properties.template"
  mkdir -p "$dir/data" "$dir/logs"
  sed -e "s|@NODE_ID@|$n|g" -e "s|@VOTERS@|$(voters "$mode")|g" \
      -e "s|@BROKER_PORT@|$port|g" -e "s|@CONTROLLER_PORT@|$((port + 1))|g" \
      -e "s|@LOG_DIR@|$dir/data|g" "$tpl" > "$dir/server.properties"
  echo "$dir/server.properties"
}

# The pid of a node that already runs: ours (its pid file), or a StreamLoop broker of the same
# mode and node started from another checkout or STREAMLOOP_VAR that holds its port.
running_pid() { # mode node
  local mode=$1 n=$2
  if alive "$mode" "$n"; then pid_of "$mode" "$n"; return 0; fi
  port_open "$(broker_port "$mode" "$n")" || return 1
  pgrep -f -- "-Dstreamloop\.kafka\.node=$mode-$n( |\$)" | awk 'NR == 1 { print; found = 1 } END { exit !found }'
}

start_node() { # mode node ; leaves "<node> <log> <start time>" on stdout
  local mode=$1 n=$2 cfg dir cid port
  dir="$(base_dir "$mode")/node-$n"; port=$(broker_port "$mode" "$n")
  if port_open "$port"; then die "port $port is taken by another process; stop it or set STREAMLOOP_KAFKA_PORT"; fi
  cfg=$(render "$mode" "$n")
  local idfile; idfile="$(base_dir "$mode")/cluster.id"
  if [ ! -s "$idfile" ]; then
    java -cp "$LIB/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1 > "$idfile"
  fi
  cid=$(cat "$idfile")
  if [ ! -f "$dir/data/meta.properties" ]; then
    log "formatting storage of $mode node $n (cluster id $cid)"
    java -cp "$LIB/*" -Dlog4j.configuration="file:$HERE/log4j.properties" -Dkafka.logs.dir="$dir/logs" \
      kafka.tools.StorageTool format -t "$cid" -c "$cfg" --ignore-formatted >/dev/null
  fi
  local since; since=$(date '+%Y-%m-%d %H:%M:%S')
  # setsid: the broker must outlive the shell (and its process group) that started it.
  setsid nohup java -Xms"$HEAP" -Xmx"$HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Djava.awt.headless=true -Dlog4j.configuration="file:$HERE/log4j.properties" \
    -Dkafka.logs.dir="$dir/logs" -Dstreamloop.kafka.node="$mode-$n" \
    -cp "$LIB/*" kafka.Kafka "$cfg" >"$dir/logs/stdout.log" 2>&1 < /dev/null &
  echo $! > "$dir/kafka.pid"
  log "started $mode node $n (pid $!) on 127.0.0.1:$port"
  echo "$n $dir/logs/server.log $since"
}

wait_started() { # mode, then lines "node log since" on stdin
  local mode=$1 deadline=$((SECONDS + START_TIMEOUT)) n logf since
  while read -r n logf since; do
    until started_since "$logf" "$since"; do
      alive "$mode" "$n" || die "$mode node $n exited during start-up; see $(dirname "$logf")/server.log"
      [ $SECONDS -lt $deadline ] || die "$mode node $n did not start within ${START_TIMEOUT}s; see $logf"
      sleep 0.5
    done
    log "$mode node $n answers on 127.0.0.1:$(broker_port "$mode" "$n")"
  done
}

cmd_start() {
  local mode=${1:-single}; shift || true
  local ns=("$@"); [ ${#ns[@]} -gt 0 ] || read -r -a ns <<< "$(nodes_of "$mode")"
  need_java; jars
  local pending="" running="" n p
  for n in "${ns[@]}"; do
    if p=$(running_pid "$mode" "$n"); then running+="${running:+, }node $n pid $p"; continue; fi
    pending+="$(start_node "$mode" "$n")"$'\n'
  done
  # Starting what already runs is a no-op: one line says so, and the exit status is 0.
  [ -z "$running" ] || log "$mode already running ($running); left as it is"
  [ -n "$pending" ] || return 0
  printf '%s' "$pending" | wait_started "$mode"
}

stop_node() { # mode node signal
  local mode=$1 n=$2 sig=$3 p i
  p=$(pid_of "$mode" "$n")
  if [ -z "$p" ] || ! kill -0 "$p" 2>/dev/null; then rm -f "$(base_dir "$mode")/node-$n/kafka.pid"; return 0; fi
  kill -"$sig" "$p" 2>/dev/null || true
  for i in $(seq 1 60); do kill -0 "$p" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$p" 2>/dev/null; then log "$mode node $n ignored SIGTERM for 30 s; SIGKILL"; kill -9 "$p" 2>/dev/null || true; sleep 0.5; fi
  rm -f "$(base_dir "$mode")/node-$n/kafka.pid"
  log "stopped $mode node $n (pid $p, SIG$sig)"
}

cmd_stop() {
  local mode=${1:-single}; shift || true
  local ns=("$@"); [ ${#ns[@]} -gt 0 ] || read -r -a ns <<< "$(nodes_of "$mode")"
  # All at once: stopped one by one, the last node waits for a controller quorum that left.
  local n; for n in "${ns[@]}"; do stop_node "$mode" "$n" TERM & done
  wait
}

cmd_kill() {
  local mode=$1; shift
  local n; for n in "$@"; do stop_node "$mode" "$n" KILL; done
}

cmd_status() {
  local modes=("${1:-single}"); [ $# -gt 0 ] || modes=(single cluster)
  local mode n p rss
  for mode in "${modes[@]}"; do
    for n in $(nodes_of "$mode"); do
      if alive "$mode" "$n"; then
        p=$(pid_of "$mode" "$n"); rss=$(awk '/VmRSS/{printf "%d MiB", $2/1024}' "/proc/$p/status" 2>/dev/null || echo "?")
        printf 'kafka %-7s node %s  running  pid %-7s 127.0.0.1:%s  rss %s\n' "$mode" "$n" "$p" "$(broker_port "$mode" "$n")" "$rss"
      elif [ "$mode" = single ] || [ -d "$(base_dir "$mode")/node-$n" ]; then
        printf 'kafka %-7s node %s  stopped\n' "$mode" "$n"
      fi
    done
  done
}

cmd_running() {
  local mode=${1:-single} n
  for n in $(nodes_of "$mode"); do port_open "$(broker_port "$mode" "$n")" || return 1; done
}

case "${1:-}" in
  jars) jars ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  kill) shift; cmd_kill "$@" ;;
  status) shift; cmd_status "$@" ;;
  running) shift; cmd_running "$@" ;;
  *) sed -n '2,16p' "$0"; exit 2 ;;
esac
