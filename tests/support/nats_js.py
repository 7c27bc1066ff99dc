#!/usr/bin/env python3
"""JetStream's API over a plain socket (Debian 12 has no nats CLI), for the shell tests and
the benchmark:
    nats_js.py PORT create STREAM SUBJECT   makes a file-stored stream (an existing one: ok)
    nats_js.py PORT count STREAM            prints how many messages it holds
Retries for up to 10 s while JetStream is not ready yet; exits 1 on an error."""
import json
import re
import socket
import sys
import time


def ask(port, subject, payload):
    """One request on the JetStream API; its JSON answer."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.recv(4096)  # INFO
    body = json.dumps(payload).encode()
    s.sendall(b'CONNECT {"verbose":false}\r\nSUB _INBOX.t 1\r\n'
              b"PUB %s _INBOX.t %d\r\n%s\r\n" % (subject.encode(), len(body), body))
    got = b""
    while True:
        m = re.search(rb"MSG _INBOX\.t 1 (\d+)\r\n", got)
        if m and len(got) >= m.end() + int(m.group(1)):
            s.close()
            return json.loads(got[m.end():m.end() + int(m.group(1))])
        chunk = s.recv(65536)
        if not chunk:
            raise OSError("connection closed")
        got += chunk


def main():
    port, op, stream = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    deadline = time.monotonic() + 10
    while True:
        try:
            if op == "create":
                r = ask(port, "$JS.API.STREAM.CREATE." + stream,
                        {"name": stream, "subjects": [sys.argv[4]], "storage": "file"})
                if "error" not in r or "already in use" in r["error"].get("description", ""):
                    return 0
            else:
                r = ask(port, "$JS.API.STREAM.INFO." + stream, {})
                if "error" not in r:
                    print(r["state"]["messages"])
                    return 0
            err = r["error"]
        except OSError as e:
            err = str(e)
        if time.monotonic() > deadline:
            print("nats_js: %s" % err, file=sys.stderr)
            return 1
        time.sleep(0.1)  # JetStream still starting: ask again


if __name__ == "__main__":
    sys.exit(main())
