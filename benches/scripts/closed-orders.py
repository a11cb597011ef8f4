#!/usr/bin/env python3
"""Start-up, an account's first request and memory on a store full of closed orders.

usage: benches/scripts/closed-orders.py BIN DATA_DIR [--fill N] [--lines L] [--runs R]

--fill N starts BIN on DATA_DIR (demo data) and has ACME place and cancel N orders of L lines
(1 unless given; each line a different SKU of the demo catalog, 8 clients).
Then R times: start BIN, time until /readyz answers, time ACME's first request (GET /v1/credit,
which starts its account actor), read the daemon's RSS now and at its peak, stop it with SIGTERM. To compare two
builds, fill one directory, copy it, and run each build on its own copy (a build of the
closed-records layout moves the closed orders of an older store at its first start).
"""
import json, os, signal, subprocess, sys, time, threading, urllib.request, socket, statistics

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

ENV = dict(os.environ, **{
    "ORDERD_API__RATE_LIMIT__ACCOUNT_MUTATIONS_PER_S": "1000000",
    "ORDERD_API__RATE_LIMIT__ACCOUNT_MUTATIONS_BURST": "1000000",
    "ORDERD_API__RATE_LIMIT__TOKEN_MUTATIONS_PER_S": "1000000",
    "ORDERD_API__RATE_LIMIT__TOKEN_MUTATIONS_BURST": "1000000",
    "RUST_LOG": "warn",
})

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

def req(base, method, path, token=None, body=None, headers=None):
    h = {"content-type": "application/json"}
    if token: h["authorization"] = "Bearer " + token
    if headers: h.update(headers)
    data = json.dumps(body).encode() if body is not None else None
    r = urllib.request.Request(base + path, data=data, method=method, headers=h)
    with OPENER.open(r, timeout=60) as resp:
        raw = resp.read()
        is_json = resp.headers.get("content-type", "").endswith("json")
        return resp.status, json.loads(raw) if is_json and raw else raw

def start(binary, data):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    p = subprocess.Popen([binary, "serve", "--data", data, "--listen", f"127.0.0.1:{port}"],
                         env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            if req(base, "GET", "/readyz")[0] == 200: break
        except Exception:
            pass
        if p.poll() is not None: sys.exit("daemon exited")
        time.sleep(0.01)
    return p, base, time.monotonic() - t0

def rss_mb(pid, field="VmRSS"):
    """The daemon's resident memory now (VmRSS) or at its peak so far (VmHWM), in MB."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field): return int(line.split()[1]) / 1024

def stop(p):
    p.send_signal(signal.SIGTERM); p.wait(60)

def token(base, account):
    return req(base, "POST", "/v1/dev/token", body={"account": account, "user": "bob", "roles": ["buyer", "approver"]})[1]["access_token"]

def order_lines(base, tok, n):
    """n lines of different active SKUs, each at the smallest quantity it may be ordered in."""
    if n == 1:
        return [{"sku": "BOLT-0010", "qty": 1}]
    found = req(base, "GET", "/v1/catalog?limit=200", tok)[1]["items"]
    def qty(i):
        return -(-i["min_qty"] // i["pack_size"]) * i["pack_size"]
    items = [v["item"] for v in found if v["item"]["status"] == "active" and not v["item"].get("components")
             and max(v["available"].values(), default=0) >= qty(v["item"])][:n]
    if len(items) < n: sys.exit(f"the catalog has {len(items)} orderable items, not {n}")
    return [{"sku": i["sku"], "qty": qty(i)} for i in items]

def fill(base, n, lines):
    tok = token(base, "ACME")
    body = {"lines": order_lines(base, tok, lines), "ship_to": "BERLIN"}
    def worker(w):
        for i in range(w, n, 8):
            _, o = req(base, "POST", "/v1/orders", tok, body, {"idempotency-key": f"fill-{i}"})
            req(base, "POST", f"/v1/orders/{o['id']}/cancel", tok, {})
    ts = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    [t.start() for t in ts]; [t.join() for t in ts]

def main():
    binary, data = sys.argv[1], sys.argv[2]
    args = sys.argv[3:]
    n = int(args[args.index("--fill") + 1]) if "--fill" in args else 0
    runs = int(args[args.index("--runs") + 1]) if "--runs" in args else 3
    lines = int(args[args.index("--lines") + 1]) if "--lines" in args else 1
    if n:
        p, base, _ = start(binary, data)
        t = time.monotonic(); fill(base, n, lines); print(f"filled {n} closed orders of {lines} line(s) in {time.monotonic()-t:.1f}s", flush=True)
        stop(p)
    starts, firsts, rss = [], [], []
    for r in range(runs):
        p, base, s = start(binary, data)
        tok = token(base, "ACME")
        t = time.monotonic(); req(base, "GET", "/v1/credit", tok); first = time.monotonic() - t
        starts.append(s); firsts.append(first); rss.append(rss_mb(p.pid))
        peak = rss_mb(p.pid, "VmHWM")
        print(f"run {r}: ready {s*1000:.0f} ms, first ACME request {first*1000:.1f} ms, "
              f"RSS {rss[-1]:.0f} MB (peak {peak:.0f} MB)", flush=True)
        stop(p)
    print(f"median: ready {statistics.median(starts)*1000:.0f} ms, first ACME request {statistics.median(firsts)*1000:.1f} ms, RSS {statistics.median(rss):.0f} MB")

main()
