#!/bin/sh
# The Debian package of `make deb`: what it holds and declares, then a real `dpkg -i` into a
# scratch root, `wapphook check` of the installed /etc/wapphook/hooks.yaml, the installed
# program serving a signed event with the installed scripts, and `dpkg --purge`.
# The scratch root is an overlay over this machine's own root in a private mount namespace:
# dpkg sees the machine's real package database (so the declared dependencies are checked
# against what is installed), and every write goes to a tmpfs that vanishes with the test.
set -eu
debdir=$1
deb=$(ls "$debdir"/wapphook_*_amd64.deb 2>/dev/null | head -1)
[ -n "$deb" ] || { echo "no package in $debdir: run make deb"; exit 1; }
fail() { echo "FAIL: $*"; exit 1; }

# --- contents and control fields -------------------------------------------------------------
files=$(dpkg-deb -c "$deb" | awk '{print $6}')
for f in ./usr/bin/wapphook ./etc/wapphook/hooks.yaml ./usr/include/wapphook/plugin.h \
         ./usr/lib/x86_64-linux-gnu/pkgconfig/wapphook-plugin.pc \
         ./usr/lib/x86_64-linux-gnu/wapphook/libssl.so \
         ./usr/lib/x86_64-linux-gnu/wapphook/plugins/file_sink.so \
         ./usr/lib/x86_64-linux-gnu/wapphook/plugins/redis_stream.so \
         ./usr/lib/x86_64-linux-gnu/wapphook/plugins/postgres.so \
         ./usr/lib/x86_64-linux-gnu/wapphook/plugins/nats.so \
         ./usr/lib/systemd/system/wapphook.service ./usr/lib/systemd/system/wapphook.socket \
         ./usr/share/wapphook/scripts/incoming_message.lua \
         ./usr/share/wapphook/scripts/status_update.lua \
         ./usr/share/wapphook/scripts/samples/incoming_message.json \
         ./usr/share/wapphook/luals/wapphook.lua ./usr/share/doc/wapphook/README.md \
         ./usr/share/doc/wapphook/docs/handlers.md ./usr/share/man/man1/wapphook.1.gz; do
    echo "$files" | grep -qx "$f" || fail "the package lacks $f"
done
depends=$(dpkg-deb -f "$deb" Depends)
for p in libc6 libcivetweb1 libssl3 libjansson4 liblua5.4-0 libyaml-0-2 libsqlite3-0 \
         libpq5 libcurl4 libsystemd0 libhiredis0.14 libnats3.4; do
    echo "$depends" | grep -q "\\b$p\\b" || fail "Depends lacks $p: $depends"
done
version=$(dpkg-deb -f "$deb" Version)
dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/share/doc/wapphook/changelog.gz | gzip -dc | head -1 |
    grep -q "^wapphook ($version) " || fail "contrib/debian/changelog does not start with $version"
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles | grep -qx /etc/wapphook/hooks.yaml ||
    fail "/etc/wapphook/hooks.yaml is not a conffile"
echo "contents: $(echo "$files" | grep -c '[^/]$') files, $(stat -c %s "$deb") bytes; Depends: $depends"

# --- install into the scratch root, check, serve, purge --------------------------------------
[ "$(id -u)" = 0 ] || fail "needs root (a mount namespace and chroot) for the scratch root"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT  # (replaced below once the servers run)
cp "$deb" "$scratch/wapphook.deb"
# the C plugin of docs/plugins.md, to build against the installed header
awk '/^```c$/ {on = 1; next} /^```$/ {on = 0} on' "$(dirname "$0")/../docs/plugins.md" > "$scratch/hello.c"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
admin=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

# the destinations' servers, on this machine's loopback (the scratch root shares its network):
# redis-server, nats-server -js with a stream, a PostgreSQL cluster on TCP (trust)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
rport=$(free_port); nport=$(free_port); pgport=$(free_port)
chmod 755 "$scratch"; mkdir -p "$scratch/redis" "$scratch/js" "$scratch/pg"
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$scratch/redis" \
    > "$scratch/redis.log" 2>&1 &
redis_pid=$!
nats-server -a 127.0.0.1 -p "$nport" -js -sd "$scratch/js" > "$scratch/nats.log" 2>&1 &
nats_pid=$!
pgbin=$(ls -d /usr/lib/postgresql/*/bin | tail -1)
chown postgres: "$scratch/pg"
runuser -u postgres -- "$pgbin/initdb" -D "$scratch/pg/data" -A trust -U postgres --no-sync \
    > "$scratch/pg/initdb.log" 2>&1 || fail "initdb: $(cat "$scratch/pg/initdb.log")"
runuser -u postgres -- "$pgbin/pg_ctl" start -w -D "$scratch/pg/data" -l "$scratch/pg/server.log" \
    -o "-k $scratch/pg -p $pgport -c listen_addresses=127.0.0.1" > /dev/null ||
    fail "PostgreSQL did not start"
trap 'kill $redis_pid $nats_pid 2>/dev/null; runuser -u postgres -- "$pgbin/pg_ctl" stop -m fast -w -D "$scratch/pg/data" >/dev/null 2>&1; rm -rf "$scratch"' EXIT
python3 "$(dirname "$0")/support/nats_js.py" "$nport" create WAPPCLOUD 'wappcloud.>' ||
    fail "no JetStream stream"
for i in $(seq 200); do redis-cli -p "$rport" ping 2>/dev/null | grep -q PONG && break; sleep 0.05; done

unshare --mount --propagation private sh -eu -c '
s=$1; port=$2; admin=$3; rport=$4; nport=$5; pgport=$6
mkdir "$s/t" && mount -t tmpfs tmpfs "$s/t"
mkdir "$s/t/upper" "$s/t/work" "$s/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$s/t/upper,workdir=$s/t/work" "$s/root"
for d in dev proc sys; do mount --rbind "/$d" "$s/root/$d"; done
mount -t tmpfs tmpfs "$s/root/tmp"
cp "$s/wapphook.deb" "$s/root/tmp/"
r="$s/root"
in_root() { chroot "$r" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin WAPPCLOUD_SECRET=deb-test-secret "$@"; }

in_root dpkg -i /tmp/wapphook.deb >/dev/null
in_root dpkg -s wapphook | grep -q "^Status: install ok installed" || { echo "FAIL: not installed"; exit 1; }
out=$(in_root wapphook check -c /etc/wapphook/hooks.yaml 2>&1) || { echo "FAIL: check: $out"; exit 1; }
echo "$out" | grep -q "incoming_message: lua:/usr/share/wapphook/scripts/incoming_message.lua" ||
    { echo "FAIL: check did not load the installed scripts: $out"; exit 1; }
echo "installed; wapphook check: ok"

# the installed manifest, on free ports, served by the installed program
sed -e "s|127.0.0.1:8080|127.0.0.1:$port|" -e "s|127.0.0.1:9090|127.0.0.1:$admin|" \
    "$r/etc/wapphook/hooks.yaml" > "$r/tmp/hooks.yaml"
chroot "$r" env -i PATH=/usr/bin:/bin WAPPCLOUD_SECRET=deb-test-secret \
    wapphook serve -c /tmp/hooks.yaml --log-format text 2> "$r/tmp/serve.log" &
pid=$!
up=0
for i in $(seq 200); do   # readiness: the admin listener answers once serving
    if curl -sf "http://127.0.0.1:$admin/healthz" >/dev/null 2>&1; then up=1; break; fi
    kill -0 $pid 2>/dev/null || break
    sleep 0.05
done
[ $up = 1 ] || { echo "FAIL: the installed server did not start"; cat "$r/tmp/serve.log"; exit 1; }
sample=$r/usr/share/wapphook/scripts/samples/incoming_message.json
sig=$(in_root wapphook sign /usr/share/wapphook/scripts/samples/incoming_message.json)
reply=$(curl -s -w " %{http_code}" "http://127.0.0.1:$port/webhook" \
    -H "X-Wappcloud-Event: incoming_message" -H "X-Wappcloud-Signature: $sig" \
    -H "Content-Type: application/json" --data-binary "@$sample")
kill -TERM $pid; wait $pid || { echo "FAIL: serve exited $?"; cat "$r/tmp/serve.log"; exit 1; }
[ "$reply" = "{\"status\":\"ok\"} 200" ] || { echo "FAIL: POST answered $reply"; cat "$r/tmp/serve.log"; exit 1; }
grep -q "message wamid.sample-1 from +15550100" "$r/tmp/serve.log" ||
    { echo "FAIL: the installed script did not run"; cat "$r/tmp/serve.log"; exit 1; }
echo "served: POST of the sample answered $reply, the installed script logged it"

# a plugin of the user, built against the installed header and .pc: the one in the docs
cp "$s/hello.c" "$r/tmp/hello.c"
in_root sh -c "cc -shared -fPIC -Wall -Werror -Wno-unused-parameter \$(pkg-config --cflags wapphook-plugin) \
    -o /tmp/hello.so /tmp/hello.c" || { echo "FAIL: the docs plugin does not build against the package"; exit 1; }
printf "secrets: [{value: s}]\nhooks:\n  t:\n    - plugin: /tmp/hello.so\n" > "$r/tmp/plugin.yaml"
out=$(in_root wapphook check -c /tmp/plugin.yaml 2>&1) && echo "$out" | grep -q "hello plugin ready" ||
    { echo "FAIL: the installed wapphook did not load it: $out"; exit 1; }
echo "a plugin built with pkg-config --cflags wapphook-plugin: loaded"

# the shipped destinations, named bare, from the installed plugin folder: one event into each
cat > "$r/tmp/dest.yaml" <<Y
server: {listen: [http://127.0.0.1:$port]}
secrets: [{env: WAPPCLOUD_SECRET}]
hooks:
  "*":
    - plugin: redis_stream
      config: {url: "redis://127.0.0.1:$rport/0", stream: "wappcloud:{type}"}
    - plugin: postgres
      config: {conninfo: "host=127.0.0.1 port=$pgport user=postgres dbname=postgres", table: wappcloud_events, create: true}
    - plugin: nats
      config: {url: "nats://127.0.0.1:$nport", subject: "wappcloud.{type}", jetstream: true}
Y
chroot "$r" env -i PATH=/usr/bin:/bin WAPPCLOUD_SECRET=deb-test-secret \
    wapphook serve -c /tmp/dest.yaml --log-format text 2> "$r/tmp/dest.log" &
pid=$!
up=0
for i in $(seq 200); do
    if curl -sf "http://127.0.0.1:$port/webhook?challenge=x" >/dev/null 2>&1; then up=1; break; fi
    kill -0 $pid 2>/dev/null || break
    sleep 0.05
done
[ $up = 1 ] || { echo "FAIL: the installed server did not start with the destinations"; cat "$r/tmp/dest.log"; exit 1; }
reply=$(curl -s -w " %{http_code}" "http://127.0.0.1:$port/webhook" \
    -H "X-Wappcloud-Event: incoming_message" -H "X-Wappcloud-Signature: $sig" \
    -H "Content-Type: application/json" --data-binary "@$sample")
kill -TERM $pid; wait $pid || { echo "FAIL: serve exited $?"; cat "$r/tmp/dest.log"; exit 1; }
[ "$reply" = "{\"status\":\"ok\"} 200" ] || { echo "FAIL: POST to the destinations answered $reply"; cat "$r/tmp/dest.log"; exit 1; }
echo "served into the destinations: $reply"

in_root dpkg --purge wapphook >/dev/null
[ ! -e "$r/usr/bin/wapphook" ] && [ ! -e "$r/etc/wapphook/hooks.yaml" ] ||
    { echo "FAIL: purge left files"; exit 1; }
echo "purged"
' sh "$scratch" "$port" "$admin" "$rport" "$nport" "$pgport"
[ "$(redis-cli -p "$rport" XLEN wappcloud:incoming_message)" = 1 ] || fail "nothing in the Redis stream"
[ "$(runuser -u postgres -- psql -h 127.0.0.1 -p "$pgport" -U postgres -Atc \
      "SELECT count(*) FROM wappcloud_events WHERE payload->'data'->>'message_id' = 'wamid.sample-1'")" = 1 ] ||
    fail "not in the PostgreSQL table"
[ "$(python3 "$(dirname "$0")/support/nats_js.py" "$nport" count WAPPCLOUD)" = 1 ] ||
    fail "not in the JetStream stream"
echo "the event is in the Redis stream, the PostgreSQL table and the JetStream stream, once each"
echo "1 passed, 0 failed"
