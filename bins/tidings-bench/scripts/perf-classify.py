#!/usr/bin/env python3
"""Splits the samples of `perf record --call-graph dwarf` profiles of the
gateway by what they were doing: each sample counts once, for the first
category (in the order below) one of its frames names.

    perf record -F 499 --call-graph dwarf,16384 -o storm.data -p <gateway pid> -- sleep 1.5
    bins/tidings-bench/scripts/perf-classify.py storm.data [more.data ...]
"""
import collections
import subprocess
import sys

CATEGORIES = [
    ("presence", "presence"),
    ("history", "tidings_history"),
    ("redis client (fred)", "fred::"),
    ("control hooks", "tidings_control"),
    ("identity", "tidings_identity"),
    ("routing", "tidings_routing"),
    ("session open", "open_with_id"),
    ("socket writes (welcome)", "poll_write_vectored"),
    ("ws open", "tidings_transport::ws::open"),
    ("ws serve", "WsSession"),
    ("admission", "tidings_admission"),
    ("upgrade/http server", "hyper::proto"),
    ("upgrade/http", "hyper"),
    ("bridge task", "tidings_bridge::bridge"),
    ("hub/runners", "tidings_bridge"),
    ("accept", "accept"),
    ("tracing", "tracing"),
    ("tokio scheduler", "tokio::"),
]


def samples(path):
    out = subprocess.run(
        ["perf", "script", "-i", path, "-F", "comm,tid,ip,sym"],
        capture_output=True, text=True, check=True,
    ).stdout
    current = []
    for line in out.split("\n"):
        if line.strip():
            current.append(line)
        elif current:
            yield "\n".join(current)
            current = []
    if current:
        yield "\n".join(current)


for path in sys.argv[1:]:
    counts = collections.Counter()
    total = 0
    for text in samples(path):
        total += 1
        name = next((n for n, key in CATEGORIES if key in text), "other")
        counts[name] += 1
    print(f"{path}: {total} samples")
    for name, n in counts.most_common():
        print(f"  {name:22s} {n:6d} {100 * n / max(total, 1):5.1f} %")
