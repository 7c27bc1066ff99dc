#!/bin/sh
# notify.sh: an exec: handler (what an adnanh/webhook hook command becomes). wapphook runs it
# without a shell around it, with the raw event body on stdin and only PATH, LANG and
# WAPPHOOK_EVENT_TYPE, WAPPHOOK_RECEIVED_AT, WAPPHOOK_EVENT_ID in its environment (never the
# server's secrets). Exit 0 is success; anything else fails the handler, with the first line
# of stderr in wapphook's log. Here: one line per event appended to the file named by $1.
set -eu
out=${1:?usage: notify.sh FILE}
bytes=$(wc -c)
printf '%s %s %s bytes=%s\n' "$WAPPHOOK_RECEIVED_AT" "$WAPPHOOK_EVENT_ID" "$WAPPHOOK_EVENT_TYPE" \
  "$bytes" >> "$out"
