#!/usr/bin/env bash
# The hostile-client measurement of docs/security.md, "Hostile clients and overload": slowhttptest holds ATTACK_CONNS
# connections from 127.0.0.1 (slow headers, then slow bodies, ATTACK_SECONDS each, run
# again whenever the server has cut all of them) against wapphook with its defaults, while
# a signed POST from 127.0.0.2 probes every 0.3 s. Prints, per attack: probes answered 200
# within 1 s out of all probes, the slowest, the server's peak RSS, what it refused.
# Usage: bench/attack.sh BUILD_DIR   (env: ATTACK_CONNS, default 1000; ATTACK_SECONDS, 30;
#        ATTACK_MANIFEST, a manifest to use instead of the defaults)
set -euo pipefail
build=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
conns=${ATTACK_CONNS:-1000}
secs=${ATTACK_SECONDS:-30}
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

export WAPPCLOUD_SECRET=attack-secret-$RANDOM
cp -r "$here/scripts" "$tmp/scripts"
if [ -n "${ATTACK_MANIFEST:-}" ]; then
  cp "$ATTACK_MANIFEST" "$tmp/hooks.yaml"
else
  # the defaults: only what must be said (listeners, secret, a handler reading the payload)
  cat > "$tmp/hooks.yaml" <<Y
server:
  listen: [http://127.0.0.1:18080]
  admin: 127.0.0.1:18099
secrets: [{env: WAPPCLOUD_SECRET}]
hooks:
  incoming_message:
    - lua: scripts/bench.lua
Y
fi
sig=$("$build/wapphook" sign "$here/event.json")
"$build/wapphook" serve -c "$tmp/hooks.yaml" --log-level warn 2>"$tmp/server.log" &
server=$!; pids+=($server)
for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/18080) 2>/dev/null && break; sleep 0.05; done

metric() { curl -s http://127.0.0.1:18099/metrics | awk -v k="$1" '$1 == k {v = $2} END {print v + 0}'; }

for mode in -H -B; do
  name=$([ "$mode" = -H ] && echo "slow headers" || echo "slow bodies")
  cap0=$(metric 'wapphook_rejected_total{reason="client_cap"}')
  hdr0=$(metric 'wapphook_rejected_total{reason="header_timeout"}')
  end=$((SECONDS + secs))
  ( runs=0
    while [ $SECONDS -lt $end ]; do
      slowhttptest "$mode" -c "$conns" -r 300 -i 10 -x 24 -s 8192 -t POST -p 3 \
        -l $((end - SECONDS + 1)) -u http://127.0.0.1:18080/webhook >/dev/null 2>&1 || true
      runs=$((runs + 1))
    done
    echo "$runs" > "$tmp/runs" ) &
  attacker=$!; pids+=($attacker)
  ( peak=0
    while kill -0 "$attacker" 2>/dev/null; do
      r=$(awk '/VmRSS/ {print $2}' /proc/$server/status); [ "$r" -gt "$peak" ] && peak=$r
      echo "$peak" > "$tmp/rss"; sleep 0.2
    done ) &
  sampler=$!; pids+=($sampler)
  good=0; total=0; worst=0
  while [ $SECONDS -lt $end ]; do
    out=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' --interface 127.0.0.2 -m 5 \
      -H "X-Wappcloud-Signature: $sig" -H 'X-Wappcloud-Event: incoming_message' \
      -H 'Content-Type: application/json' --data-binary @"$here/event.json" \
      http://127.0.0.1:18080/webhook || true)
    code=${out%% *}; ms=$(awk -v t="${out##* }" 'BEGIN {printf "%d", t * 1000}')
    total=$((total + 1))
    [ "$code" = 200 ] && [ "$ms" -le 1000 ] && good=$((good + 1))
    [ "$ms" -gt "$worst" ] && worst=$ms
    sleep 0.3
  done
  wait "$attacker" "$sampler" 2>/dev/null || true
  printf '%s, %d connections from 127.0.0.1 for %d s (%s slowhttptest runs): %d of %d probe POSTs from 127.0.0.2 answered 200 within 1 s (%s%%), slowest %d ms; peak RSS %d MiB; refused at accept %d, headers cut %d\n' \
    "$name" "$conns" "$secs" "$(cat "$tmp/runs")" "$good" "$total" \
    "$(awk -v g=$good -v t=$total 'BEGIN {printf "%.1f", t ? 100 * g / t : 0}')" "$worst" \
    $(( $(cat "$tmp/rss") / 1024 )) \
    $(( $(metric 'wapphook_rejected_total{reason="client_cap"}') - cap0 )) \
    $(( $(metric 'wapphook_rejected_total{reason="header_timeout"}') - hdr0 ))
done
