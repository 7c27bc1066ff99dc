#!/bin/sh
# systemd-analyze verify on the configured unit and the socket unit beside it, pointed at
# the built binary (the unit names the install path, which need not exist here).
set -eu
analyze=$1 unit=$2 bin=$3 socket=$4
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
installed=$(sed -n 's|^ExecStart=\([^ ]*\) .*|\1|p' "$unit")
sed "s|$installed|$bin|g" "$unit" > "$tmp/wapphook.service"
grep -q '^Type=notify' "$tmp/wapphook.service"
grep -q '^ExecReload=/bin/kill -HUP \$MAINPID' "$tmp/wapphook.service"
cp "$socket" "$tmp/wapphook.socket"
grep -q '^ListenStream=127.0.0.1:8080$' "$tmp/wapphook.socket" # hooks.yaml.example's address
out=$(SYSTEMD_LOG_LEVEL=warning "$analyze" verify --man=no "$tmp/wapphook.service" \
  "$tmp/wapphook.socket" 2>&1) || { echo "$out"; exit 1; }
# verify prints problems without failing for some of them: any line about our units fails
if echo "$out" | grep -i "wapphook\.s"; then exit 1; fi
echo "2 passed, 0 failed"
