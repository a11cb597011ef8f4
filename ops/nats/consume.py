#!/usr/bin/env python3
"""An independent check of what orderd publishes to NATS JetStream, written against the
official Python client (nats-py), not against orderd's code.

Reads a whole stream with a durable pull consumer, acknowledging every message, until nothing
new arrives for --idle seconds. The Nats-Msg-Id header must equal the CloudEvent's id on an
order subject, and the id followed by "@<warehouse>" on an allocation subject (one event goes to
every warehouse it moves stock in). Deduplicates by subject and event id, then checks that every
order's `sequence` numbers run 1, 2, 3, ... with no gap and in delivery order (per subject).
Prints one JSON object:

  {"messages": N, "duplicates": D, "orders": {"<order>": [seq, ...]},
   "subjects": {"<subject>": count}, "problems": ["..."]}

With --lines, "lines": {"<subject>": {"lines": N, "omitted": K, "warehouses": [...]}} also says
what the last message on each subject carried: how many lines, `data.lines_omitted` (0 when
absent) and the warehouses its lines' allocations name.

"orders" lists each order's sequences on the order subjects, or with --any-sequence (the
allocations stream) on the first warehouse subject it was seen on.

A durable consumer goes on where its last run stopped, so an order's events may arrive over
several runs: with --state FILE the checks go on too (the sequences due, the event ids seen and
each order's subject are kept in FILE between runs), while the output lists only this run's.

With --bind it reads a consumer that exists (a warehouse's, which orderd creates) instead of
creating one. --user signs in as that NATS user with the password in $NATS_PASSWORD, and
--inbox-prefix sets the subjects replies come on (a user may only subscribe to its own). A
refused sign-in or subscription, or a fetch the server does not allow, ends it with exit code 3
and {"error": "..."} on stdout.

--create FILTER first creates the consumer DURABLE itself, filtered to FILTER; --get SEQ only
fetches message SEQ of the stream directly and prints {"subject": ...} (both are what a
warehouse must not be allowed to do).

Usage: consume.py NATS_URL STREAM DURABLE [--idle SECONDS] [--any-sequence] [--state FILE]
                  [--bind] [--user USER] [--inbox-prefix PREFIX] [--create FILTER] [--get SEQ]
                  [--lines]
"""
import argparse
import asyncio
import json
import os
import sys

import nats
import nats.js.errors
from nats.errors import TimeoutError as NatsTimeout


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("stream")
    ap.add_argument("durable")
    ap.add_argument("--idle", type=float, default=2.0)
    ap.add_argument("--any-sequence", action="store_true",
                    help="only some changes per order are on this stream (allocations)")
    ap.add_argument("--state", help="file keeping the checks' state between runs")
    ap.add_argument("--bind", action="store_true", help="read an existing consumer")
    ap.add_argument("--user", help="NATS user; the password is read from $NATS_PASSWORD")
    ap.add_argument("--inbox-prefix", default="_INBOX")
    ap.add_argument("--create", metavar="FILTER", help="create the consumer first")
    ap.add_argument("--get", type=int, metavar="SEQ", help="only get message SEQ directly")
    ap.add_argument("--lines", action="store_true", help="say what lines each subject carried")
    args = ap.parse_args()
    try:
        await consume(args)
    except (nats.errors.Error, nats.js.errors.Error) as e:
        # A request the server refuses times out; the refusal itself came as an error.
        why = ERRORS[0] if ERRORS else e
        json.dump({"error": f"{type(why).__name__}: {why}"}, sys.stdout)
        sys.exit(3)


# What the server refused (permission violations), in order.
ERRORS = []


async def consume(args):
    state = {"due": {}, "seen": [], "order_subject": {}}
    if args.state and os.path.exists(args.state):
        with open(args.state) as f:
            state = json.load(f)

    async def error_cb(e):
        ERRORS.append(e)

    auth = {"user": args.user, "password": os.environ["NATS_PASSWORD"]} if args.user else {}
    nc = await nats.connect(args.url, connect_timeout=5, max_reconnect_attempts=3,
                            inbox_prefix=args.inbox_prefix,
                            error_cb=error_cb, **auth)
    js = nc.jetstream()
    if args.get is not None:
        msg = await js.get_msg(args.stream, seq=args.get)
        json.dump({"subject": msg.subject}, sys.stdout)
        await nc.close()
        return
    if args.create:
        await js.add_consumer(args.stream, durable_name=args.durable,
                              filter_subject=args.create, ack_policy="explicit")
    if args.bind or args.create:
        sub = await js.pull_subscribe_bind(args.durable, stream=args.stream)
    else:
        sub = await js.pull_subscribe("", durable=args.durable, stream=args.stream)
    seen = {tuple(k) for k in state["seen"]}
    # The sequence each order's next event must have (1 for an order not seen yet).
    due = state["due"]
    orders = {}
    order_subject = state["order_subject"]
    subjects = {}
    lines = {}
    problems = []
    messages = duplicates = 0
    while True:
        try:
            batch = await sub.fetch(256, timeout=args.idle)
        # nats-py raises its own TimeoutError when nothing came at all, and asyncio's when a
        # batch ended early; both mean the stream is idle.
        except (NatsTimeout, asyncio.TimeoutError):
            if ERRORS:
                raise nats.errors.Error(str(ERRORS[0]))
            break
        for msg in batch:
            messages += 1
            subjects[msg.subject] = subjects.get(msg.subject, 0) + 1
            event = json.loads(msg.data)
            msg_id = (msg.headers or {}).get("Nats-Msg-Id")
            expected_id = event.get("id")
            parts = msg.subject.split(".")
            if parts[:2] == ["orderd", "allocations"]:
                expected_id = f"{expected_id}@{parts[2].replace('%2E', '.')}"
            if msg_id != expected_id:
                problems.append(f"{msg.subject}: Nats-Msg-Id {msg_id!r}, {expected_id!r} expected")
            await msg.ack()
            if (msg.subject, event["id"]) in seen:
                duplicates += 1
                continue
            seen.add((msg.subject, event["id"]))
            data = event["data"]
            if args.lines:
                carried = data.get("lines", [])
                lines[msg.subject] = {
                    "lines": len(carried),
                    "omitted": data.get("lines_omitted", 0),
                    "warehouses": sorted({a["warehouse"] for line in carried
                                          for a in line["allocations"]}),
                }
            if event.get("specversion") != "1.0" or event.get("type") != f"orderd.order.{data['state']}":
                problems.append(f"{event['id']}: not a CloudEvents 1.0 orderd.order.<state> event")
            # An order's changes on the order subjects (one per state) count together; on the
            # allocations stream, those of the first warehouse subject it came on.
            if args.any_sequence and order_subject.setdefault(data["order"], msg.subject) != msg.subject:
                continue
            expected = due.get(data["order"], 1)
            if data["sequence"] != expected and not args.any_sequence:
                problems.append(f"order {data['order']}: sequence {data['sequence']} where {expected} was due")
            due[data["order"]] = data["sequence"] + 1
            orders.setdefault(data["order"], []).append(data["sequence"])
    await nc.close()
    if args.state:
        state["seen"] = sorted(seen)
        with open(args.state + ".new", "w") as f:
            json.dump(state, f)
        os.replace(args.state + ".new", args.state)
    out = {"messages": messages, "duplicates": duplicates, "orders": orders,
           "subjects": subjects, "problems": problems}
    if args.lines:
        out["lines"] = lines
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    asyncio.run(main())
