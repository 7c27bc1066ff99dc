#!/usr/bin/python3
"""Validates a Prometheus text exposition with the reference client's parser, then checks
what a scraper relies on: every family has HELP and TYPE, histogram buckets are cumulative
and end at +Inf == _count, no series repeats, the metrics wapphook documents are present.
Prints one "name{labels} value" line per sample (sorted), for the caller to assert on.
Usage: check_metrics.py FILE"""
import sys
from prometheus_client.parser import text_string_to_metric_families

REQUIRED = ["wapphook_requests", "wapphook_signature_failures", "wapphook_events",
            "wapphook_handler_duration_seconds", "wapphook_reloads",
            "wapphook_config_generation", "wapphook_lua_timeouts",
            "wapphook_lua_memory_errors"]

text = open(sys.argv[1], encoding="utf-8").read()
helps = {l.split()[2] for l in text.splitlines() if l.startswith("# HELP ")}
types = {l.split()[2]: l.split()[3] for l in text.splitlines() if l.startswith("# TYPE ")}
families = list(text_string_to_metric_families(text))  # raises on malformed input
seen, out = set(), []
for f in families:
    if f.type == "unknown":
        sys.exit(f"family {f.name} has no TYPE")
    for s in f.samples:
        key = (s.name, tuple(sorted(s.labels.items())))
        if key in seen:
            sys.exit(f"series repeated: {key}")
        seen.add(key)
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        out.append(f"{s.name}{{{labels}}} {s.value:g}")
    if f.type == "histogram":
        by_handler = {}
        for s in f.samples:
            h = s.labels.get("handler")
            by_handler.setdefault(h, {"b": [], "count": None})
            if s.name.endswith("_bucket"):
                by_handler[h]["b"].append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_count"):
                by_handler[h]["count"] = s.value
        for h, d in by_handler.items():
            values = [v for _, v in sorted(d["b"])]
            if values != sorted(values):
                sys.exit(f"{f.name}{{handler={h}}}: buckets not cumulative")
            if sorted(d["b"])[-1][0] != float("inf") or values[-1] != d["count"]:
                sys.exit(f"{f.name}{{handler={h}}}: +Inf bucket != count")
for name in types:
    if name not in helps:
        sys.exit(f"{name}: TYPE without HELP")
names = {f.name for f in families}
for r in REQUIRED:
    if r not in names:
        sys.exit(f"missing metric family {r}")
print("\n".join(sorted(out)))
