#!/usr/bin/python3
"""The console in a real browser (Debian's chromium and chromedriver, headless, driven by
python3-selenium): sign in, see a posted event's row appear without a reload, open it, see its
payload and the line its handler logged, replay it and see the new attempt; a payload holding
markup is shown as text and runs nothing; no Content-Security-Policy violation in the console.

Usage: browser_test.py WAPPHOOK_BIN OUT_DIR [sync|durable]
Screenshots go to OUT_DIR (console-list.png, console-detail.png, console-xss.png).
"""
import hashlib
import hmac
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

SECRET = "browser-test-secret"
TOKEN = "browser-test-token-" + os.urandom(6).hex()
FAILED = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        FAILED.append(what)


def start_server(binary, mode, work):
    os.makedirs(os.path.join(work, "scripts"))
    with open(os.path.join(work, "scripts", "h.lua"), "w") as f:
        f.write('function handle(event)\n'
                '  wapphook.log("info", "handled " .. tostring(event.payload.text))\n'
                '  if event.payload.fail then error("asked to fail") end\n'
                'end\n')
    delivery = ("delivery: {mode: durable, spool: %s/spool.db}\n" % work) if mode == "durable" else ""
    with open(os.path.join(work, "hooks.yaml"), "w") as f:
        f.write("server:\n  listen: [http://127.0.0.1:0]\n  admin: 127.0.0.1:0\n"
                "secrets: [{value: %s}]\nlua: {path: scripts/?.lua}\n%s"
                "hooks:\n  incoming_message:\n    - lua: scripts/h.lua\n" % (SECRET, delivery))
    env = dict(os.environ, WAPPHOOK_ADMIN_TOKEN=TOKEN)
    log = open(os.path.join(work, "serve.log"), "w+")
    proc = subprocess.Popen([binary, "serve", "-c", os.path.join(work, "hooks.yaml")],
                            stdout=log, stderr=log, env=env, cwd=work)
    urls = {}
    deadline = time.time() + 15
    while time.time() < deadline and len(urls) < 2:
        log.seek(0)
        for line in log.read().splitlines():
            m = re.search(r'"msg":"(admin listening|listening)","url":"([^"]+)"', line)
            if m:
                urls[m.group(1)] = m.group(2)
        time.sleep(0.05)
    if len(urls) < 2:
        log.seek(0)
        sys.exit("wapphook did not start:\n" + log.read())
    return proc, urls["listening"], urls["admin listening"]


def post(url, body):
    raw = json.dumps(body).encode()
    sig = hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
    req = urllib.request.Request(url, data=raw, method="POST", headers={
        "X-Wappcloud-Event": "incoming_message", "X-Wappcloud-Signature": "sha256=" + sig,
        "Content-Type": "application/json"})
    try:
        return urllib.request.urlopen(req, timeout=10).status
    except urllib.error.HTTPError as e:
        return e.code


def newest_id(admin):
    req = urllib.request.Request(admin + "/api/events?limit=1",
                                 headers={"Authorization": "Bearer " + TOKEN})
    return json.load(urllib.request.urlopen(req, timeout=10))["events"][0]["id"]


def browser():
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):
        opts.add_argument(a)
    opts.binary_location = "/usr/bin/chromium"
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def row(driver, event_id):
    for tr in driver.find_elements(By.CSS_SELECTOR, "#events tbody tr"):
        if tr.get_attribute("data-id") == event_id:
            return tr
    return None


def main():
    binary, out = sys.argv[1], sys.argv[2]
    mode = sys.argv[3] if len(sys.argv) > 3 else "sync"
    os.makedirs(out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="wh-browser-")
    proc, hook, admin = start_server(binary, mode, work)
    driver = None
    try:
        driver = browser()
        wait = WebDriverWait(driver, 10)
        driver.get(admin + "/")
        # a sign-in first: the page holds no data without the token
        wait.until(EC.visibility_of_element_located((By.ID, "token")))
        check(not driver.find_element(By.ID, "app").is_displayed(), "events hidden before sign-in")
        driver.find_element(By.ID, "token").send_keys("not-the-token")
        driver.find_element(By.CSS_SELECTOR, "#signin-form button").click()
        wait.until(lambda d: d.find_element(By.ID, "signin-error").text != "")
        check(not driver.find_element(By.ID, "app").is_displayed(), "a wrong token is refused")
        driver.find_element(By.ID, "token").clear()
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.find_element(By.CSS_SELECTOR, "#signin-form button").click()
        wait.until(EC.visibility_of_element_located((By.ID, "app")))
        wait.until(lambda d: "on" in d.find_element(By.ID, "live").get_attribute("class"))
        check(True, "signed in, live stream connected")

        # a posted event's row appears without a reload
        marker = driver.execute_script("window.__marker = 42; return window.__marker;")
        check(post(hook, {"text": "hello from the browser test"}) == 200, "event posted")
        eid = newest_id(admin)
        wait.until(lambda d: row(d, eid) is not None)
        check(driver.execute_script("return window.__marker;") == marker,
              "the row of event %s appeared without a reload" % eid)
        if mode == "durable":  # its delivery runs after the answer: wait for the outcome
            wait.until(lambda d: row(d, eid).find_elements(By.TAG_NAME, "td")[3].text == "ok")
        for i in range(3):
            post(hook, {"text": "filler %d" % i, "fail": i == 1})
        time.sleep(0.5)
        driver.save_screenshot(os.path.join(out, "console-list.png"))

        # open it: payload and the handler's log line
        row(driver, eid).click()
        wait.until(lambda d: d.find_element(By.ID, "d-id").text == eid)
        payload = driver.find_element(By.ID, "d-payload").text
        check("hello from the browser test" in payload, "the payload is shown")
        check(json.loads(payload) == {"text": "hello from the browser test"},
              "the payload is pretty-printed JSON")
        wait.until(lambda d: "handled hello from the browser test" in
                   d.find_element(By.ID, "d-attempts").text)
        check(True, "the handler's log line is shown with its attempt")
        check(driver.find_element(By.ID, "d-headers").text.count("redacted") == 1,
              "the signature header shows as redacted")

        # replay: a second attempt appears
        driver.find_element(By.ID, "d-replay").click()
        wait.until(lambda d: "attempt 2" in d.find_element(By.ID, "d-attempts").text)
        check(True, "replay made a second attempt, shown in the detail")
        driver.save_screenshot(os.path.join(out, "console-detail.png"))

        # markup in a payload is text
        evil = ('<img src=x onerror="window.__xss=1"></script><script>window.__xss=2</script>'
                '<b id="bold">b</b>')
        post(hook, {"text": evil})
        xid = newest_id(admin)
        wait.until(lambda d: row(d, xid) is not None)
        row(driver, xid).click()
        wait.until(lambda d: d.find_element(By.ID, "d-id").text == xid)
        wait.until(lambda d: "handled" in d.find_element(By.ID, "d-attempts").text)
        time.sleep(0.5)  # an onerror would have fired by now
        check(json.loads(driver.find_element(By.ID, "d-payload").text) == {"text": evil},
              "a payload's markup is displayed as text")
        check(evil in driver.find_element(By.ID, "d-attempts").text,
              "a log line's markup is displayed as text")
        check(driver.execute_script("return window.__xss === undefined;"), "no script ran")
        check(not driver.find_elements(By.CSS_SELECTOR, "#detail img, #events img, #bold"),
              "no element was made from the payload")
        driver.save_screenshot(os.path.join(out, "console-xss.png"))

        # a failure: its error and what the handler logged, for the docs' screenshot
        failed = [tr for tr in driver.find_elements(By.CSS_SELECTOR, "#events tbody tr")
                  if tr.find_elements(By.TAG_NAME, "td")[3].text in ("failed", "dead")]
        check(len(failed) == 1, "the failing event is listed as failed")
        if failed:
            fid = failed[0].get_attribute("data-id")
            failed[0].click()
            wait.until(lambda d: d.find_element(By.ID, "d-id").text == fid)
            wait.until(lambda d: "asked to fail" in d.find_element(By.ID, "d-attempts").text)
            check("handled filler 1" in driver.find_element(By.ID, "d-attempts").text,
                  "a failed attempt shows its log line and its error")
            driver.save_screenshot(os.path.join(out, "console-failure.png"))

        logs = driver.get_log("browser")
        csp = [e["message"] for e in logs if "Content Security Policy" in e["message"]]
        check(not csp, "no CSP violation in the browser's console %s" % csp)
        severe = [e["message"] for e in logs if e["level"] == "SEVERE"
                  and "favicon" not in e["message"] and "401" not in e["message"]]
        check(not severe, "no script error in the browser's console %s" % severe)
    finally:
        if driver:
            driver.quit()
        proc.terminate()
        # a clean stop (under ASan: nothing leaked, no error) is part of the result
        rc = proc.wait(timeout=20)
        check(rc == 0, "the server stopped cleanly (exit status %s)" % rc)
        if rc != 0:
            with open(os.path.join(work, "serve.log")) as log:
                lines = log.readlines()
                at = max([i for i, l in enumerate(lines) if "ERROR: AddressSanitizer" in l] or [0])
                print("".join(lines[at:at + 40] if at else lines[-15:]))
    if FAILED:
        print("%d check(s) failed" % len(FAILED))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
