"""Drives the hearth dashboard in headless Chromium (Selenium) and checks what it shows.

Run by crates/hearth/tests/cli/dashboard.rs, which starts a cluster and passes it in the
environment:
  HEARTH_DASHBOARD_URL  the page of a node that needs no token, e.g. http://127.0.0.1:52415/
  HEARTH_TOKEN_URL      the page of a node that requires tokens
  HEARTH_TOKEN          an admin token of that node
  HEARTH_MODEL_PATH     the served model's file, for the preview
  HEARTH_NODE_NAMES     the names of the nodes up at the start, comma-separated
  HEARTH_ARTIFACTS      where screenshots go
  HEARTH_CHROMIUM, HEARTH_CHROMEDRIVER  the browser and its driver

Faults are induced by the test, when this script asks for them: it prints "STEP hot" (a node
whose declared device is past its thermal threshold is to join) or "STEP kill" (that node is to
be killed with SIGKILL) and reads one line on stdin once it is done. Everything the page shows
is compared with what the API says at the same time. Prints "RESULT <json>" with the measured
figures and exits 0 when every check passed; a failed check raises.
"""

import base64
import json
import os
import sys
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

URL = os.environ["HEARTH_DASHBOARD_URL"].rstrip("/") + "/"
TOKEN_URL = os.environ["HEARTH_TOKEN_URL"].rstrip("/") + "/"
TOKEN = os.environ["HEARTH_TOKEN"]
MODEL_PATH = os.environ["HEARTH_MODEL_PATH"]
NAMES = sorted(os.environ["HEARTH_NODE_NAMES"].split(","))
ARTIFACTS = os.environ["HEARTH_ARTIFACTS"]

# The acceptance limits.
LOAD_MS = 1000
TRANSFER_BYTES = 2 * 1000 * 1000
ALERT_S = 5.0
PHONE = (375, 800)

result = {}


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def check(ok, what):
    if not ok:
        raise AssertionError(what)


def api(path):
    with urllib.request.urlopen(URL.rstrip("/") + path, timeout=5) as r:
        return json.load(r)


def wait(what, limit, fn, interval=0.05):
    """Polls fn until it returns something truthy; returns it with the seconds it took."""
    start = time.monotonic()
    last = None
    while True:
        try:
            last = fn()
        except Exception as e:  # the page may be re-rendering the element being read
            last = e
        if last and not isinstance(last, Exception):
            return last, time.monotonic() - start
        if time.monotonic() - start > limit:
            raise AssertionError(f"{what}: not within {limit} s (last: {last!r})")
        time.sleep(interval)


def step(name):
    print(f"STEP {name}", flush=True)
    line = sys.stdin.readline()
    check(line, f"no answer to STEP {name}")
    return line.split()


def js(script, *args):
    return driver.execute_script(script, *args)


def screenshot(name):
    """The whole page, not only the viewport."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png",
        "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
    })
    path = os.path.join(ARTIFACTS, f"dashboard-{name}.png")
    with open(path, "wb") as f:
        f.write(base64.b64decode(shot["data"]))
    result.setdefault("screenshots", []).append(path)
    log(f"screenshot {path}")


def live():
    return driver.find_element(By.ID, "conn").get_attribute("data-state") == "live"


def page_nodes():
    return sorted(js("return [...document.querySelectorAll('#topo .node')].map(g => g.dataset.name)"))


def pair(a, b):
    return " ".join(sorted([a, b]))


def topology_matches(cluster):
    """The page shows every member by name, a line for every pair, and every link the API has
    measured as measured, with its RTT as label; the coordinator is marked."""
    names = sorted(n["name"] for n in cluster["nodes"])
    if page_nodes() != names:
        return False
    lines = js("return [...document.querySelectorAll('#topo line.link')]"
               ".map(l => [l.dataset.link, l.dataset.health])")
    shown = dict(lines)
    ids = [n["id"] for n in cluster["nodes"]]
    pairs = {pair(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]}
    if set(shown) != pairs:
        return False
    measured = {pair(l["from"], l["to"]) for l in cluster["links"]} & pairs
    if any(shown[p] == "unmeasured" for p in measured):
        return False
    labels = dict(js("return [...document.querySelectorAll('#topo text.link-label')]"
                     ".map(t => [t.dataset.link, t.textContent])"))
    if any(" ms" not in labels.get(p, "") for p in measured):
        return False
    coordinator = js("const c = document.querySelector('#topo .node.coordinator');"
                     "return c && c.dataset.node")
    return coordinator == cluster["coordinator"] and (len(measured), len(pairs))


def ready_instance():
    for i in api("/api/instances")["instances"]:
        if i["status"]["state"] == "ready":
            return i
    return None


def alert_in_page(box, name, subject_has):
    items = js(f"return [...document.querySelectorAll('#{box} li.alert')]"
               ".map(li => [li.dataset.name, li.querySelector('.subject').textContent,"
               " li.querySelector('.msg').textContent])")
    return [i for i in items if i[0] == name and subject_has in i[1]]


def alert_shown(name, since):
    """Waits for the active alert `name` about the hot node; returns it and the seconds taken."""
    start = time.monotonic()
    found, _ = wait(f"{name} in the page", ALERT_S,
                    lambda: alert_in_page("alerts-active", name, "hot"))
    seconds = round(time.monotonic() - start, 2)
    log(f"{name} shown {seconds} s after {since}: {found[0][2]}")
    return found, seconds


def main():
    os.makedirs(ARTIFACTS, exist_ok=True)

    # --- a cold load: timing and weight
    driver.get(URL)
    wait("the page is live", 10, live)
    _, took = wait("the first picture", 10, lambda: page_nodes() == NAMES)
    nav = js("return performance.getEntriesByType('navigation')[0].toJSON()")
    resources = js("return performance.getEntriesByType('resource').map(r => r.toJSON())")
    load_ms = nav["loadEventEnd"] - nav["startTime"]
    transfer = nav["transferSize"] + sum(max(r["transferSize"], r["encodedBodySize"]) for r in resources)
    result.update(load_ms=round(load_ms, 1), transfer_bytes=transfer,
                  resources=[r["name"].split("/")[-1] for r in resources])
    log(f"loaded in {load_ms:.0f} ms, {transfer} bytes over the wire, {len(resources)} resources")
    check(load_ms < LOAD_MS, f"the page loaded in {load_ms:.0f} ms")
    check(transfer < TRANSFER_BYTES, f"the page weighs {transfer} bytes")
    check(0 < nav["transferSize"], "the navigation was not served from a cache")

    # --- topology: every node and every link
    counts, _ = wait("the topology shows every node and link", 20,
                     lambda: topology_matches(api("/api/cluster")), interval=0.25)
    result["links_measured_of_pairs"] = list(counts)

    # --- devices: every device of every node, with its memory bar. Read in one script call:
    # the page re-renders on every update, so element handles kept across calls go stale.
    def devices_shown():
        cluster = api("/api/cluster")
        for n in cluster["nodes"]:
            for d in n["devices"]:
                sel = f"#devices-list .card[data-node='{n['id']}'] .device[data-device='{d['id']}']"
                found = js("return [...document.querySelectorAll(arguments[0])].map(e =>"
                           " [!!e.querySelector('.meter .fill'), e.dataset.declared])", sel)
                declared = "true" if d["declared"] else "false"
                if found != [[True, declared]]:
                    return None
        return True

    wait("every device shown once, with its memory bar and declared flag", 10, devices_shown,
         interval=0.25)
    cluster = api("/api/cluster")

    # --- placement: the real layer split
    inst, _ = wait("a ready instance", 10, ready_instance)
    stages = [(s["node"], s["first_layer"], s["end_layer"]) for s in inst["stages"]]
    check(len(stages) == 3, f"a 3-stage split: {stages}")

    def bar():
        return js("return [...document.querySelectorAll(arguments[0])].map(s => [s.dataset.node,"
                  " +s.dataset.first, +s.dataset.end, s.getBoundingClientRect().width,"
                  " s.querySelector('.label').textContent])",
                  f".instance[data-instance='{inst['id']}'] .layers .seg")

    segs, _ = wait("the placement bar", 5, lambda: bar() if [tuple(s[:3]) for s in bar()] == stages else None)
    names = {n["id"]: n["name"] for n in cluster["nodes"]}
    per_layer = [s[3] / (s[2] - s[1]) for s in segs]
    check(max(per_layer) / min(per_layer) < 1.05, f"segment widths follow layer counts: {segs}")
    for node, a, b, _, label in segs:
        check(label == f"{names[node]} {a}..{b}", f"segment label {label!r}")
    def text_of(sel):
        return js("const e = document.querySelector(arguments[0]); return e ? e.textContent : null",
                  sel)

    wait("the instance shown ready", 5,
         lambda: text_of(f".instance[data-instance='{inst['id']}'] .status") == "ready")
    wanted = f"{inst['predicted_tokens_per_s']:.1f} tok/s"
    wait(f"the prediction {wanted} shown", 5,
         lambda: wanted in (text_of(f".instance[data-instance='{inst['id']}'] .predicted") or ""))
    result["split"] = [f"{names[n]} {a}..{b}" for n, a, b, _, _ in segs]

    # --- model selection: a preview plans without loading
    before = api("/api/instances")
    driver.find_element(By.ID, "model-spec").send_keys(MODEL_PATH)
    driver.find_element(By.ID, "model-context").send_keys("512")
    driver.find_element(By.ID, "model-preview").click()
    rows, _ = wait("the preview", 30, lambda: js(
        "return [...document.querySelectorAll('#plan-result .seg')].map(s => [+s.dataset.first, +s.dataset.end])"))
    check(rows[0][0] == 0 and all(rows[i][1] == rows[i + 1][0] for i in range(len(rows) - 1)),
          f"the preview covers the layers in order: {rows}")
    check(rows[-1][1] == stages[-1][2], f"the preview covers every layer: {rows}")
    check("tok/s" in driver.find_element(By.CSS_SELECTOR, "#plan-result .plan-tps").text, "predicted speed")
    after = api("/api/instances")
    check([i["id"] for i in after["instances"]] == [i["id"] for i in before["instances"]]
          and len(after["models"]) == len(before["models"]), "a preview loads nothing")
    result["preview"] = rows

    # --- chat: an answer streams in
    driver.find_element(By.ID, "chat-max").clear()
    driver.find_element(By.ID, "chat-max").send_keys("40")
    driver.find_element(By.ID, "chat-temp").clear()
    driver.find_element(By.ID, "chat-temp").send_keys("0")
    wait("a model to chat with", 10, lambda: js("return document.getElementById('chat-model').value"))
    js("""window.growth = [];
          new MutationObserver(() => {
            const m = [...document.querySelectorAll('#chat-log .msg.assistant')].pop();
            if (m) window.growth.push([performance.now(), m.textContent.length]);
          }).observe(document.getElementById('chat-log'),
                     {childList: true, subtree: true, characterData: true});""")
    driver.find_element(By.ID, "chat-input").send_keys("Name three colours of the rainbow.")
    driver.find_element(By.ID, "chat-send").click()
    wait("the answer to finish", 120, lambda: js(
        "const m = [...document.querySelectorAll('#chat-log .msg.assistant')].pop();"
        "return m && !m.classList.contains('streaming')"), interval=0.2)
    answer = js("return [...document.querySelectorAll('#chat-log .msg.assistant')].pop().textContent")
    growth = js("return window.growth")
    lengths = []
    for _, n in growth:
        if n > 0 and (not lengths or n > lengths[-1]):
            lengths.append(n)
    check(answer.strip() and "error" not in js(
        "return [...document.querySelectorAll('#chat-log .msg.assistant')].pop().className"),
        f"an answer: {answer!r}")
    check(len(lengths) >= 3, f"the answer grew as it streamed: lengths {lengths}")
    stats = js("return Object.assign({}, document.getElementById('chat-stats').dataset)")
    check(float(stats.get("ttft", 0)) > 0 and float(stats.get("tps", 0)) > 0, f"chat stats {stats}")
    measured = text_of(f".instance[data-instance='{inst['id']}'] .measured") or ""
    check("tok/s" in measured, f"measured speed in the placement: {measured!r}")
    result["chat"] = {"answer": answer, "lengths_seen": len(lengths), "ttft_ms": float(stats["ttft"]),
                      "tok_s": float(stats["tps"]), "tokens": int(stats.get("tokens", 0))}
    log(f"chat: {answer!r}, grew through {len(lengths)} lengths, {stats}")

    # --- a node that requires tokens: the page loads, asks for one, then works
    driver.get(TOKEN_URL)
    wait("a request for a token", 10, lambda: driver.find_element(By.ID, "token-form").is_displayed()
         and driver.find_element(By.ID, "conn").text == "token needed")
    driver.find_element(By.ID, "token").send_keys(TOKEN)
    driver.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
    wait("the token node's picture", 10, lambda: live() and page_nodes() == NAMES)
    driver.refresh()
    wait("the token kept across a reload", 10, lambda: live() and page_nodes() == NAMES)
    check(not driver.find_element(By.ID, "token-form").is_displayed(), "no token asked for again")

    # --- faults: a hot device joins, then its node is killed
    driver.get(URL)
    wait("the page is live again", 10, lambda: live() and page_nodes() == NAMES)
    _, hot_id = step("hot")
    found, result["hot_alert_s"] = alert_shown("device_throttled", "the hot node started")
    check("hot-phone" in found[0][2], f"the alert's message names the device: {found[0]}")
    check(js("return document.querySelector('#alert-badge.critical') !== null"), "a critical badge")
    wait("the hot device, declared and throttling", 5, lambda: js(
        "const d = document.querySelector(\"#devices-list .card[data-node='\" + arguments[0] + \"'] .device\");"
        "return d && d.dataset.declared === 'true' && d.querySelector(\"[data-throttle='now']\") !== null",
        hot_id))
    counts, _ = wait("the topology with the new node and its links", 30,
                     lambda: topology_matches(api("/api/cluster")), interval=0.25)
    check(len(page_nodes()) == len(NAMES) + 1, "the hot node is drawn")
    screenshot("desktop")

    _, lost_id = step("kill")
    found, result["node_lost_alert_s"] = alert_shown("node_lost", "the kill")
    wait("device_throttled resolved", 5, lambda: alert_in_page("alerts-resolved", "device_throttled", "hot"))
    wait("the topology without the killed node", 5, lambda: page_nodes() == NAMES)
    check(lost_id == hot_id, "the killed node is the hot one")
    screenshot("desktop-faults")

    # --- a phone: one column, nothing wider than the screen
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": PHONE[0], "height": PHONE[1], "deviceScaleFactor": 2, "mobile": True})
    time.sleep(0.5)
    layout = js("""
        const panels = [...document.querySelectorAll('main > section')].map(s => s.getBoundingClientRect());
        return {inner: window.innerWidth, scroll: document.documentElement.scrollWidth,
                panels: panels.map(r => [r.left, r.right, r.top, r.bottom])};""")
    log(f"phone layout: {layout}")
    check(layout["inner"] == PHONE[0], f"the phone viewport is {layout['inner']} px wide")
    check(layout["scroll"] <= PHONE[0], f"the page scrolls sideways: {layout['scroll']} px wide")
    lefts = {round(p[0]) for p in layout["panels"]}
    check(len(lefts) == 1, f"one column: panel left edges {lefts}")
    check(all(p[1] <= PHONE[0] for p in layout["panels"]), "every panel fits the screen")
    check(all(a[3] <= b[2] for a, b in zip(layout["panels"], layout["panels"][1:])),
          "the panels are stacked")
    screenshot("phone")

    print("RESULT " + json.dumps(result), flush=True)


options = Options()
options.binary_location = os.environ["HEARTH_CHROMIUM"]
for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1400,1000", "--no-first-run", "--disable-extensions",
            "--disable-background-networking", "--disable-sync"]:
    options.add_argument(arg)
driver = webdriver.Chrome(service=Service(executable_path=os.environ["HEARTH_CHROMEDRIVER"]),
                          options=options)
driver.set_page_load_timeout(30)
try:
    main()
except Exception:
    try:
        screenshot("failure")
        log(driver.get_log("browser"))
    except Exception as e:
        log(f"(no failure screenshot: {e})")
    raise
finally:
    driver.quit()
