#!/usr/bin/env bash
# The load benchmark: wapphook on loopback under wrk (1 thread, keep-alive, a 677-byte
# signed incoming_message), with a Lua handler reading the payload, the file_sink plugin,
# HTTPS, and GET challenges. With --peers, nginx + Lua (same work: HMAC via OpenSSL, JSON
# decode, field reads), nginx's bare `return 200` and adnanh/webhook run the same load in
# the same run, alternating with wapphook, and the table gives ratios.
# Usage: bench/run.sh BUILD_DIR [--peers]    (env: BENCH_SECONDS, default 8; BENCH_ROUNDS, 2;
#        BENCH_ONLY, an extended regex of scenario names to run, e.g. 'durable|sink', or 'dest'
#        for the destinations alone; BENCH_DESTS, which of them, default all four;
#        BENCH_PLUGIN_DIR, where the destination plugins come from, default the build's)
set -euo pipefail
build=$(cd "$1" && pwd)
peers=${2:-}
here=$(cd "$(dirname "$0")" && pwd)
secs=${BENCH_SECONDS:-8}
rounds=${BENCH_ROUNDS:-2}
tmp=$(mktemp -d)
pids=()
pg_ctl_=
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  [ -n "$pg_ctl_" ] && $pg_ctl_ stop -m fast -w -D "$tmp/pg/data" >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT

export WAPPCLOUD_SECRET=bench-secret-$RANDOM
sig=$("$build/wapphook" sign "$here/event.json")
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null
cat "$tmp/key.pem" "$tmp/cert.pem" > "$tmp/server.pem"
cp -r "$here/scripts" "$tmp/scripts"

manifest() { # name, hooks
  cat > "$tmp/$1.yaml" <<Y
server:
  listen: [http://127.0.0.1:18080, https://127.0.0.1:18443]
  tls: {certificate: server.pem}
secrets: [{env: WAPPCLOUD_SECRET}]
hooks:
$2
Y
}
manifest lua "  incoming_message:
    - lua: scripts/bench.lua"
# the same with the console's sync-mode history on (the default once server.admin is set): each
# event and each attempt kept in memory, the last 1,000
manifest lua-history "  incoming_message:
    - lua: scripts/bench.lua
console:
  history: 1000"
sed -i 's|^  tls: {certificate: server.pem}|&\n  admin: 127.0.0.1:18099|' "$tmp/lua-history.yaml"
# outbound: one keep-alive HTTP call per event to a second wapphook (sync, then durable)
manifest http "  incoming_message:
    - lua: scripts/call.lua
http:
  allow: [127.0.0.1/32]"
manifest http-durable "  incoming_message:
    - lua: scripts/call.lua
http:
  allow: [127.0.0.1/32]
delivery:
  mode: durable
  spool: $tmp/spool-http.db"
cat > "$tmp/upstream.yaml" <<Y
server:
  listen: [http://127.0.0.1:18090]
secrets: [{env: WAPPCLOUD_SECRET}]
hooks: {}
Y
manifest sink "  incoming_message:
    - plugin: $build/plugins/file_sink.so
      config: {path: $tmp/events.ndjson}"
# durable: 200 only once committed (group commit, synchronous=FULL), then the same sink
manifest durable "  incoming_message:
    - plugin: $build/plugins/file_sink.so
      config: {path: $tmp/events-durable.ndjson}
delivery:
  mode: durable
  spool: $tmp/spool.db"
# the same on a spool that already holds a million delivered events (kept: keep_delivered_s of
# a century), and on one whose million events are all past keep_delivered_s (an hour), so that
# retention removes them while the load runs
for kind in 1m purge; do
  keep=3153600000; [ $kind = purge ] && keep=3600
  manifest durable-$kind "  incoming_message:
    - plugin: $build/plugins/file_sink.so
      config: {path: $tmp/events-$kind.ndjson}
delivery:
  mode: durable
  spool: $tmp/spool-$kind.db
  keep_delivered_s: $keep
  max_spool_mb: 8192"
done
# fill_spool KIND AGE_S: the server makes the spool, bench/spool_fill.py puts the events in
fill_spool() {
  "$build/wapphook" serve -c "$tmp/durable-$1.yaml" --log-level warn 2>>"$tmp/wapphook.log" &
  local p=$!; wait_port 18080; kill $p; wait $p 2>/dev/null || true
  python3 "$here/spool_fill.py" "$tmp/spool-$1.db" 1000000 1 "$2"
}
# The console's API on the spool of a million events: the server with an admin listener,
# each question asked 11 times, the median and the worst, in ms (curl's total time).
console_latency() {
  sed 's|^  tls: {certificate: server.pem}|&\n  admin: 127.0.0.1:18099|' "$tmp/durable-1m.yaml" \
    > "$tmp/console-1m.yaml"
  "$build/wapphook" serve -c "$tmp/console-1m.yaml" --log-level warn 2>>"$tmp/wapphook.log" &
  local p=$!; pids+=($p); wait_port 18099
  local newest; newest=$(curl -s 'http://127.0.0.1:18099/api/events?limit=1' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["events"][0]["id"])')
  printf '\nconsole API on a spool of 1,000,000 events (median / worst of 11, ms):\n'
  local q
  for q in "events?limit=50" "events?limit=50&before=$((newest - 500000))" \
           "events/$((newest - 123456))" "events?state=dead&limit=50" \
           "events?q=wamid.fill.000123455" "events?type=rare_type&limit=50" \
           "events?q=no-such-text&limit=50" "stats?window_s=900"; do
    local t; t=$(for _ in $(seq 11); do
      curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:18099/api/$q"; done |
      sort -n | awk '{v[NR] = $1 * 1000} END {printf "%.2f / %.2f", v[6], v[NR]}')
    printf '  %-52s %s\n' "GET /api/$q" "$t"
  done
  kill $p; wait $p 2>/dev/null || true
}
spool_events() { "$build/wapphook" spool stats -c "$tmp/durable-$1.yaml" | awk '/^events:/ {print $2}'; }

# the shared spool: a throwaway PostgreSQL cluster (Debian's, as postgres when root: initdb
# refuses root), unix socket only, fsync and synchronous_commit on; checkpoints spaced out as
# on a database sized for this write rate (the default max_wal_size of 1 GB checkpoints every
# few seconds here, and each checkpoint stalls commits for 50-100 ms)
pg_up() {
  local bin; bin=$(ls -d /usr/lib/postgresql/*/bin | tail -1)
  local as=""; [ "$(id -u)" = 0 ] && as="runuser -u postgres --"
  chmod 755 "$tmp"; mkdir -p "$tmp/pg/sock"
  [ -n "$as" ] && chown -R postgres: "$tmp/pg"
  $as "$bin/initdb" -D "$tmp/pg/data" -A trust -U postgres --no-sync -E UTF8 >"$tmp/pg/initdb.log" 2>&1
  pg_ctl_="$as $bin/pg_ctl"
  $pg_ctl_ start -w -D "$tmp/pg/data" -l "$tmp/pg/server.log" \
    -o "-k $tmp/pg/sock -p 5432 -c listen_addresses= -c max_wal_size=4GB -c checkpoint_timeout=30min" >/dev/null
}
pg_uri() { echo "postgresql://postgres@/postgres?host=$tmp/pg/sock&port=5432"; }

wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

start_wapphook() { # manifest
  "$build/wapphook" serve -c "$tmp/$1.yaml" --log-level warn 2>>"$tmp/wapphook.log" &
  server_pid=$!; pids+=($server_pid); wait_port 18080
}
start_nginx() {
  sed -e "s|@DIR@|$tmp|g" -e "s|@SECRET@|$WAPPCLOUD_SECRET|g" -e "s|@CERT@|$tmp/server.pem|g" \
      -e "s|@HTTP_PORT@|18080|g" -e "s|@HTTPS_PORT@|18443|g" "$here/nginx.conf.in" > "$tmp/nginx.conf"
  nginx -c "$tmp/nginx.conf" -p "$tmp" 2>>"$tmp/nginx.log" &
  server_pid=$!; pids+=($server_pid); wait_port 18080
}
start_webhook() {
  sed "s|@SECRET@|$WAPPCLOUD_SECRET|g" "$here/webhook-hooks.json.in" > "$tmp/hooks.json"
  webhook -hooks "$tmp/hooks.json" -ip 127.0.0.1 -port 18080 >>"$tmp/webhook.log" 2>&1 &
  server_pid=$!; pids+=($server_pid); wait_port 18080
}
stop_server() { # and wait until nothing listens on the ports: the next server must bind them
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
  for _ in $(seq 200); do
    (exec 3<>/dev/tcp/127.0.0.1/18080) 2>/dev/null || (exec 3<>/dev/tcp/127.0.0.1/18443) 2>/dev/null || return 0
    sleep 0.05
  done
  echo "ports 18080/18443 still in use after the server stopped" >&2; return 1
}

to_ms() { # "1.23ms" | "456.00us" | "1.2s" -> milliseconds
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.2f", n }'
}
# load URL CONNS [post] -> "rps p50 p99 non2xx"
load() {
  local args=(-t1 -c"$2" -d"${secs}s" --latency)
  [ "${3:-}" = post ] && args+=(-s "$here/post.lua")
  local out; out=$(wrk "${args[@]}" "$1" ${3:+-- "$sig" "$here/event.json"} 2>&1)
  local rps p50 p99 bad
  rps=$(echo "$out" | awk '/Requests\/sec/ {printf "%d", $2}')
  p50=$(to_ms "$(echo "$out" | awk '$1 == "50%" {print $2}')")
  p99=$(to_ms "$(echo "$out" | awk '$1 == "99%" {print $2}')")
  bad=$(echo "$out" | awk '/Non-2xx/ {print $NF} /Socket errors/ {print "sock"}' | head -1)
  echo "$rps $p50 $p99 ${bad:-0}"
}

declare -A res
run() { # key server-start-fn manifest url conns [post]
  local key=$1 start=$2 m=$3 url=$4 c=$5 mode=${6:-}
  $start "$m"
  local r; r=$(load "$url" "$c" "$mode")
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "$key: the server exited during the run; its log:" >&2
    for f in "$tmp"/*.log; do echo "== $f" >&2; tail -n 20 "$f" >&2; done
    exit 1
  fi
  if [ "$start" = start_wapphook ] && [ -z "${rss[$key]:-}" ]; then
    rss[$key]=$(awk '/VmRSS/ {print $2}' /proc/$server_pid/status)
  fi
  stop_server
  # keep the best round: these are shared machines, noise only ever slows a run down
  local best=${res[$key]:-"0 0 0 0"}
  if [ "${r%% *}" -gt "${best%% *}" ]; then res[$key]=$r; fi
}
declare -A rss

# Two instances on one PostgreSQL spool, 8 connections each at once: requests per second
# summed, the worse p50 and p99 of the two.
run_pair() { # key
  local key=$1 a b
  "$build/wapphook" serve -c "$tmp/durable-pg-18080.yaml" --log-level warn 2>>"$tmp/wapphook.log" &
  local p1=$!; pids+=($p1)
  "$build/wapphook" serve -c "$tmp/durable-pg-18081.yaml" --log-level warn 2>>"$tmp/wapphook.log" &
  local p2=$!; pids+=($p2)
  wait_port 18080; wait_port 18081
  load http://127.0.0.1:18080/webhook 8 post > "$tmp/pair-a" & a=$!
  load http://127.0.0.1:18081/webhook 8 post > "$tmp/pair-b" & b=$!
  wait $a $b
  kill "$p1" "$p2"; wait "$p1" "$p2" 2>/dev/null || true
  local r; r=$(awk 'NR == FNR {r = $1; p50 = $2; p99 = $3; bad = $4; next}
                    {printf "%d %.2f %.2f %s", r + $1, ($2 > p50 ? $2 : p50), ($3 > p99 ? $3 : p99),
                            (bad == 0 && $4 == 0 ? 0 : bad "+" $4)}' "$tmp/pair-a" "$tmp/pair-b")
  local best=${res[$key]:-"0 0 0 0"}
  if [ "${r%% *}" -gt "${best%% *}" ]; then res[$key]=$r; fi
  for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/18080) 2>/dev/null || break; sleep 0.05; done
}

scenarios=(
  "post-lua-c16|lua|http://127.0.0.1:18080/webhook|16|post"
  "post-lua-history-c16|lua-history|http://127.0.0.1:18080/webhook|16|post"
  "post-lua-c64|lua|http://127.0.0.1:18080/webhook|64|post"
  "post-lua-https-c16|lua|https://127.0.0.1:18443/webhook|16|post"
  "post-sink-c16|sink|http://127.0.0.1:18080/webhook|16|post"
  "post-durable-c16|durable|http://127.0.0.1:18080/webhook|16|post"
  "post-durable-1m-c16|durable-1m|http://127.0.0.1:18080/webhook|16|post"
  "post-durable-purge-c16|durable-purge|http://127.0.0.1:18080/webhook|16|post"
  "post-durable-pg-c16|durable-pg|http://127.0.0.1:18080/webhook|16|post"
  "post-durable-pg2-c16|durable-pg|http://127.0.0.1:18080/webhook|16|post"
  "post-http-c16|http|http://127.0.0.1:18080/webhook|16|post"
  "post-http-durable-c16|http-durable|http://127.0.0.1:18080/webhook|16|post"
  "get-challenge-c16|lua|http://127.0.0.1:18080/webhook?challenge=abc|16|"
)
if [ -n "${BENCH_ONLY:-}" ]; then
  kept=(); for s in "${scenarios[@]}"; do [[ ${s%%|*} =~ $BENCH_ONLY ]] && kept+=("$s"); done
  scenarios=("${kept[@]}")
fi
if printf '%s\n' "${scenarios[@]}" | grep -q '^post-durable-pg'; then
  pg_up
  # the same sink, the spool in PostgreSQL; the second instance of the pair on 18081
  for port in 18080 18081; do
    cat > "$tmp/durable-pg-$port.yaml" <<Y
server:
  listen: [http://127.0.0.1:$port]
secrets: [{env: WAPPCLOUD_SECRET}]
hooks:
  incoming_message:
    - plugin: $build/plugins/file_sink.so
      config: {path: $tmp/events-pg.ndjson}
delivery:
  mode: durable
  spool: "$(pg_uri)"
Y
  done
  cp "$tmp/durable-pg-18080.yaml" "$tmp/durable-pg.yaml"
fi
if printf '%s\n' "${scenarios[@]}" | grep -q '^post-durable-1m'; then fill_spool 1m 60; fi
if printf '%s\n' "${scenarios[@]}" | grep -q '^post-durable-purge'; then fill_spool purge 7200; fi
declare -A purged
if printf '%s\n' "${scenarios[@]}" | grep -q '^post-http'; then
  "$build/wapphook" serve -c "$tmp/upstream.yaml" --log-level warn 2>>"$tmp/upstream.log" &
  pids+=($!); wait_port 18090
fi
for round in $(seq "$rounds"); do
  for s in "${scenarios[@]}"; do
    IFS='|' read -r name m url c mode <<<"$s"
    if [ "$name" = post-durable-pg2-c16 ]; then run_pair "wapphook/$name"; continue; fi
    [ "$name" = post-durable-purge-c16 ] && before=$(spool_events purge)
    run "wapphook/$name" start_wapphook "$m" "$url" "$c" "$mode"
    if [ "$name" = post-durable-purge-c16 ]; then # events removed meanwhile, per second
      after=$(spool_events purge)
      read -r prps _ <<<"${res[wapphook/$name]}"
      purged[$round]="$before $after $(( (before - after) / secs + prps ))"
    fi
    if [ "$peers" = --peers ] && [[ $name != post-durable* && $name != post-http* && $name != *history* ]]; then
      nurl=$url
      [ "$name" = get-challenge-c16 ] && nurl=http://127.0.0.1:18080/ceiling
      run "nginx/$name" start_nginx - "$nurl" "$c" "$mode"
      if [ "$name" = post-lua-c16 ] && [ "$round" = 1 ]; then
        run "webhook/$name" start_webhook - http://127.0.0.1:18080/hooks/webhook "$c" "$mode"
      fi
    fi
  done
done

printf '\n%-20s %28s' "scenario" "wapphook rps / p50 / p99 ms"
[ "$peers" = --peers ] && printf ' %30s %8s' "peer rps / p50 / p99 ms" "ratio"
printf '\n'
for s in "${scenarios[@]}"; do
  IFS='|' read -r name _ <<<"$s"
  read -r w50rps wp50 wp99 wbad <<<"${res[wapphook/$name]}"
  printf '%-20s %10s / %6s / %6s' "$name" "$w50rps" "$wp50" "$wp99"
  [ "$wbad" != 0 ] && printf ' (errors: %s)' "$wbad"
  if [ "$peers" = --peers ] && [ -n "${res[nginx/$name]:-}" ]; then
    read -r nrps np50 np99 nbad <<<"${res[nginx/$name]}"
    peer=nginx+lua; [ "$name" = get-challenge-c16 ] && peer="nginx return 200"
    printf '   %-16s %7s / %5s / %6s %7.2fx' "$peer" "$nrps" "$np50" "$np99" \
      "$(awk -v a="$w50rps" -v b="$nrps" 'BEGIN {print (b > 0 ? a / b : 0)}')"
  fi
  printf '\n'
  if [ "$peers" = --peers ] && [ -n "${res[webhook/$name]:-}" ]; then
    read -r krps kp50 kp99 kbad <<<"${res[webhook/$name]}"
    printf '%-20s %30s   %-16s %7s / %5s / %6s %7.2fx\n' "" "" "adnanh/webhook" "$krps" "$kp50" "$kp99" \
      "$(awk -v a="$w50rps" -v b="$krps" 'BEGIN {print (b > 0 ? a / b : 0)}')"
  fi
done
if [ -n "${res[wapphook/post-lua-history-c16]:-}" ] && [ -n "${res[wapphook/post-lua-c16]:-}" ]; then
  read -r hrps _ hp99 _ <<<"${res[wapphook/post-lua-history-c16]}"
  read -r lrps _ lp99 _ <<<"${res[wapphook/post-lua-c16]}"
  printf '\nconsole history on vs off (sync, Lua, 16 conns): %s vs %s req/s = %.2fx, p99 %s vs %s ms\n' \
    "$hrps" "$lrps" "$(awk -v a="$hrps" -v b="$lrps" 'BEGIN {print (b > 0 ? a / b : 0)}')" "$hp99" "$lp99"
fi
if [ -n "${res[wapphook/post-durable-c16]:-}" ] && [ -n "${res[wapphook/post-sink-c16]:-}" ]; then
  read -r drps _ dp99 _ <<<"${res[wapphook/post-durable-c16]}"
  read -r srps _ sp99 _ <<<"${res[wapphook/post-sink-c16]}"
  printf '\ndurable vs sync (file_sink, 16 conns): %s vs %s req/s = %.2fx, p99 %s vs %s ms\n' \
    "$drps" "$srps" "$(awk -v a="$drps" -v b="$srps" 'BEGIN {print (b > 0 ? a / b : 0)}')" "$dp99" "$sp99"
fi
if [ -n "${res[wapphook/post-durable-pg-c16]:-}" ] && [ -n "${res[wapphook/post-durable-c16]:-}" ]; then
  read -r drps _ dp99 _ <<<"${res[wapphook/post-durable-c16]}"
  printf '\ndurable spools (file_sink, 16 connections, one run):\n'
  printf '  %-34s %7s req/s  p99 %6s ms\n' "SQLite, one instance" "$drps" "$dp99"
  for k in post-durable-pg-c16 post-durable-pg2-c16; do
    [ -n "${res[wapphook/$k]:-}" ] || continue
    read -r prps _ pp99 _ <<<"${res[wapphook/$k]}"
    label="PostgreSQL, one instance"; [ $k = post-durable-pg2-c16 ] && label="PostgreSQL, two instances (8+8)"
    printf '  %-34s %7s req/s  p99 %6s ms  %.2fx SQLite\n' "$label" "$prps" "$pp99" \
      "$(awk -v a="$prps" -v b="$drps" 'BEGIN {print (b > 0 ? a / b : 0)}')"
  done
  if [ -n "${res[wapphook/post-sink-c16]:-}" ]; then
    read -r srps _ sp99 _ <<<"${res[wapphook/post-sink-c16]}"
    printf '  %-34s %7s req/s  p99 %6s ms\n' "sync mode (no spool)" "$srps" "$sp99"
  fi
fi
if [ -n "${res[wapphook/post-durable-1m-c16]:-}" ] && [ -n "${res[wapphook/post-durable-c16]:-}" ]; then
  read -r drps _ dp99 _ <<<"${res[wapphook/post-durable-c16]}"
  read -r mrps _ mp99 _ <<<"${res[wapphook/post-durable-1m-c16]}"
  printf '\nspool holding 1,000,000 delivered events: %s req/s, p99 %s ms = %.2fx the empty spool (%s req/s, p99 %s ms)\n' \
    "$mrps" "$mp99" "$(awk -v a="$mrps" -v b="$drps" 'BEGIN {print (b > 0 ? a / b : 0)}')" "$drps" "$dp99"
  [ -x "$build/bench_spool_queries" ] &&
    "$build/bench_spool_queries" "$tmp/durable-1m.yaml" 123456 wamid.fill.000123455 rare_type
  console_latency

fi
if [ -n "${res[wapphook/post-durable-purge-c16]:-}" ]; then
  read -r prps _ pp99 _ <<<"${res[wapphook/post-durable-purge-c16]}"
  printf '\nretention removing a million expired events under the load: %s req/s, p99 %s ms' "$prps" "$pp99"
  [ -n "${res[wapphook/post-durable-c16]:-}" ] && read -r drps _ <<<"${res[wapphook/post-durable-c16]}" &&
    printf ' = %.2fx the empty spool' "$(awk -v a="$prps" -v b="$drps" 'BEGIN {print (b > 0 ? a / b : 0)}')"
  printf '\n'
  for r in "${!purged[@]}"; do
    read -r b a rate <<<"${purged[$r]}"
    printf '  round %s: events in the spool %s before, %s after: ~%s removed per second\n' "$r" "$b" "$a" "$rate"
  done
fi
# Destinations (docs/destinations.md): durable mode into Redis Streams, PostgreSQL and NATS
# JetStream, against durable file_sink, in one run. wrk's 200s count the intake only (durable
# mode answers once the event is on disk), so the figure is events delivered per second: from
# the first request until the spool owes nothing.
dest_enabled=1
if [ -n "${BENCH_ONLY:-}" ] && ! [[ dest =~ $BENCH_ONLY ]]; then dest_enabled=; fi
dests=${BENCH_DESTS:-file_sink redis postgres nats}
if [ -n "$dest_enabled" ]; then
  mkdir -p "$tmp/redis" "$tmp/nats"
  # Redis as commonly run for data kept: the append-only file, fsync every second
  redis-server --port 18379 --bind 127.0.0.1 --save '' --appendonly yes --appendfsync everysec \
    --dir "$tmp/redis" >"$tmp/redis.log" 2>&1 &
  pids+=($!); declare -A dpid=([redis]=$!)
  nats-server -a 127.0.0.1 -p 18422 -js -sd "$tmp/nats" >"$tmp/nats.log" 2>&1 &
  pids+=($!); dpid[nats]=$!
  wait_port 18379; wait_port 18422
  [ -n "$pg_ctl_" ] || pg_up
  # the stream that takes wappcloud.>, through JetStream's API (no nats CLI in Debian 12)
  python3 "$here/../tests/support/nats_js.py" 18422 create WAPPCLOUD 'wappcloud.>'
  # BENCH_PLUGIN_DIR: the destination plugins from another build (an A/B of a plugin change)
  dest_plugin() { echo "${BENCH_PLUGIN_DIR:+$BENCH_PLUGIN_DIR/}$1${BENCH_PLUGIN_DIR:+.so}"; }
  dest_manifest() { # name, handler lines
    cat > "$tmp/dest-$1.yaml" <<Y
server:
  listen: [http://127.0.0.1:18080]
secrets: [{env: WAPPCLOUD_SECRET}]
hooks:
  incoming_message:
$2
delivery:
  mode: durable
  spool: $tmp/spool-dest-$1.db
  workers: ${BENCH_DEST_WORKERS:-4}
Y
  }
  dest_manifest file_sink "    - plugin: file_sink
      config: {path: $tmp/events-dest.ndjson}"
  dest_manifest redis "    - plugin: $(dest_plugin redis_stream)
      config: {url: \"redis://127.0.0.1:18379/0\", stream: \"wappcloud:{type}\", maxlen: 1000000}"
  dest_manifest postgres "    - plugin: $(dest_plugin postgres)
      config: {conninfo: \"$(pg_uri)\", table: wappcloud_events, create: true}"
  dest_manifest nats "    - plugin: $(dest_plugin nats)
      config: {url: \"nats://127.0.0.1:18422\", subject: \"wappcloud.{type}\", jetstream: true}"
  declare -A dres dcpu
  cpu_ms() { ps -o times= -p "$1" | awk '{ printf "%d", $1 * 1000 }'; } # a process's CPU time
  # (PostgreSQL's backends come and go: no figure for it)
  dest_cpu_ms() { case $1 in redis|nats) cpu_ms "${dpid[$1]}" ;; *) echo 0 ;; esac; }
  delivered() { "$build/wapphook" spool stats -c "$tmp/dest-$1.yaml" | awk '/^deliveries:/ {print $3, $5}'; }
  for round in $(seq "$rounds"); do
    for d in $dests; do
      rm -f "$tmp/spool-dest-$d.db"*
      start_wapphook "dest-$d"
      c0=$(dest_cpu_ms "$d")
      t0=$(date +%s.%N)
      load http://127.0.0.1:18080/webhook 16 post >/dev/null
      while read -r pending done_ < <(delivered "$d"); [ "$pending" != 0 ]; do sleep 0.05; done
      t1=$(date +%s.%N)
      wcpu=$(cpu_ms "$server_pid"); c1=$(dest_cpu_ms "$d")
      stop_server
      rate=$(awk -v n="$done_" -v a="$t0" -v b="$t1" 'BEGIN {printf "%d", n / (b - a)}')
      if [ "$rate" -gt "${dres[$d]:-0}" ]; then
        dres[$d]=$rate
        # CPU per event delivered: wapphook's (intake, spool and delivery), the destination's
        dcpu[$d]=$(awk -v w="$wcpu" -v a="$c0" -v b="$c1" -v n="$done_" \
          'BEGIN {printf "%d us wapphook", w * 1000 / n; if (b > a) printf ", %d us destination", (b - a) * 1000 / n}')
      fi
    done
  done
  printf '\ndestinations, durable mode (16 connections for %ss, then until the spool owes nothing):\n' "$secs"
  for d in $dests; do
    printf '  %-10s %7s events/s delivered  %.2fx file_sink  (CPU an event: %s)\n' "$d" "${dres[$d]}" \
      "$(awk -v a="${dres[$d]}" -v b="${dres[file_sink]}" 'BEGIN {print (b > 0 ? a / b : 0)}')" "${dcpu[$d]}"
  done
fi
[ -n "${rss[wapphook/post-lua-c16]:-}" ] &&
  printf '\nwapphook RSS after a %ss run at 16 connections (default threads): %s KiB\n' "$secs" "${rss[wapphook/post-lua-c16]}"
if [ -x "$build/bench_event_cost" ]; then "$build/bench_event_cost" "$here/event.json"; fi
if [ -x "$build/bench_patterns" ]; then "$build/bench_patterns"; fi
if [ -x "$build/bench_shared" ]; then "$build/bench_shared"; fi
