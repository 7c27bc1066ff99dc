#!/bin/sh
# Installs wapphook into a temporary prefix, builds an out-of-tree plugin against the
# installed header with pkg-config, and has the installed wapphook load it.
set -eu
build=$1
cc=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
export PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig:$tmp/prefix/lib/x86_64-linux-gnu/pkgconfig"
cflags=$(pkg-config --cflags wapphook-plugin)
cat > "$tmp/mine.c" <<'C'
#include <wapphook/plugin.h>
static int create(const struct wapphook_host *h, const char *c, void **s, char *e, size_t n)
{ (void)c; (void)e; (void)n; *s = 0; h->log(h, WAPPHOOK_LOG_INFO, "out-of-tree plugin created"); return WAPPHOOK_OK; }
static int handle(void *s, const struct wapphook_event *ev, char *e, size_t n)
{ (void)s; (void)ev; (void)e; (void)n; return WAPPHOOK_OK; }
static const struct wapphook_plugin p = { WAPPHOOK_PLUGIN_HEADER, .name = "mine", .version = "1",
    .create = create, .handle = handle, .destroy = 0 };
const struct wapphook_plugin *wapphook_plugin_entry(void) { return &p; }
C
"$cc" -shared -fPIC -Wall -Werror $cflags -o "$tmp/mine.so" "$tmp/mine.c"
cat > "$tmp/hooks.yaml" <<Y
secrets: [{value: s}]
hooks:
  t:
    - plugin: mine.so
    - plugin: $tmp/prefix/lib/wapphook/plugins/file_sink.so
      config: {path: $tmp/events.ndjson}
Y
ls "$tmp/prefix/share/wapphook/scripts/incoming_message.lua" "$tmp/prefix/include/wapphook/plugin.h" \
   "$tmp/prefix/lib/systemd/system/wapphook.service" "$tmp/prefix/share/wapphook/luals/wapphook.lua" "$tmp/prefix/share/wapphook/hooks.yaml.example" >/dev/null
out=$("$tmp/prefix/bin/wapphook" check -c "$tmp/hooks.yaml" 2>&1) || { echo "$out"; exit 1; }
echo "$out"
echo "$out" | grep -q "out-of-tree plugin created"
echo "$out" | grep -q "hook    t: plugin:mine plugin:file_sink"
echo "1 passed, 0 failed"
