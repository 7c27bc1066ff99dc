/*
 * The base: leaf modules that depend on nothing of wapphook's but each other, used by every
 * other folder through this one header (docs/development.md, "Layout").
 */
#ifndef WH_BASE_H
#define WH_BASE_H

#include "activity.h"       /* the console's live notices and counts */
#include "address.h"        /* client addresses, CIDR ranges, X-Forwarded-For */
#include "alloc.h"          /* the out-of-memory policy: wh_x* for bookkeeping */
#include "buf.h"            /* the growable byte buffer */
#include "clock.h"          /* monotonic deadlines, wall time */
#include "event.h"          /* an event, a header, a handler call's outcome */
#include "exit_codes.h"     /* wapphook's exit statuses */
#include "exec.h"           /* running a command under a deadline */
#include "http_policy.h"    /* which addresses outbound HTTP may reach */
#include "json_escape.h"    /* JSON string escaping, UTF-8 checks */
#include "json_text.h"      /* checking and reading JSON text without a tree */
#include "log.h"            /* JSON log lines */
#include "metrics.h"        /* counters and histograms, Prometheus text */
#include "shared_dict.h"    /* lua.shared dictionaries */
#include "shed.h"           /* refusals for load and hostile clients */
#include "signature.h"      /* X-Wappcloud-Signature checks */
#include "systemd_notify.h" /* READY=1 and friends, without blocking */
#include "tls_compat.h"     /* Debian's libcivetweb and TLS */
#include "utf8.h"           /* the one UTF-8 decoder */

#endif
