"""The service soaked under a mixed load (scripts/soak runs it; its short form is a test).

Drives a running `emollama serve` for SECONDS with every kind of client it meets in the
field, at once: valid analyses (multipart, streamed, through the `openai` package's chat
completions), malformed requests (bad JSON, wrong content type, unknown fields, corrupt
media, a missing token, oversized declarations), cancelled ones (a stream closed after its
first event, an upload cut in the middle), slow clients (headers or body trickled below
the service's limits), readers of /metrics, /v1/status, the watch frame and its event
stream, and bursts past admission (503s are expected there). The `[[watch]]` source's
sender (FFmpeg over UDP) is stopped and restarted on a cycle. Every few seconds the
service's RSS, open file descriptors, threads and upload folder are sampled from /proc.

Twice the load pauses and the service is measured at rest: after the warm-up and at the
end. Written to WORK: samples.csv, requests.csv, summary.json (the verdict and its
numbers), soak.png. Exits 1 when a limit is broken.

usage: soak.py URL TOKEN PID SECONDS WORK CLIP UDP_PORT UPLOAD_DIR
"""

import base64
import csv
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import httpx
import openai

URL, TOKEN, PID, SECONDS, WORK, CLIP, UDP_PORT, UPLOAD_DIR = sys.argv[1:9]
PID, SECONDS, UDP_PORT = int(PID), float(SECONDS), int(UDP_PORT)
WORK, UPLOAD_DIR = Path(WORK), Path(UPLOAD_DIR)
HOST, PORT = urlparse(URL).hostname, urlparse(URL).port
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CLIP_BYTES = Path(CLIP).read_bytes()
# Warm-up: the first twelfth (10 minutes of two hours), at least 20 s.
WARMUP = max(20.0, SECONDS / 12)
SAMPLE_EVERY = 5.0 if SECONDS >= 600 else 1.0
# The limits held (see summary.json): RSS after warm-up may not grow faster than this,
# and at rest the service holds the same descriptors and threads as after the warm-up.
RSS_SLOPE_LIMIT_MIB_PER_H = 1.0
REST_FD_SLACK = 0  # at rest nothing is open but the service's own files and listeners
# Tokio's blocking threads live 10 s past their last task, and the watch source hands its
# windows to them every hop_s: one may be alive at either rest. Other threads by name: equal.
REST_THREAD_SLACK = 1

started = time.monotonic()
rng = random.Random(7)
records = []  # (t, kind, outcome)
records_lock = threading.Lock()
pause = threading.Event()  # set: workers finish what they do and wait
stop = threading.Event()
busy = Counter()  # workers in a request
busy_lock = threading.Lock()


def now():
    return time.monotonic() - started


def record(kind, outcome):
    with records_lock:
        records.append((round(now(), 2), kind, str(outcome)))


# --- the clients -----------------------------------------------------------------------


def multipart(stream=False, **fields):
    files = {"media": ("clip.mp4", CLIP_BYTES, "video/mp4")}
    data = {"task": "emotion", "max_new_tokens": "6", **fields}
    url = f"{URL}/v1/analyze" + ("?stream=true" if stream else "")
    return url, files, data


def valid_analyze(http):
    url, files, data = multipart()
    return http.post(url, files=files, data=data, headers=AUTH).status_code


def streamed_analyze(http):
    url, files, data = multipart(stream=True)
    with http.stream("POST", url, files=files, data=data, headers=AUTH) as r:
        events = [line for line in r.iter_lines() if line.startswith("event:")]
        if r.status_code == 200 and events[-1:] != ["event: result"]:
            return f"{r.status_code}-no-result"
        return r.status_code


def cancelled_stream(http):
    """A streamed analysis closed after its first event (a user who navigates away)."""
    url, files, data = multipart(stream=True, max_new_tokens="24")
    with http.stream("POST", url, files=files, data=data, headers=AUTH) as r:
        for line in r.iter_lines():
            if line.startswith("event:"):
                break
        return f"{r.status_code}-closed"


def chat(http, stream):
    url = "data:video/mp4;base64," + base64.b64encode(CLIP_BYTES).decode()
    content = [{"type": "text", "text": "[emotion]"}, {"type": "video_url", "video_url": {"url": url}}]
    client = openai.OpenAI(base_url=f"{URL}/v1", api_key=TOKEN, http_client=http, max_retries=0)
    try:
        if stream:
            pieces = list(client.chat.completions.create(model="emollama", max_tokens=6, stream=True,
                                                         messages=[{"role": "user", "content": content}]))
            return 200 if pieces else "200-empty"
        client.chat.completions.create(model="emollama", max_tokens=6, messages=[{"role": "user", "content": content}])
        return 200
    except openai.APIStatusError as e:
        return e.status_code


def malformed(http):
    """One of the requests a careless or hostile client sends: each has its own 4xx."""
    choice = rng.randrange(8)
    if choice == 0:
        return "bad-json", http.post(f"{URL}/v1/analyze", content=b"{not json", headers={
            **AUTH, "Content-Type": "application/json"}).status_code
    if choice == 1:
        return "wrong-type", http.post(f"{URL}/v1/analyze", content=b"x", headers={
            **AUTH, "Content-Type": "text/plain"}).status_code
    if choice == 2:
        url, files, data = multipart(surprise="1")
        return "unknown-field", http.post(url, files=files, data=data, headers=AUTH).status_code
    if choice == 3:
        junk = bytes(rng.randrange(256) for _ in range(20000))
        url, _, data = multipart()
        return "corrupt-media", http.post(url, files={"media": ("x.mp4", junk, "video/mp4")}, data=data,
                                          headers=AUTH).status_code
    if choice == 4:
        url, files, data = multipart()
        return "no-token", http.post(url, files=files, data=data).status_code
    if choice == 5:
        return "bad-query", http.post(f"{URL}/v1/analyze?stream=maybe", json={"path": "/nowhere.mp4"},
                                      headers=AUTH).status_code
    if choice == 6:
        return "path-outside", http.post(f"{URL}/v1/analyze", json={"path": "/etc/passwd"}, headers=AUTH).status_code
    # A declared length beyond max_upload_bytes: refused from the headers alone.
    return "oversized", raw_exchange(
        f"POST /v1/analyze HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 99999999999\r\n\r\n".encode(), b"")


def raw_exchange(head, body, trickle=0.0, cut_after=None, timeout=60.0):
    """A raw HTTP/1.1 exchange: the status line's code, or what happened to the socket."""
    with socket.create_connection((HOST, PORT), timeout=timeout) as s:
        try:
            s.sendall(head)
            sent = 0
            for i in range(0, len(body), 1024):
                if cut_after is not None and sent >= cut_after:
                    return "cut"
                s.sendall(body[i:i + 1024])
                sent += 1024
                if trickle:
                    time.sleep(trickle)
            reply = s.recv(64)
        except (ConnectionResetError, BrokenPipeError):
            return "reset"
        except socket.timeout:
            return "no-reply"
    return reply.split(b" ")[1].decode() if reply.startswith(b"HTTP/1.1 ") else ("closed" if not reply else "garbled")


def multipart_bytes():
    b = b"----soak"
    body = (b"--" + b + b"\r\nContent-Disposition: form-data; name=\"task\"\r\n\r\nemotion\r\n--" + b
            + b"\r\nContent-Disposition: form-data; name=\"media\"; filename=\"c.mp4\"\r\n"
            b"Content-Type: video/mp4\r\n\r\n" + CLIP_BYTES + b"\r\n--" + b + b"--\r\n")
    head = (f"POST /v1/analyze HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: multipart/form-data; boundary={b.decode()}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return head, body


def cut_upload(_http):
    head, body = multipart_bytes()
    return raw_exchange(head, body, cut_after=len(body) // 2)


def slow_body(_http):
    """A body trickled far below body_min_rate: the service must cut it (408), not wait."""
    head, body = multipart_bytes()
    return raw_exchange(head, body, trickle=0.25)


def slow_headers(_http):
    """Headers that never end: the service closes the connection at header_timeout_s."""
    with socket.create_connection((HOST, PORT), timeout=60) as s:
        s.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
        try:
            reply = s.recv(64)
        except (ConnectionResetError, socket.timeout):
            return "reset"
        return reply.split(b" ")[1].decode() if reply.startswith(b"HTTP/1.1 ") else "closed"


def readers(http):
    kind = rng.choice(["metrics", "status", "frame"])
    path = {"metrics": "/metrics", "status": "/v1/status", "frame": "/v1/watch/frame?source=cam"}[kind]
    return kind, http.get(f"{URL}{path}", headers=AUTH).status_code


def event_stream(http):
    """A console following the watch events for a few seconds, then gone."""
    deadline = time.monotonic() + rng.uniform(3, 15)
    with http.stream("GET", f"{URL}/v1/watch/events", headers=AUTH) as r:
        if r.status_code != 200:
            return r.status_code
        for _ in r.iter_bytes():
            if time.monotonic() > deadline or stop.is_set() or pause.is_set():
                break
        return "200-closed"


# The mix: (weight, kind, call). Valid analyses dominate; the rest come often enough to be
# counted in hundreds over two hours.
MIX = [
    (6, "analyze", valid_analyze),
    (3, "analyze-stream", streamed_analyze),
    (2, "chat", lambda h: chat(h, False)),
    (2, "chat-stream", lambda h: chat(h, True)),
    (2, "cancelled-stream", cancelled_stream),
    (2, "cut-upload", cut_upload),
    (1, "slow-body", slow_body),
    (1, "slow-headers", slow_headers),
    (6, "malformed", malformed),
    (4, "reader", readers),
    (2, "events", event_stream),
]


def one_request(http, kind, call):
    with busy_lock:
        busy[kind] += 1
    try:
        out = call(http)
    except (httpx.HTTPError, openai.APIConnectionError, OSError) as e:
        out = f"error-{type(e).__name__}"
    finally:
        with busy_lock:
            busy[kind] -= 1
    if isinstance(out, tuple):
        kind, out = f"{kind}:{out[0]}", out[1]
    record(kind, out)


def worker(seed):
    wrng = random.Random(seed)
    weights = [w for w, _, _ in MIX]
    with httpx.Client(timeout=600) as http:
        while not stop.is_set():
            if pause.is_set():
                time.sleep(0.2)
                continue
            _, kind, call = wrng.choices(MIX, weights)[0]
            one_request(http, kind, call)
            time.sleep(wrng.uniform(0, 1.0))


def burst_one():
    with httpx.Client(timeout=600) as http:
        one_request(http, "burst", valid_analyze)


def bursts():
    """Every two minutes (every 20 s in a short run) eight analyses at once: past
    max_concurrency + max_queue, admission answers 503 with Retry-After."""
    every = 120.0 if SECONDS >= 600 else 20.0
    while not stop.wait(every):
        if pause.is_set():
            continue
        threads = [threading.Thread(target=burst_one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


# --- the watch source that drops and comes back ------------------------------------------


def sender_cycle(log):
    """FFmpeg sends the clip in a loop for a while, stops (the source reconnects), again."""
    on, off = (240.0, 30.0) if SECONDS >= 600 else (15.0, 5.0)
    while not stop.is_set():
        p = subprocess.Popen(["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", CLIP,
                              "-c:v", "mpeg2video", "-q:v", "5", "-c:a", "mp2", "-f", "mpegts",
                              f"udp://127.0.0.1:{UDP_PORT}?pkt_size=1316"], stderr=log)
        record("sender", "started")
        stop.wait(on)
        p.terminate()
        p.wait()
        record("sender", "stopped")
        stop.wait(off)


# --- sampling --------------------------------------------------------------------------


def proc_sample():
    status = dict(line.split(":", 1) for line in Path(f"/proc/{PID}/status").read_text().splitlines() if ":" in line)
    kib = lambda k: int(status[k].split()[0])
    # The service keeps its uploads in a private folder of its own, locked by `.lock`.
    uploads = [p for p in UPLOAD_DIR.rglob("*") if p.is_file() and p.name != ".lock"]
    return {"t": round(now(), 1), "rss_kib": kib("VmRSS"), "hwm_kib": kib("VmHWM"),
            "threads": int(status["Threads"]), "fds": len(os.listdir(f"/proc/{PID}/fd")),
            "upload_files": len(uploads), "upload_bytes": sum(p.stat().st_size for p in uploads)}


samples = []


def sampler():
    while not stop.is_set():
        try:
            samples.append(proc_sample())
        except (FileNotFoundError, ProcessLookupError):
            record("service", "gone")
            stop.set()
            return
        stop.wait(SAMPLE_EVERY)


def at_rest(label):
    """Pause the load, let every request end, then measure the service at rest."""
    pause.set()
    deadline = time.monotonic() + 600
    while sum(busy.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    # Tokio's blocking threads linger 10 s after their last task; the watch source may be
    # between two connections: the floor of five samples over 5 s, after 12 s of rest.
    time.sleep(12.0)
    quiet = []
    for _ in range(5):
        quiet.append(proc_sample())
        time.sleep(1.0)
    s = {**quiet[-1], "fds": min(q["fds"] for q in quiet), "threads": min(q["threads"] for q in quiet),
         "upload_files": max(q["upload_files"] for q in quiet), "label": label}
    # Which threads: a difference is then named, not just counted.
    s["thread_names"] = dict(sorted(Counter((t / "comm").read_text().strip()
                                            for t in Path(f"/proc/{PID}/task").iterdir()).items()))
    source = httpx.get(f"{URL}/v1/status", headers=AUTH).json()["sources"][0]
    s["watch"] = {k: source.get(k) for k in ("state", "windows", "dropped", "failed")}
    pause.clear()
    return s


def main():
    WORK.mkdir(parents=True, exist_ok=True)
    log = open(WORK / "ffmpeg.log", "ab")
    threads = [threading.Thread(target=sampler, daemon=True), threading.Thread(target=sender_cycle, args=(log,),
                                                                                daemon=True),
               threading.Thread(target=bursts, daemon=True)]
    threads += [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    rest = []
    stop.wait(WARMUP)
    rest.append(at_rest("after warm-up"))
    stop.wait(max(0.0, SECONDS - now()))
    rest.append(at_rest("end"))
    stop.set()
    for t in threads:
        t.join(timeout=700)
    summarize(rest)


# --- the verdict, the files, the plot ----------------------------------------------------


def slope_per_hour(points):
    """Least-squares slope of (t seconds, y) in y per hour, with its standard error."""
    n = len(points)
    if n < 3:
        return 0.0, float("inf")
    ts, ys = [p[0] for p in points], [p[1] for p in points]
    mt, my = statistics.fmean(ts), statistics.fmean(ys)
    sxx = sum((t - mt) ** 2 for t in ts)
    b = sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / sxx
    resid = [y - my - b * (t - mt) for t, y in zip(ts, ys)]
    se = (sum(r * r for r in resid) / (n - 2) / sxx) ** 0.5
    return b * 3600, se * 3600


def outcome_class(outcome):
    o = outcome.split("-")[0]
    if o.isdigit():
        code = int(o)
        return "503" if code == 503 else f"{code // 100}xx"
    return "no status (by design)" if outcome in ("cut", "closed", "reset", "200-closed", "started", "stopped") \
        else "client error"


def summarize(rest):
    with open(WORK / "samples.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(samples[0]))
        w.writeheader()
        w.writerows(samples)
    with open(WORK / "requests.csv", "w", newline="") as f:
        csv.writer(f).writerows([("t", "kind", "outcome"), *records])
    by_kind = {}
    for _, kind, outcome in records:
        by_kind.setdefault(kind, Counter())[outcome] += 1
    classes = Counter(outcome_class(o) for _, k, o in records if k not in ("sender", "service"))
    # 5xx the service may give: 503 at admission (bursts) or while the source's engines
    # are busy; any other 5xx is a defect.
    bad_5xx = [(t, k, o) for t, k, o in records if o[:1] == "5" and not o.startswith("503")]
    unexpected = [(t, k, o) for t, k, o in records if outcome_class(o) == "client error"]
    after = [s for s in samples if s["t"] >= WARMUP]
    rss_slope, rss_se = slope_per_hour([(s["t"], s["rss_kib"] / 1024) for s in after])
    warm, end = rest
    mib = lambda k: round(k / 1024, 1)
    checks = {
        "no 5xx other than 503": not bad_5xx,
        "no client-side failure (timeouts, resets where a status was due)": not unexpected,
        # A drift needs time to show: judged on runs of half an hour or more, reported always.
        f"RSS slope after warm-up <= {RSS_SLOPE_LIMIT_MIB_PER_H} MiB/h (within 2 standard errors)":
            SECONDS < 1800 or rss_slope - 2 * rss_se <= RSS_SLOPE_LIMIT_MIB_PER_H,
        "file descriptors at rest: end = after warm-up": end["fds"] <= warm["fds"] + REST_FD_SLACK,
        "threads at rest: end = after warm-up (one lingering blocking thread allowed)":
            end["threads"] <= warm["threads"] + REST_THREAD_SLACK
            and {k: v for k, v in warm["thread_names"].items() if k != "tokio-rt-worker"}
            == {k: v for k, v in end["thread_names"].items() if k != "tokio-rt-worker"},
        "upload folder empty at rest": warm["upload_files"] == 0 and end["upload_files"] == 0,
        "the service stayed up": not any(k == "service" for _, k, _ in records),
    }
    summary = {
        "seconds": round(now(), 1), "warmup_s": WARMUP, "samples": len(samples),
        "rss_mib": {"start": mib(samples[0]["rss_kib"]), "after_warmup_at_rest": mib(warm["rss_kib"]),
                    "end_at_rest": mib(end["rss_kib"]), "min_after_warmup": mib(min(s["rss_kib"] for s in after)),
                    "max_after_warmup": mib(max(s["rss_kib"] for s in after)),
                    "median_first_quarter": mib(statistics.median(s["rss_kib"] for s in after[:len(after) // 4 or 1])),
                    "median_last_quarter": mib(statistics.median(s["rss_kib"] for s in after[-(len(after) // 4 or 1):])),
                    "slope_mib_per_h": round(rss_slope, 2), "slope_standard_error": round(rss_se, 2),
                    "peak_hwm": mib(samples[-1]["hwm_kib"])},
        "fds": {"start": samples[0]["fds"], "after_warmup_at_rest": warm["fds"], "end_at_rest": end["fds"],
                "max": max(s["fds"] for s in samples)},
        "threads": {"start": samples[0]["threads"], "after_warmup_at_rest": warm["threads"],
                    "end_at_rest": end["threads"], "max": max(s["threads"] for s in samples)},
        "upload_files_max": max(s["upload_files"] for s in samples),
        "watch_at_rest": [warm["watch"], end["watch"]],
        "thread_names_at_rest": [warm["thread_names"], end["thread_names"]],
        "requests": sum(classes.values()), "by_class": dict(classes),
        "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        "unexpected_5xx": bad_5xx[:20], "client_failures": unexpected[:20],
        "checks": checks, "passed": all(checks.values()),
    }
    (WORK / "summary.json").write_text(json.dumps(summary, indent=1))
    plot(after_t=WARMUP, rest=rest)
    print(json.dumps(summary))
    sys.exit(0 if summary["passed"] else 1)


def plot(after_t, rest):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s["t"] / 60 for s in samples]
    fig, axes = plt.subplots(5, 1, figsize=(10, 11), sharex=True)
    series = [("RSS (MiB)", [s["rss_kib"] / 1024 for s in samples]), ("open file descriptors", [s["fds"] for s in samples]),
              ("threads", [s["threads"] for s in samples]), ("files in the upload folder",
                                                              [s["upload_files"] for s in samples])]
    for ax, (label, ys) in zip(axes, series):
        ax.plot(minutes, ys, lw=0.8)
        ax.set_ylabel(label, fontsize=8)
        ax.axvline(after_t / 60, color="grey", ls=":", lw=0.8)
        for r in rest:
            ax.axvline(r["t"] / 60, color="green", ls="--", lw=0.6)
        ax.grid(alpha=0.3)
    bucket = 60.0 if SECONDS >= 600 else 5.0
    per = {}
    for t, k, o in records:
        if k in ("sender", "service"):
            continue
        per.setdefault(outcome_class(o), Counter())[int(t // bucket)] += 1
    n = int(now() // bucket) + 1
    for cls, counts in sorted(per.items()):
        axes[4].plot([i * bucket / 60 for i in range(n)], [counts[i] for i in range(n)], lw=0.8, label=cls)
    axes[4].set_ylabel(f"requests per {int(bucket)} s", fontsize=8)
    axes[4].legend(fontsize=7, ncol=3)
    axes[4].set_xlabel("minutes (dotted: end of warm-up; dashed: measured at rest)")
    fig.suptitle(f"emollama serve under a mixed load for {now() / 60:.0f} min", fontsize=10)
    fig.tight_layout()
    fig.savefig(WORK / "soak.png", dpi=90)


if __name__ == "__main__":
    main()
