#!/usr/bin/env python3
"""Rebuilds exported models from docs/pytorch.md's formulas in pure Python (no torch, no numpy)
and prints their loss, for comparison with codistill's own evaluation.

  check_pytorch_export.py lm EXPORT TEXT        mean cross-entropy of TEXT as one stream
  check_pytorch_export.py criteo EXPORT TSV     mean log-loss of the rows of TSV
"""
import json
import math
import struct
import sys


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    tensors = {}
    for name, t in header.items():
        assert t["dtype"] == "F32", (name, t["dtype"])
        a, b = t["data_offsets"]
        flat = struct.unpack("<%df" % ((b - a) // 4), data[base + a:base + b])
        tensors[name] = (t["shape"], flat)
    return tensors, meta


def rows(t):
    shape, flat = t
    c = shape[1]
    return [flat[i * c:(i + 1) * c] for i in range(shape[0])]


def matvec(w, x):
    return [sum(a * b for a, b in zip(r, x)) for r in w]


def sigmoid(z):
    return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))


def lm(export, text):
    t, meta = read_safetensors(export)
    lines = meta["vocab"].split("\n")
    tokenizer, words = lines[0], [w for w in lines[1:]]
    if words and words[-1] == "":
        words = words[:-1]
    index = {w: i for i, w in enumerate(words)}
    if tokenizer == "byte":
        ids = list(open(text, "rb").read())
    else:
        ids = []
        for line in open(text, encoding="utf-8"):
            ws = line.split()
            ids += [index.get(w, index["<unk>"]) for w in ws]
            if ws:
                ids.append(index["<eos>"])
    emb = rows(t["embedding.weight"])
    L = sum(1 for k in t if k.startswith("lstm.weight_ih_l"))
    layers = [(rows(t[f"lstm.weight_ih_l{k}"]), rows(t[f"lstm.weight_hh_l{k}"]), t[f"lstm.bias_ih_l{k}"][1], t[f"lstm.bias_hh_l{k}"][1]) for k in range(L)]
    H = len(layers[0][1][0])
    out_w, out_b = rows(t["output.weight"]), t["output.bias"][1]
    h = [[0.0] * H for _ in range(L)]
    c = [[0.0] * H for _ in range(L)]
    total = 0.0
    for pos in range(len(ids) - 1):
        x = emb[ids[pos]]
        for k, (wih, whh, bih, bhh) in enumerate(layers):
            g = [a + b + p + q for a, b, p, q in zip(matvec(wih, x), matvec(whh, h[k]), bih, bhh)]
            i, f, gg, o = g[:H], g[H:2 * H], g[2 * H:3 * H], g[3 * H:]
            c[k] = [sigmoid(fv) * cv + sigmoid(iv) * math.tanh(gv) for fv, cv, iv, gv in zip(f, c[k], i, gg)]
            h[k] = [sigmoid(ov) * math.tanh(cv) for ov, cv in zip(o, c[k])]
            x = h[k]
        z = [a + b for a, b in zip(matvec(out_w, x), out_b)]
        m = max(z)
        total += m + math.log(sum(math.exp(v - m) for v in z)) - z[ids[pos + 1]]
    return total / (len(ids) - 1)


M64 = (1 << 64) - 1


def bucket(f, c, buckets):
    v = (1 << 40) if c is None else c
    z = ((v ^ ((f + 1) << 48)) + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return (z ^ (z >> 31)) % buckets


def criteo(export, tsv):
    t, meta = read_safetensors(export)
    emb = rows(t["embedding.weight"])
    buckets = len(emb) // 26
    dense = rows(t["dense.weight"])
    n = sum(1 for k in t if k.startswith("mlp.") and k.endswith(".weight"))
    mlp = [(rows(t[f"mlp.{i}.weight"]), t[f"mlp.{i}.bias"][1]) for i in range(n)]
    total, count = 0.0, 0
    for line in open(tsv, encoding="utf-8"):
        f = line.rstrip("\n").split("\t")
        y = int(f[0])
        ints = [int(v) if v else None for v in f[1:14]]
        f32 = lambda v: struct.unpack("<f", struct.pack("<f", v))[0]
        x = [0.0 if v is None else f32(math.copysign(math.log1p(abs(v)), v)) for v in ints] + [1.0 if v is None else 0.0 for v in ints]
        cats = [int(v, 16) if v else None for v in f[14:40]]
        e = sum((list(emb[k * buckets + bucket(k, cv, buckets)]) for k, cv in enumerate(cats)), [])
        w0, b0 = mlp[0]
        hdn = [a + b + d for a, b, d in zip(matvec(w0, e), b0, matvec(dense, x))]
        for w, b in mlp[1:]:
            hdn = [a + bb for a, bb in zip(matvec(w, [max(v, 0.0) for v in hdn]), b)]
        p = min(max(sigmoid(hdn[0]), 1e-15), 1 - 1e-15)
        total -= math.log(p) if y else math.log(1 - p)
        count += 1
    return total / count


if __name__ == "__main__":
    kind, export, data = sys.argv[1:4]
    print(json.dumps({"loss": lm(export, data) if kind == "lm" else criteo(export, data)}))
