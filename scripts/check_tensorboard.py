#!/usr/bin/env python3
"""Reads a run's TensorBoard event file with TensorBoard's own loader and checks every scalar
against metrics.jsonl (the same step and value, to float32). Needs `pip install tensorboard`.
Usage: scripts/check_tensorboard.py OUT   (a run trained with --log-format jsonl,tensorboard)"""
import json, math, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

out = sys.argv[1]
ea = EventAccumulator(out, size_guidance={"scalars": 0})
ea.Reload()
want = {}
for e in map(json.loads, open(f"{out}/metrics.jsonl")):
    if "step" not in e:
        continue
    model = f"/model{e['model']}" if "model" in e else ""
    for k, v in e.items():
        if k in ("step", "time", "model", "teacher", "rank", "world") or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v):
            want.setdefault(f"{e['event']}/{k}{model}", []).append((e["step"], v))
tags = ea.Tags()["scalars"]
bad = sorted(set(want) ^ set(tags))
for tag in sorted(set(want) & set(tags)):
    got = [(s.step, s.value) for s in ea.Scalars(tag)]
    if len(got) != len(want[tag]) or any(a != c or abs(b - d) > 1e-6 * max(1.0, abs(d)) for (a, b), (c, d) in zip(got, want[tag])):
        bad.append(tag)
print(f"{len(tags)} scalar tags, {sum(len(v) for v in want.values())} points; mismatched: {bad or 'none'}")
sys.exit(1 if bad else 0)
