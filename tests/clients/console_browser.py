"""The web console in a real browser: Debian's chromium, headless, driven by Playwright
(nothing downloaded: `executable_path` is the system's chromium), against a running
`emollama serve` with a token and a `[[watch]]` source on a UDP port that this script
feeds with FFmpeg. Each state is checked and saved as a screenshot; what was measured is
printed as one JSON line for the Rust test (tests/tests/console.rs).

usage: console_browser.py BASE_URL TOKEN UDP_PORT CLIP OUT_DIR
       console_browser.py BASE_URL TOKEN UDP_PORT CLIP OUT_DIR --hold MINUTES PID
         (scripts/bench-console: the live view held open, the service's memory sampled)
"""

import json
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

base, token, udp_port, clip, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], Path(sys.argv[5])
out.mkdir(parents=True, exist_ok=True)
VIEWPORT = {"width": 1000, "height": 760}
CHROMIUM = "/usr/bin/chromium"
SOURCE = "cam"


def sender() -> subprocess.Popen:
    """The clip, looped at its own pace, as MPEG-TS over UDP: a live camera's stand-in."""
    return subprocess.Popen(["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", clip,
                             "-c", "copy", "-f", "mpegts", f"udp://127.0.0.1:{udp_port}?pkt_size=1316"],
                            stdin=subprocess.DEVNULL)


class EventTimes(threading.Thread):
    """The event stream as any client reads it: the wall-clock arrival of each window
    event, by its index, to compare with when the page shows it."""

    def __init__(self):
        super().__init__(daemon=True)
        self.arrived = {}

    def run(self):
        req = urllib.request.Request(f"{base}/v1/watch/events?source={SOURCE}",
                                     headers={"Authorization": f"Bearer {token}"})
        event = None
        with urllib.request.urlopen(req, timeout=600) as r:
            for raw in r:
                line = raw.decode().rstrip("\n")
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "window":
                    self.arrived[json.loads(line[5:])["index"]] = time.time()


def shot(page, name: str, **kw) -> None:
    """A screenshot as a small PNG (an adaptive 128-colour palette): the README's are these."""
    from io import BytesIO

    from PIL import Image

    img = Image.open(BytesIO(page.screenshot(**kw))).convert("RGB")
    img.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(out / f"{name}.png", optimize=True)


def watched_page(p, findings):
    browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
    page = browser.new_page(viewport=VIEWPORT)
    page.on("console", lambda m: m.type in ("error", "warning") and findings["console_errors"].append(
        {"type": m.type, "text": m.text, "url": m.location.get("url", "")}))
    page.on("pageerror", lambda e: findings["page_errors"].append(str(e)))
    return browser, page


def rss_kb(pid: str) -> int:
    return next(int(line.split()[1]) for line in open(f"/proc/{pid}/status") if line.startswith("VmRSS:"))


def hold(minutes: float, pid: str):
    """The live view open for `minutes` while the camera streams: the service's resident
    memory every 10 s, the windows the page showed."""
    findings = {"console_errors": [], "page_errors": [], "rss_kb": []}
    feed = sender()
    try:
        with sync_playwright() as p:
            browser, page = watched_page(p, findings)
            page.goto(base + "/")
            page.evaluate("t => localStorage.setItem('emollama.token', t)", token)
            page.reload()
            card = page.locator(f'article.source[data-source="{SOURCE}"]')
            expect(card).to_be_visible(timeout=20_000)
            started = time.time()
            while time.time() - started < minutes * 60:
                findings["rss_kb"].append([round(time.time() - started), rss_kb(pid)])
                time.sleep(10)
            findings["rss_kb"].append([round(time.time() - started), rss_kb(pid)])
            findings["page_windows"] = int(card.get_attribute("data-windows"))
            # (the 401s of the first load, before the token was stored)
            findings["console_errors"] = [e for e in findings["console_errors"] if "401" not in e["text"]]
            browser.close()
    finally:
        feed.terminate()
    print(json.dumps(findings))


def main():
    findings = {"console_errors": [], "page_errors": []}
    feed = sender()
    events = EventTimes()
    events.start()
    try:
        with sync_playwright() as p:
            browser, page = watched_page(p, findings)
            # The browser's own "Failed to load resource" line does not say which: these do.
            page.on("response", lambda r: r.status >= 400 and findings.setdefault("failed_responses", []).append(
                f"{r.status} {r.url[len(base):]}"))
            transferred = []
            page.on("requestfinished", lambda r: transferred.append(r))

            # No token yet: the page asks for one; a wrong one is refused, the right one opens it.
            page.goto(base + "/")
            expect(page.locator("#login")).to_be_visible(timeout=20_000)
            shot(page, "login")
            page.fill("#token", "not-the-token")
            page.locator("#login").locator("button[type=submit], input[type=submit]").first.click()
            expect(page.locator("#login-error")).to_be_visible(timeout=10_000)
            expect(page.locator("#login-error")).not_to_be_empty()
            # The browser logs the 401s the wrong token earned; nothing else may be logged.
            findings["console_errors"] = [e for e in findings["console_errors"] if "401" not in e["text"]]
            page.fill("#token", token)
            page.locator("#login").locator("button[type=submit], input[type=submit]").first.click()
            expect(page.locator("#login")).to_be_hidden(timeout=10_000)
            findings["first_load_bytes"] = sum(
                (r.sizes()["responseBodySize"] + r.sizes()["responseHeadersSize"]) for r in transferred
                if r.url.startswith(base) and "/v1/watch/events" not in r.url)
            findings["first_load_files"] = sorted({r.url[len(base):] for r in transferred if r.url.startswith(base)})

            # The live view: the source's card fills in as windows arrive.
            card = page.locator(f'article.source[data-source="{SOURCE}"]')
            expect(card).to_be_visible(timeout=10_000)
            # Predicates are functions, not expressions: Playwright compiles an expression
            # with eval inside the page, which the console's CSP (rightly) forbids.
            windows = "n => Number(document.querySelector('article.source[data-source=\"%s\"]')?.dataset.windows) >= n" % SOURCE
            page.wait_for_function(windows, arg=1, timeout=120_000)
            # Each window's arrival on the page, on the same clock as the event stream's.
            page.evaluate("""source => {
                window.__shown = {};
                const card = document.querySelector(`article.source[data-source="${source}"]`);
                new MutationObserver(() => { window.__shown[card.dataset.windows] = Date.now() / 1000; })
                    .observe(card, {attributes: true, attributeFilter: ['data-windows']});
            }""", SOURCE)
            start = int(card.get_attribute("data-windows"))
            page.wait_for_function(windows, arg=start + 3, timeout=120_000)
            expect(card.locator(".state")).to_contain_text("connected")
            expect(card.locator(".label")).not_to_be_empty()
            page.wait_for_function(f"""() => {{
                const img = document.querySelector('article.source[data-source="{SOURCE}"] img.frame');
                return img && img.complete && img.naturalWidth > 0; }}""", timeout=30_000)
            findings["frame_px"] = card.locator("img.frame").evaluate("i => [i.naturalWidth, i.naturalHeight]")
            frame_src_1 = card.locator("img.frame").get_attribute("src")
            expect(card.locator(".timeline canvas").first).to_be_visible()
            shown = page.evaluate("window.__shown")
            # data-windows counts windows; the stream's index of the n-th window is n - 1.
            lags = [shown[k] - events.arrived[int(k) - 1] for k in shown if int(k) - 1 in events.arrived]
            findings["event_to_page_s"] = sorted(lags)
            page.wait_for_function(f"""src => document.querySelector(
                'article.source[data-source="{SOURCE}"] img.frame').getAttribute('src') !== src""",
                                   arg=frame_src_1, timeout=60_000)
            findings["frame_refreshed"] = True
            shot(page, "live")

            # Health: the bundle, the plan, the requests by outcome.
            page.get_by_role("button", name="Health").click()
            expect(page.locator("#health-info")).to_contain_text("synthetic")
            expect(page.locator("#requests")).to_be_visible()
            shot(page, "health", full_page=True)

            # Try a clip: the answer streams in, then the label bars and the timings.
            page.get_by_role("button", name="Try a clip").click()
            page.set_input_files("#clip", clip)
            page.select_option("#task", "emotion")
            page.fill("#transcript", "I can't believe we made it")
            page.fill("#max-new-tokens", "16")
            page.click("#run")
            expect(page.locator("#answer")).not_to_be_empty(timeout=120_000)
            expect(page.locator("#scores .bar").first).to_be_visible(timeout=120_000)
            expect(page.locator("#timings")).to_contain_text("prefill")
            findings["answer"] = page.locator("#answer").inner_text()
            findings["bars"] = page.locator("#scores .bar").count()
            shot(page, "upload")

            # The health view counts that request.
            page.get_by_role("button", name="Health").click()
            expect(page.locator('#requests [data-outcome="ok"]')).to_contain_text("1", timeout=15_000)

            # The source stops: its card says it is reconnecting.
            page.get_by_role("button", name="Live").click()
            feed.terminate()
            feed.wait()
            expect(card.locator(".state")).to_contain_text("reconnecting", timeout=60_000)
            shot(page, "reconnecting")

            # A phone's width: nothing wider than the screen.
            page.set_viewport_size({"width": 360, "height": 740})
            # The timeline follows the card's new width (resized a frame or two later).
            page.wait_for_function("""() => [...document.querySelectorAll('.timeline .uplot')]
                .every(u => u.getBoundingClientRect().right <= document.documentElement.clientWidth)""", timeout=5_000)
            findings["phone_overflow_px"] = page.evaluate(
                "() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
            findings["phone_too_wide"] = page.evaluate("""() => [...document.querySelectorAll('body *')]
                .filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1)
                .slice(0, 5).map(e => e.tagName + (e.id ? '#' + e.id : '') + '.' + e.className)""")
            shot(page, "phone", full_page=True)

            # A token that is no longer right (changed on the service): the login comes back.
            page.evaluate("localStorage.setItem('emollama.token', 'revoked')")
            page.reload()
            expect(page.locator("#login")).to_be_visible(timeout=20_000)
            # (the browser logs the 401s the revoked token earned)
            findings["console_errors"] = [e for e in findings["console_errors"] if "401" not in e["text"]]
            browser.close()
    finally:
        feed.terminate()
    print(json.dumps(findings))


if sys.argv[6:7] == ["--hold"]:
    hold(float(sys.argv[7]), sys.argv[8])
else:
    main()
