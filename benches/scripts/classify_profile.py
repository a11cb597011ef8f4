#!/usr/bin/env python3
"""Attributes the CPU samples of an orderd perf profile to the stages of an order.

Input: `perf script -F comm,tid,ip,sym` of a `perf record -e cpu-clock --call-graph dwarf`
profile of the daemon. Each sample goes to the category of its NEAREST recognised frame
(walking from the sampled function outwards; for one frame, the first rule below that matches),
so time in malloc, memcpy or a syscall goes to whoever called it. The committer and sled's
threads are told apart by thread name first.
Output: a table of categories with their share of the samples.
"""
import re
import sys
from collections import Counter

# (category, regex over the sample's frames), first match wins.
WORKER_RULES = [
    ("auth: JWT verify (HS256)", r"jsonwebtoken|orderd_api::auth"),
    ("actor messaging (ractor call/cast, oneshot, mailbox)",
     r"ractor::actor::actor_ref|ractor::actor::actor_cell::ActorCell::send|ractor::rpc|ractor::port|tokio::sync::oneshot|tokio::sync::mpsc|ractor::concurrency"),
    ("warehouse actor (availability, reserve, allocate)", r"WarehouseActor|WarehouseState|orderd_domain::warehouse::Stock"),
    ("credit exposure (sums every order of the account)", r"Order::exposure|credit::exposure"),
    ("pricing + validation (check_order)", r"check_order|orderd_domain::pricing|orderd_domain::validation"),
    ("allocation plan", r"orderd_domain::allocation"),
    ("journal batch: encode order + audit entry", r"ordering::order_batch|records::encode|AuditEntry::new|remember_key|postcard"),
    ("idempotency digest (sha256 of the request)", r"request_digest"),
    ("account actor: rest of place (build lines, clone, state)", r"orderd_actors::ordering|orderd_actors::account"),
    ("response JSON serialization", r"serde_json::ser|serde::ser|<axum::json::Json<T> as axum_core::response::into_response"),
    ("request JSON parse", r"serde_json::de|serde::de|serde_core::de"),
    ("api handler + axum routing/middleware", r"orderd_api|axum::routing|axum::middleware|tower::"),
    ("HTTP/1 parse + encode (hyper)", r"hyper::proto::h1::role|httparse|hyper::proto::h1::encode|hyper::proto::h1::decode"),
    ("HTTP socket read/write (syscalls)", r"hyper::proto::h1::io|poll_write|poll_read|poll_flush|tokio::net::tcp|sendto|recvfrom|__x64_sys_write|__x64_sys_read|tcp_sendmsg|tcp_recvmsg"),
    ("outbox relay", r"outbox"),
    ("actor runtime (ractor processing loop, supervision)", r"ractor"),
    ("runtime: park, wake, schedule, timers", r"park|epoll_wait|futex|tokio::runtime|schedule|wake"),
]
COMMIT_RULES = [
    ("commit: sled flush + fsync", r"sled::.*flush|make_stable|fsync|fdatasync|sync_file_range"),
    ("commit: sled apply_batch (tree inserts)", r"apply_batch"),
    ("commit: build group (chain hash, keys)", r"build_group|chain_hash|sha2|audit_chain"),
    ("commit: queue + wakeups", r"."),
]


def classify(comm, frames):
    if comm.startswith("orderd-commit"):
        rules = COMMIT_RULES[:-1]
    elif comm.startswith("sled"):
        return "sled background threads (log writes, flusher)"
    else:
        rules = WORKER_RULES
    for frame in frames:
        for name, rx in rules:
            if re.search(rx, frame):
                return name
    return "commit: queue + wakeups" if comm.startswith("orderd-commit") else "other"


def main():
    counts = Counter()
    comm, frames = None, []
    total = 0

    def flush():
        nonlocal total
        if comm is not None:
            counts[classify(comm, frames)] += 1
            total += 1

    for line in sys.stdin:
        if not line.strip():
            continue
        if not line.startswith("\t") and not line.startswith(" "):
            flush()
            parts = line.split()
            comm, frames = (parts[0] if parts else "?"), []
        else:
            sym = line.strip().split(" ", 1)
            frames.append(sym[1] if len(sym) > 1 else sym[0])
    flush()
    print(f"{'category':60} {'share':>7}  samples")
    for name, n in counts.most_common():
        print(f"{name:60} {100.0 * n / max(total, 1):6.1f}%  {n}")
    print(f"{'total':60} {100.0:6.1f}%  {total}")


if __name__ == "__main__":
    main()
