#!/usr/bin/env bash
# Switchboard local dev infrastructure: PostgreSQL, Redis, NATS (JetStream)
# and Kafka (KRaft), run as plain local processes (no docker, no systemd).
#
#   infra.sh up            install what is missing, start what is not running, wait for health
#   infra.sh down          stop the servers this script started (data is kept)
#   infra.sh down --purge  stop them and delete the infra data dir
#   infra.sh status        one line per server; exit 0 only when all are healthy
#   infra.sh env           export lines for the connection settings (eval "$(infra.sh env)")
#
# NATS requires an nkey per client: one user per service with only its subjects
# (libs/nats NATS_PERMISSIONS), and `tools` for tests; seeds in
# <data>/nats/credentials/<user>.nk (SB_NATS_CREDENTIALS_DIR in `env`). Internal
# gRPC calls carry the mesh token from <data>/grpc-internal-token (GRPC_INTERNAL_TOKEN).
# Data lives in <repo>/.data/infra (override: SB_DATA_DIR), downloaded/built tools
# in <repo>/.data/tools (override: SB_TOOLS_DIR). Both are git-ignored.
# Ports: SB_PG_PORT SB_REDIS_PORT SB_NATS_PORT SB_NATS_MONITOR_PORT
#        SB_KAFKA_PORT SB_KAFKA_CONTROLLER_PORT
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../../.." && pwd -P)"
DATA_DIR="${SB_DATA_DIR:-$REPO_ROOT/.data/infra}"
TOOLS_DIR="${SB_TOOLS_DIR:-$REPO_ROOT/.data/tools}"

PG_PORT="${SB_PG_PORT:-54329}"
REDIS_PORT="${SB_REDIS_PORT:-63799}"
NATS_PORT="${SB_NATS_PORT:-42229}"
NATS_MONITOR_PORT="${SB_NATS_MONITOR_PORT:-8229}"
KAFKA_PORT="${SB_KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${SB_KAFKA_CONTROLLER_PORT:-19093}"

NATS_VERSIONS=(v2.15.2 v2.12 v2.11 v2.10)   # first one that builds with the local go wins
KAFKA_TOPICS=(sb.messages sb.notifications sb.events)
KAFKA_POM="$SCRIPT_DIR/kafka/pom.xml"
KAFKA_LIBS="$TOOLS_DIR/kafka/libs"
NATS_BIN="$TOOLS_DIR/bin/nats-server"

PG_DB=switchboard PG_USER=switchboard PG_PASSWORD=switchboard
PG_OS_USER=postgres                   # postgres refuses to run as root
MARKER=.switchboard-infra             # marks DATA_DIR as ours (guards --purge)

export PATH="$PATH:/usr/local/go/bin"  # the usual place of a tarball Go

# ---------------------------------------------------------------- helpers
log()  { printf '[infra] %s\n' "$*"; }
warn() { printf '[infra] WARNING: %s\n' "$*" >&2; }
die()  { printf '[infra] ERROR: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }
is_root() { [ "$(id -u)" -eq 0 ]; }

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() { timeout 1 bash -c ">/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# True when pid $1 is alive and its command line contains $2 (guards against pid reuse).
pid_is() {
  local pid="$1" pattern="$2"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$pattern"
}

read_pid() { [ -f "$1" ] && head -n1 "$1" | tr -dc '0-9' || true; }

# Start "$@" detached in its own session so it outlives this shell; the pid
# written is the server's own (bash writes $$ and then execs the command).
# fd 9 (our lock) is closed so servers do not hold it forever.
launch_bg() {
  local pidfile="$1" logfile="$2"; shift 2
  setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" \
    </dev/null >>"$logfile" 2>&1 9>&- &
}

# Wait up to $2 seconds for "$3..." to succeed; on timeout show the log $1.
wait_for() {
  local logfile="$1" timeout_s="$2"; shift 2
  local deadline=$((SECONDS + timeout_s))
  until "$@"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      warn "timed out after ${timeout_s}s; last lines of $logfile:"
      tail -n 30 "$logfile" >&2 2>/dev/null || true
      return 1
    fi
    sleep 0.5
  done
}

# Fail clearly when a port we need is used by someone else.
require_free_port() {
  local port="$1" name="$2" var="$3"
  if port_open "$port"; then
    die "port $port for $name is taken by another process; set $var (or stop that process)"
  fi
}

# Graceful stop: signal, wait up to $4 s, then SIGKILL.
stop_pid() {
  local name="$1" pid="$2" sig="$3" grace="$4" i
  log "stopping $name (pid $pid)"
  kill "-$sig" "$pid" 2>/dev/null || return 0
  for ((i = 0; i < grace * 4; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.25
  done
  warn "$name did not stop within ${grace}s; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  sleep 0.5
}

ensure_data_dir() {
  mkdir -p "$DATA_DIR" "$TOOLS_DIR"
  [ -f "$DATA_DIR/$MARKER" ] || echo "created by $SCRIPT_DIR/infra.sh" >"$DATA_DIR/$MARKER"
}

# Serialise concurrent `up`/`down` calls on the same data dir.
take_lock() {
  ensure_data_dir
  exec 9>"$DATA_DIR/.lock"
  flock -w 600 9 || die "another infra.sh holds $DATA_DIR/.lock"
}

# ---------------------------------------------------------------- installing
APT_UPDATED=0
apt_install() {
  is_root || die "missing packages ($*): run as root or install them: apt-get install -y $*"
  if [ "$APT_UPDATED" -eq 0 ]; then
    log "apt-get update (once)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  log "apt-get install -y $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

pg_bin_dir() {
  # Highest installed major version; a cluster must keep using its own version.
  local want="" d
  [ -f "$(pg_data_dir)/PG_VERSION" ] && want="$(cat "$(pg_data_dir)/PG_VERSION")"
  if [ -n "$want" ] && [ -x "/usr/lib/postgresql/$want/bin/postgres" ]; then
    echo "/usr/lib/postgresql/$want/bin"; return
  fi
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
  [ -n "$d" ] && [ -x "$d/postgres" ] && echo "$d"
}

install_system_packages() {
  local pkgs=()
  [ -n "$(pg_bin_dir || true)" ] || pkgs+=(postgresql)
  have redis-server || pkgs+=(redis-server)
  have redis-cli || pkgs+=(redis-tools)
  have curl || pkgs+=(curl)
  have java || pkgs+=(openjdk-17-jre-headless)
  have mvn || pkgs+=(maven)
  have go || pkgs+=(golang-go)
  have setsid && have flock && have runuser || pkgs+=(util-linux)
  if [ "${#pkgs[@]}" -gt 0 ]; then apt_install "${pkgs[@]}"; fi
  [ -n "$(pg_bin_dir || true)" ] || die "PostgreSQL binaries not found under /usr/lib/postgresql/*/bin"
}

nats_installed() { [ -x "$NATS_BIN" ] && "$NATS_BIN" --version >/dev/null 2>&1; }

# Build nats-server from source with `go install` (Go module proxy). Output to $1.
build_nats() {
  local out="$1" v
  mkdir -p "$TOOLS_DIR/bin"
  for v in "${NATS_VERSIONS[@]}"; do
    echo "== go install github.com/nats-io/nats-server/v2@$v" >>"$out"
    if GOBIN="$TOOLS_DIR/bin" CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
        go install "github.com/nats-io/nats-server/v2@$v" >>"$out" 2>&1; then
      return 0
    fi
  done
  return 1
}

kafka_libs_stamp() { echo "$KAFKA_LIBS/.complete-$(sha256sum "$KAFKA_POM" | cut -c1-16)"; }
kafka_installed() { [ -f "$(kafka_libs_stamp)" ]; }

# Fetch the Kafka runtime classpath from Maven Central. Output to $1.
fetch_kafka() {
  local out="$1" tmp="$KAFKA_LIBS.tmp"
  rm -rf "$tmp"
  mvn -B -q -f "$KAFKA_POM" dependency:copy-dependencies \
      -DoutputDirectory="$tmp" -DincludeScope=runtime >>"$out" 2>&1 || return 1
  ls "$tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || { echo "no kafka jar fetched" >>"$out"; return 1; }
  rm -rf "$KAFKA_LIBS" && mv "$tmp" "$KAFKA_LIBS"
  touch "$(kafka_libs_stamp)"
}

install_all() {
  install_system_packages
  # The two slow first-time steps run in parallel; their output goes to log files.
  local nats_job="" kafka_job="" nats_log="$TOOLS_DIR/nats-install.log" kafka_log="$TOOLS_DIR/kafka-install.log"
  if ! nats_installed; then
    log "building nats-server with go install (first time only, a few minutes; log: $nats_log)"
    : >"$nats_log"; build_nats "$nats_log" 9>&- & nats_job=$!
  fi
  if ! kafka_installed; then
    log "fetching Kafka jars from Maven Central (first time only; log: $kafka_log)"
    mkdir -p "$TOOLS_DIR/kafka"; : >"$kafka_log"; fetch_kafka "$kafka_log" 9>&- & kafka_job=$!
  fi
  local failed=0
  if [ -n "$nats_job" ] && ! wait "$nats_job"; then
    warn "nats-server build failed:"; tail -n 30 "$nats_log" >&2; failed=1
  fi
  if [ -n "$kafka_job" ] && ! wait "$kafka_job"; then
    warn "Kafka jar fetch failed:"; tail -n 30 "$kafka_log" >&2; failed=1
  fi
  [ "$failed" -eq 0 ] || die "installation failed"
  [ -z "$nats_job" ] || log "installed $("$NATS_BIN" --version 2>&1)"
  [ -z "$kafka_job" ] || log "installed Kafka jars ($(ls "$KAFKA_LIBS"/kafka_2.13-*.jar | xargs -n1 basename))"
}

# ---------------------------------------------------------------- PostgreSQL
# The cluster must be reachable by the postgres OS user. Prefer DATA_DIR/postgres;
# if an ancestor of DATA_DIR is not traversable (e.g. a repo under /root), use a
# fixed per-checkout path under /var/tmp instead.
pg_run_user() { if is_root; then echo "$PG_OS_USER"; else id -un; fi; }
pg_fallback_dir() { echo "/var/tmp/switchboard-pg-$(printf '%s' "$DATA_DIR" | sha256sum | cut -c1-12)/postgres"; }
as_pg() { if is_root; then (cd / && runuser -u "$PG_OS_USER" -- "$@"); else "$@"; fi; }

PG_DATA_CACHE=""
pg_data_dir() {
  if [ -z "$PG_DATA_CACHE" ]; then
    local fb; fb="$(pg_fallback_dir)"
    if [ -d "$fb" ] && [ ! -f "$DATA_DIR/postgres/PG_VERSION" ]; then PG_DATA_CACHE="$fb"
    else PG_DATA_CACHE="$DATA_DIR/postgres"; fi
  fi
  echo "$PG_DATA_CACHE"
}

pg_prepare_dir() {
  local dir; dir="$(pg_data_dir)"
  is_root && { id "$PG_OS_USER" >/dev/null 2>&1 || die "system user $PG_OS_USER missing (comes with the postgresql package)"; }
  mkdir -p "$dir"
  chmod 700 "$dir"
  is_root && chown "$PG_OS_USER:" "$dir"
  if is_root && ! as_pg test -w "$dir"; then
    # Make the folders we created traversable (o+x only, no read).
    chmod o+x "$DATA_DIR" "$(dirname "$DATA_DIR")" 2>/dev/null || true
    if ! as_pg test -w "$dir"; then
      rmdir "$dir" 2>/dev/null || true
      PG_DATA_CACHE="$(pg_fallback_dir)"
      warn "user $PG_OS_USER cannot reach $dir; using $PG_DATA_CACHE"
      mkdir -p "$PG_DATA_CACHE"; chmod 711 "$(dirname "$PG_DATA_CACHE")"
      chmod 700 "$PG_DATA_CACHE"; chown "$PG_OS_USER:" "$PG_DATA_CACHE"
    fi
  fi
}

pg_pid() { read_pid "$(pg_data_dir)/postmaster.pid"; }
pg_running() { pid_is "$(pg_pid)" postgres; }
pg_psql() { # as superuser over TCP
  "$(pg_bin_dir)/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"
}
pg_healthy() {
  pg_running && [ "$(pg_psql -d postgres -Atc 'select 1' 2>/dev/null)" = 1 ]
}

# Unix socket inside the data dir unless the path is too long for a socket.
pg_socket_dir() { local d; d="$(pg_data_dir)"; if [ "${#d}" -lt 90 ]; then echo "$d"; else echo /tmp; fi; }

pg_write_conf() {
  local dir sock; dir="$(pg_data_dir)"; sock="$(pg_socket_dir)"
  as_pg tee "$dir/switchboard.conf" >/dev/null <<EOF
# Written by infra.sh on every start; edit infra.sh, not this file.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$sock'
max_connections = 300
logging_collector = off
log_min_messages = warning
EOF
}

pg_up() {
  if pg_running; then
    wait_for "$(pg_data_dir)/server.log" 60 pg_healthy || die "PostgreSQL (pid $(pg_pid)) runs but is not healthy; try: $0 down"
    log "PostgreSQL already running  127.0.0.1:$PG_PORT  (data: $(pg_data_dir))"
    return
  fi
  require_free_port "$PG_PORT" PostgreSQL SB_PG_PORT
  pg_prepare_dir
  local dir bin; dir="$(pg_data_dir)"; bin="$(pg_bin_dir)"
  if [ ! -f "$dir/PG_VERSION" ]; then
    log "initdb PostgreSQL cluster in $dir"
    as_pg "$bin/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$DATA_DIR/pg-initdb.log" 2>&1 \
      || { cat "$DATA_DIR/pg-initdb.log" >&2; die "initdb failed"; }
    echo "include_if_exists = 'switchboard.conf'" | as_pg tee -a "$dir/postgresql.conf" >/dev/null
  fi
  # Lock files left by a crash or a reboot would block the start (postgres only
  # checks that their pid exists, and a just-killed one may linger as a zombie).
  [ -f "$dir/postmaster.pid" ] && ! pg_running && rm -f "$dir/postmaster.pid"
  pg_write_conf
  local lock; lock="$(pg_socket_dir)/.s.PGSQL.$PG_PORT.lock"
  if [ -f "$lock" ] && ! pid_is "$(read_pid "$lock")" postgres; then
    rm -f "$lock" "$(pg_socket_dir)/.s.PGSQL.$PG_PORT"
  fi
  as_pg setsid "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start >/dev/null 9>&- \
    || { tail -n 30 "$dir/server.log" >&2; die "PostgreSQL failed to start"; }
  wait_for "$dir/server.log" 60 pg_healthy || die "PostgreSQL did not become healthy"
  # Application role (not superuser, may create databases/schemas) and its database.
  pg_psql -d postgres <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
    CREATE ROLE $PG_USER LOGIN PASSWORD '$PG_PASSWORD' NOSUPERUSER CREATEDB;
  END IF;
END \$\$;
SELECT 'CREATE DATABASE $PG_DB OWNER $PG_USER'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$PG_DB') \gexec
SQL
  log "PostgreSQL ready            127.0.0.1:$PG_PORT  (pid $(pg_pid), data: $dir)"
}

pg_down() {
  pg_running || return 0
  stop_pid PostgreSQL "$(pg_pid)" INT 60   # SIGINT = fast shutdown (SIGTERM would wait for clients)
}

# ---------------------------------------------------------------- Redis
REDIS_DIR="$DATA_DIR/redis"
redis_pid() { read_pid "$REDIS_DIR/redis.pid"; }
redis_running() { pid_is "$(redis_pid)" redis-server; }
redis_healthy() { redis_running && [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }

redis_up() {
  if redis_running; then
    wait_for "$REDIS_DIR/redis.log" 60 redis_healthy || die "Redis (pid $(redis_pid)) runs but is not healthy; try: $0 down"
    log "Redis already running       127.0.0.1:$REDIS_PORT"
    return
  fi
  require_free_port "$REDIS_PORT" Redis SB_REDIS_PORT
  mkdir -p "$REDIS_DIR"
  cat >"$REDIS_DIR/redis.conf" <<EOF
# Written by infra.sh on every start.
bind 127.0.0.1
port $REDIS_PORT
protected-mode yes
daemonize no
supervised no
dir $REDIS_DIR
dbfilename dump.rdb
appendonly no
logfile ""
loglevel notice
EOF
  launch_bg "$REDIS_DIR/redis.pid" "$REDIS_DIR/redis.log" redis-server "$REDIS_DIR/redis.conf"
  wait_for "$REDIS_DIR/redis.log" 60 redis_healthy || die "Redis did not become healthy"
  log "Redis ready                 127.0.0.1:$REDIS_PORT  (pid $(redis_pid))"
}

redis_down() { redis_running && stop_pid Redis "$(redis_pid)" TERM 30 || true; }

# ---------------------------------------------------------------- NATS
NATS_DIR="$DATA_DIR/nats"
nats_pid() { read_pid "$NATS_DIR/nats.pid"; }
nats_running() { pid_is "$(nats_pid)" nats-server; }
nats_healthy() {
  nats_running && curl -fsS -m 2 "http://127.0.0.1:$NATS_MONITOR_PORT/healthz?js-enabled-only=true" >/dev/null 2>&1
}

# Users and permissions (libs/nats NATS_PERMISSIONS) with the dev nkeys, written
# by the built devenv; the seeds stay in $NATS_DIR/credentials (one per service).
nats_write_conf() {
  local generator="$REPO_ROOT/libs/devenv/dist/nats-auth.js"
  [ -f "$generator" ] || die "NATS needs its users from the built workspace ($generator): run npm run bootstrap (or pnpm build) first"
  mkdir -p "$NATS_DIR"
  node "$generator" "$NATS_DIR" || die "could not write the NATS users ($generator)"
  cat >"$NATS_DIR/nats.conf" <<EOF
# Written by infra.sh on every start; edit infra.sh, not this file.
server_name: switchboard-dev
listen: 127.0.0.1:$NATS_PORT
http: 127.0.0.1:$NATS_MONITOR_PORT
# JetStream keeps its files in $NATS_DIR/jetstream (nats-server appends "jetstream").
jetstream { store_dir: "$NATS_DIR" }
# Every client authenticates with an nkey; each service may use only its own subjects.
include ./authorization.conf
EOF
}

nats_conf_sum() { cat "$NATS_DIR/nats.conf" "$NATS_DIR/authorization.conf" 2>/dev/null | sha256sum | cut -c1-16; }

nats_up() {
  if nats_running && ! pid_is "$(nats_pid)" "$NATS_DIR/nats.conf"; then
    # Started by an older infra.sh without authorization: start it again with the users.
    log "NATS runs without the users' authorization; restarting it"
    nats_down
  fi
  if nats_running; then
    local before; before="$(nats_conf_sum)"
    nats_write_conf
    if [ "$before" != "$(nats_conf_sum)" ]; then
      log "NATS configuration changed; reloading"
      kill -HUP "$(nats_pid)"
    fi
    wait_for "$NATS_DIR/nats.log" 60 nats_healthy || die "NATS (pid $(nats_pid)) runs but is not healthy; try: $0 down"
    log "NATS already running        127.0.0.1:$NATS_PORT  (monitor :$NATS_MONITOR_PORT)"
    return
  fi
  require_free_port "$NATS_PORT" NATS SB_NATS_PORT
  require_free_port "$NATS_MONITOR_PORT" "NATS monitoring" SB_NATS_MONITOR_PORT
  nats_write_conf
  launch_bg "$NATS_DIR/nats.pid" "$NATS_DIR/nats.log" "$NATS_BIN" -c "$NATS_DIR/nats.conf"
  wait_for "$NATS_DIR/nats.log" 60 nats_healthy || die "NATS did not become healthy"
  log "NATS ready                  127.0.0.1:$NATS_PORT  (pid $(nats_pid), JetStream on, nkey users, monitor :$NATS_MONITOR_PORT)"
}

nats_down() { nats_running && stop_pid NATS "$(nats_pid)" TERM 30 || true; }

# ---------------------------------------------------------------- Kafka
KAFKA_DIR="$DATA_DIR/kafka"
kafka_pid() { read_pid "$KAFKA_DIR/kafka.pid"; }
kafka_running() { pid_is "$(kafka_pid)" kafka.Kafka; }

# Short-lived JVM for Kafka CLI tools (quick start, quiet logging).
kafka_tool() {
  java -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
    -Dlog4j.configuration="file:$KAFKA_DIR/tools-log4j.properties" \
    -cp "$KAFKA_LIBS/*" "$@"
}
kafka_topics() {
  timeout 60 java -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
    -Dlog4j.configuration="file:$KAFKA_DIR/tools-log4j.properties" \
    -cp "$KAFKA_LIBS/*" org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "127.0.0.1:$KAFKA_PORT" --command-config "$KAFKA_DIR/admin.properties" "$@"
}
# Healthy = a client can actually talk to the broker (not just an open port).
kafka_healthy() { kafka_running && port_open "$KAFKA_PORT" && kafka_topics --list >/dev/null 2>&1; }

kafka_write_conf() {
  mkdir -p "$KAFKA_DIR/data" "$KAFKA_DIR/logs"
  cat >"$KAFKA_DIR/server.properties" <<EOF
# Written by infra.sh on every start: single node, combined broker + controller (KRaft).
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DIR/data
num.partitions=3
default.replication.factor=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.hours=168
EOF
  cat >"$KAFKA_DIR/log4j.properties" <<EOF
# Broker logs go to files in $KAFKA_DIR/logs, not to stdout.
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File=$KAFKA_DIR/logs/server.log
log4j.appender.file.MaxFileSize=20MB
log4j.appender.file.MaxBackupIndex=3
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=INFO
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.request.logger=WARN
EOF
  cat >"$KAFKA_DIR/tools-log4j.properties" <<EOF
log4j.rootLogger=ERROR, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n
EOF
  cat >"$KAFKA_DIR/admin.properties" <<EOF
request.timeout.ms=5000
default.api.timeout.ms=10000
EOF
}

# Launch the broker without waiting (it is the slowest to start).
kafka_start() {
  if kafka_running; then return 0; fi
  require_free_port "$KAFKA_PORT" Kafka SB_KAFKA_PORT
  require_free_port "$KAFKA_CONTROLLER_PORT" "Kafka controller" SB_KAFKA_CONTROLLER_PORT
  kafka_write_conf
  # Format the KRaft storage once, with a cluster id generated once and kept.
  if [ ! -f "$KAFKA_DIR/data/meta.properties" ]; then
    [ -s "$KAFKA_DIR/cluster.id" ] || kafka_tool kafka.tools.StorageTool random-uuid >"$KAFKA_DIR/cluster.id"
    log "formatting Kafka storage (cluster id $(cat "$KAFKA_DIR/cluster.id"))"
    kafka_tool kafka.tools.StorageTool format -t "$(cat "$KAFKA_DIR/cluster.id")" \
      -c "$KAFKA_DIR/server.properties" --ignore-formatted >"$KAFKA_DIR/format.log" 2>&1 \
      || { cat "$KAFKA_DIR/format.log" >&2; die "Kafka storage format failed"; }
  fi
  (cd "$KAFKA_DIR" && launch_bg "$KAFKA_DIR/kafka.pid" "$KAFKA_DIR/kafka.out" \
    java -Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dlog4j.configuration="file:$KAFKA_DIR/log4j.properties" -Dkafka.logs.dir="$KAFKA_DIR/logs" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_DIR/server.properties")
  KAFKA_STARTED=1
}

kafka_up() {
  local started="${KAFKA_STARTED:-0}"
  kafka_running || die "Kafka is not running; see $KAFKA_DIR/kafka.out and $KAFKA_DIR/logs/server.log"
  kafka_write_conf   # tool configs must exist even when the broker was already running
  wait_for "$KAFKA_DIR/logs/server.log" 120 kafka_healthy || die "Kafka did not become healthy"
  # Create the well-known topics that are still missing (idempotent).
  local existing t
  existing="$(kafka_topics --list 2>/dev/null || true)"
  for t in "${KAFKA_TOPICS[@]}"; do
    if ! grep -qx -- "$t" <<<"$existing"; then
      kafka_topics --create --if-not-exists --topic "$t" --partitions 3 --replication-factor 1 >/dev/null \
        || die "could not create Kafka topic $t"
      log "created Kafka topic $t"
    fi
  done
  if [ "$started" = 1 ]; then
    log "Kafka ready                 127.0.0.1:$KAFKA_PORT  (pid $(kafka_pid), controller :$KAFKA_CONTROLLER_PORT)"
  else
    log "Kafka already running       127.0.0.1:$KAFKA_PORT"
  fi
}

kafka_down() { kafka_running && stop_pid Kafka "$(kafka_pid)" TERM 60 || true; }

# ---------------------------------------------------------------- commands
# Ports of servers that are not already running (as ours) must be free.
preflight_ports() {
  pg_running || require_free_port "$PG_PORT" PostgreSQL SB_PG_PORT
  redis_running || require_free_port "$REDIS_PORT" Redis SB_REDIS_PORT
  if ! nats_running; then
    require_free_port "$NATS_PORT" NATS SB_NATS_PORT
    require_free_port "$NATS_MONITOR_PORT" "NATS monitoring" SB_NATS_MONITOR_PORT
  fi
  if ! kafka_running; then
    require_free_port "$KAFKA_PORT" Kafka SB_KAFKA_PORT
    require_free_port "$KAFKA_CONTROLLER_PORT" "Kafka controller" SB_KAFKA_CONTROLLER_PORT
  fi
}

# The mesh's shared secret for internal gRPC calls without mTLS (GRPC_INTERNAL_TOKEN), made once.
INTERNAL_TOKEN_FILE="$DATA_DIR/grpc-internal-token"
ensure_internal_token() {
  [ -s "$INTERNAL_TOKEN_FILE" ] && return 0
  (umask 077 && head -c 32 /dev/urandom | base64 | tr -d '\n/+=' >"$INTERNAL_TOKEN_FILE")
}

cmd_up() {
  local t0=$SECONDS
  take_lock
  install_all
  ensure_internal_token
  preflight_ports # fail before starting anything when a port is taken
  kafka_start     # slowest to boot: let it start while the others come up
  pg_up
  redis_up
  nats_up
  kafka_up
  log "all servers ready in $((SECONDS - t0))s (data: $DATA_DIR). Connection settings: $0 env"
}

cmd_down() {
  local purge=0
  case "${1:-}" in
    --purge) purge=1 ;;
    "") ;;
    *) die "unknown option for down: $1" ;;
  esac
  [ -d "$DATA_DIR" ] || { log "nothing to stop ($DATA_DIR does not exist)"; return 0; }
  take_lock
  kafka_down; nats_down; redis_down; pg_down
  log "all servers stopped"
  if [ "$purge" = 1 ]; then
    [ -f "$DATA_DIR/$MARKER" ] || die "$DATA_DIR has no $MARKER file; not deleting data we did not create"
    local fb; fb="$(pg_fallback_dir)"
    [ -d "$fb" ] && rm -rf "$(dirname "$fb")"
    rm -rf "$DATA_DIR"
    log "deleted $DATA_DIR"
  fi
}

status_line() { # name port running-fn healthy-fn pid
  local name="$1" port="$2" state
  if "$4"; then state="running, healthy"
  elif "$3"; then state="running, NOT healthy"
  elif port_open "$port"; then state="not running (port taken by another process)"
  else state="not running"; fi
  printf '%-11s 127.0.0.1:%-6s %s\n' "$name" "$port" "$state"
  [ "$state" = "running, healthy" ]
}

cmd_status() {
  local ok=0
  status_line PostgreSQL "$PG_PORT" pg_running pg_healthy || ok=1
  status_line Redis "$REDIS_PORT" redis_running redis_healthy || ok=1
  status_line NATS "$NATS_PORT" nats_running nats_healthy || ok=1
  if kafka_installed && [ -f "$KAFKA_DIR/admin.properties" ]; then
    status_line Kafka "$KAFKA_PORT" kafka_running kafka_healthy || ok=1
  else
    status_line Kafka "$KAFKA_PORT" kafka_running false || ok=1
  fi
  return "$ok"
}

cmd_env() {
  cat <<EOF
export DATABASE_URL='postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB'
export DATABASE_ADMIN_URL='postgres://postgres@127.0.0.1:$PG_PORT/$PG_DB'
export REDIS_URL='redis://127.0.0.1:$REDIS_PORT'
export NATS_URL='nats://127.0.0.1:$NATS_PORT'
export KAFKA_BROKERS='127.0.0.1:$KAFKA_PORT'
export SB_NATS_CREDENTIALS_DIR='$NATS_DIR/credentials'
EOF
  if [ -s "$INTERNAL_TOKEN_FILE" ]; then echo "export GRPC_INTERNAL_TOKEN='$(cat "$INTERNAL_TOKEN_FILE")'"; fi
}

usage() {
  sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
}

main() {
  local cmd="${1:-}"; shift || true
  case "$cmd" in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    status) cmd_status "$@" ;;
    env) cmd_env "$@" ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
