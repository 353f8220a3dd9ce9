#!/usr/bin/env python3
"""The overlap measurement within runs: what each exchange costs the steps around it.

Reads step_times.csv (`criteo train --step-times true`) of pairs of runs: one that exchanges every
EVERY steps and its control that publishes once (`--max-publishes 1`, the same teacher passes on
frozen teachers). A publish at the boundary after step p*EVERY starts the background copy, which runs
during step p*EVERY+1 and is settled before that step's update; the fresh snapshot is swapped in at
the next boundary and first used by step p*EVERY+2. So each window of EVERY steps is scored as

    cost = (compute of its steps 1 and 2 - 2 x the median compute of its steps 3..EVERY-1)
           + all its time in exchange calls

i.e. the time the two steps the exchange can touch take beyond their neighbours' in the same
window (which cancels drift in machine speed, the noise that wall time between runs cannot
resolve), plus the direct cost. The control's windows are scored the same way at the same
positions; the difference of the means, over the control's mean compute per window, is the
exchange's cost in percent of compute. As a check that the exchange costs nothing elsewhere, the
rest of each window (steps 3..EVERY, each beyond the same median) is summed the same way; its
difference between the runs should be noise around zero. Windows before FROM (burn-in, the first publish) and
windows that begin at an evaluation (every EVAL steps; evaluation is outside the timed path but
leaves the caches cold) are left out of both.

Usage: scripts/overlap_steps.py EVERY FROM EVAL CO_DIR FROZEN_DIR [CO_DIR FROZEN_DIR ...]
"""
import csv
import statistics
import sys


def load(d):
    with open(f"{d}/step_times.csv") as f:
        return {int(r["step"]): (float(r["compute_s"]), float(r["exchange_s"])) for r in csv.DictReader(f)}


def windows(t, every, start, eval_every):
    """Per window: (cost, compute of the whole window, the rest of the window beyond its median)."""
    out = []
    last = max(t)
    k = start // every
    while (k + 1) * every <= last:
        b = k * every
        k += 1
        if b < start or (eval_every and b % eval_every == 0):
            continue
        steps = range(b + 1, b + every + 1)
        if any(s not in t for s in steps):
            continue
        ref = statistics.median(t[s][0] for s in range(b + 3, b + every))
        cost = t[b + 1][0] + t[b + 2][0] - 2 * ref + sum(t[s][1] for s in steps)
        rest = sum(t[s][0] - ref for s in range(b + 3, b + every + 1))
        out.append((cost, sum(t[s][0] for s in steps), rest))
    return out


def main():
    every, start, eval_every = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    dirs = sys.argv[4:]
    if len(dirs) < 2 or len(dirs) % 2:
        sys.exit(__doc__)
    print(f"{'pair':>4} {'windows':>7} {'co: cost/window ms':>18} {'frozen: cost/window ms':>22} {'compute/window ms':>17} {'exchange cost':>13} {'check: rest co-frozen':>21}")
    shares, rests = [], []
    for i in range(0, len(dirs), 2):
        co = windows(load(dirs[i]), every, start, eval_every)
        fr = windows(load(dirs[i + 1]), every, start, eval_every)
        c = statistics.mean(x[0] for x in co)
        f = statistics.mean(x[0] for x in fr)
        w = statistics.mean(x[1] for x in fr)
        shares.append((c - f) / w)
        rests.append((statistics.mean(x[2] for x in co) - statistics.mean(x[2] for x in fr)) / w)
        print(f"{i // 2 + 1:>4} {len(co):>7} {1e3 * c:>18.3f} {1e3 * f:>22.3f} {1e3 * w:>17.2f} {100 * shares[-1]:>+12.3f}% {100 * rests[-1]:>+20.3f}%")
    print(f"exchange cost, share of compute: median {100 * statistics.median(shares):+.3f}% over {len(shares)} pairs "
          f"(min {100 * min(shares):+.3f}%, max {100 * max(shares):+.3f}%)")
    print(f"check, the rest of the windows, exchanging minus control: median {100 * statistics.median(rests):+.3f}% "
          f"(min {100 * min(rests):+.3f}%, max {100 * max(rests):+.3f}%)")


if __name__ == "__main__":
    main()
