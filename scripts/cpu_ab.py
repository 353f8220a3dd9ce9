#!/usr/bin/env python3
"""Alternated end-to-end CPU runs of two codistill binaries: OLD in f32, NEW in f32, NEW with
--cpu-bf16; the trainer's own throughput from result.json, the shapes of scripts/e2e_compare.py.
Usage: scripts/cpu_ab.py ROUNDS OLD_BIN NEW_BIN [lm-issue7 lm-brown criteo]  (OUT=dir, default runs/cpu-ab)"""
import json, os, subprocess, sys, statistics, time
OLD, NEW = sys.argv[2], sys.argv[3]
OUT = os.environ.get("OUT", "runs/cpu-ab")
def lm(bin, name, v, e, h, l, b, steps, bf16):
    out = f"{OUT}/{name}"
    cmd = [bin, "lm", "train", "--device", "cpu", "--synthetic-vocab", str(v), "--synthetic-tokens", "300000",
           "--emb-dim", str(e), "--hidden", str(h), "--layers", str(l), "--batch", str(b), "--bptt", "35",
           "--steps", str(steps), "--dropout", "0.2", "--clip", "5", "--eval-every", "100000", "--eval-tokens", "2000",
           "--log-every", "100000", "--checkpoint-every", "100000", "--out", out, "--cache", f"{OUT}/cache"]
    if bf16: cmd += ["--cpu-bf16", "true"]
    t = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = json.load(open(out + "/result.json"))
    return r["tokens_per_s"], time.time() - t, r["best_valid_loss"]
def ctr(bin, bf16):
    out = f"{OUT}/criteo"
    cmd = [bin, "criteo", "train", "--device", "cpu", "--synthetic-rows", "300000", "--out", out, "--cache", f"{OUT}/cache", "--eval-rows", "1000"]
    if bf16: cmd += ["--cpu-bf16", "true"]
    t = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = json.load(open(out + "/result.json"))
    return r["train_rows_per_s"], time.time() - t, r.get("best_valid_loss")
models = {"lm-issue7": lambda bin, bf: lm(bin, "i7", 10000, 1024, 1024, 2, 64, 12, bf),
          "lm-brown": lambda bin, bf: lm(bin, "br", 14115, 256, 256, 1, 32, 40, bf),
          "criteo": ctr}
which = sys.argv[4:] or list(models)
for name in which:
    res = {"old f32": [], "new f32": [], "new bf16": []}
    for rnd in range(int(sys.argv[1])):
        order = [("old f32", OLD, False), ("new f32", NEW, False), ("new bf16", NEW, True)]
        if rnd % 2: order.reverse()
        for key, bin, bf in order:
            res[key].append(models[name](bin, bf))
    base = statistics.median(x[0] for x in res["old f32"])
    for key, v in res.items():
        med = statistics.median(x[0] for x in v)
        print(f"{name:<10} {key:<9} median {med:>10.0f}/s ({med / base:.2f}x old)  runs {[round(x[0]) for x in v]}  wall {[round(x[1], 1) for x in v]}  valid {[None if x[2] is None else round(x[2], 4) for x in v]}", flush=True)
