#!/usr/bin/env python3
"""Fills a SQLite spool (schema 2, made by `wapphook serve` first) with N delivered events, as
the server would have stored them: bench/event.json with a message id of its own per event
(and its dedupe key, as with `dedupe: {key: data.message_id}`), the request's headers, one
handler (plugin:file_sink), received over the last DAYS days ending AGE_S seconds ago, with
its attempt as the console keeps it (a line logged). One event in 1,000 is a dead letter
(eight failed attempts), one in 100 a status_update and one in 10,000 a rare_type.

usage: spool_fill.py SPOOL N [DAYS] [AGE_S]
"""
import json
import os
import sqlite3
import sys
import time

spool, n = sys.argv[1], int(sys.argv[2])
days = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
age = float(sys.argv[4]) if len(sys.argv) > 4 else 60.0
here = os.path.dirname(os.path.abspath(__file__))
template = json.load(open(os.path.join(here, "event.json")))
headers = json.dumps({"host": "127.0.0.1:18080", "content-type": "application/json",
                      "x-wappcloud-signature": "sha256=" + "0" * 64,
                      "x-wappcloud-event": "incoming_message", "content-length": "677"},
                     separators=(",", ":"))

db = sqlite3.connect(spool, isolation_level=None)
db.execute("PRAGMA journal_mode=DELETE")  # the server sets WAL again when it opens it
db.execute("PRAGMA synchronous=OFF")
db.execute("BEGIN")
sink = json.dumps(["plugin:file_sink"], separators=(",", ":"))
row = db.execute("SELECT id FROM handler_sets WHERE names = ?", (sink,)).fetchone()
hset = row[0] if row else db.execute("INSERT INTO handler_sets(names) VALUES(?)", (sink,)).lastrowid
first = (db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]) + 1
now = time.time()
start = now - age - days * 86400


def events():
    for i in range(n):
        ev = template
        ev["data"]["message_id"] = "wamid.fill.%09d" % i
        kind = ("rare_type" if i % 10000 == 5000 else
                "status_update" if i % 100 == 50 else "incoming_message")
        yield (first + i, kind, json.dumps(ev, separators=(",", ":")).encode(), headers,
               start + (now - age - start) * i / n, hset)


db.executemany("INSERT INTO events(id, type, body, headers, received_at, hset)"
               " VALUES(?,?,?,?,?,?)", events())
db.executemany("INSERT INTO dedupe(key, expires_at, event_id) VALUES(?,?,?)",
               (("incoming_message\nwamid.fill.%09d" % i, now + 86400, first + i)
                for i in range(n)))
db.executemany("INSERT INTO deliveries(event_id, handler, state, attempts, next_at, last_error)"
               " VALUES(?, 'plugin:file_sink', 2, 8, 0, 'upstream said 500')",
               ((first + i,) for i in range(0, n, 1000)))


def attempts():
    for i in range(n):
        at = start + (now - age - start) * i / n + 0.001
        if i % 1000 == 0:
            for k in range(8):
                yield (first + i, at + k, "plugin:file_sink", 3 if k == 7 else 1, 0.4,
                       "upstream said 500", "warn: POST https://api.example answered 500")
        else:
            yield (first + i, at, "plugin:file_sink", 0, 0.3, None,
                   "info: wrote wamid.fill.%09d" % i)


db.executemany("INSERT INTO attempts(event_id, at, handler, outcome, duration_ms, error, log)"
               " VALUES(?,?,?,?,?,?,?)", attempts())
db.execute("COMMIT")
db.close()
