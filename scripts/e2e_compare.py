#!/usr/bin/env python3
"""End-to-end training steps: codistill against the same models written in PyTorch, on the CPU
(scripts/cpu_compare.sh) or on the GPU (scripts/gpu_remote.sh, DEVICE=cuda).

Each row trains the same model on the same shapes with the same optimizer, one after the other in
this process's machine state; on the CPU with the same thread count (torch.set_num_threads = the
cores codistill uses), on the GPU with TF32 allowed in PyTorch's matmuls and cuDNN (its LSTM's
default) against codistill's bf16 tensor-core operands:
  lm-issue7   2-layer LSTM, 1024 hidden and embedding, vocabulary 10k, batch 64, 35 steps (issue 7)
  lm-brown    1-layer LSTM, 256 hidden and embedding, vocabulary 14,115, batch 32, 35 steps
              (the Brown experiments' model)
  criteo      26 hashed fields x 65,536 buckets x 8 + 13 dense (+13 missing flags), MLP 128,64,
              batch 512, lazy (sparse) Adam on the table, Adam on the rest
PyTorch gets dropout 0.2 like codistill's default, TBPTT with the state carried and detached,
clipping at 5 (LM), BCE-with-logits (Criteo). codistill's figure is its trainer's own training
throughput (result.json: tokens_per_s or train_rows_per_s, which excludes data preparation and
evaluation), on its synthetic data of the same vocabulary or field layout; on the GPU the mean of
the logged intervals after the first (so the first step's kernel loading is not counted, as the
warm-up steps are not on the PyTorch side). On the CPU the LM rows run again in bf16 (BF16=0
skips them): codistill's --cpu-bf16 against PyTorch's bf16 autocast. On the GPU each model is
also timed against the strongest PyTorch (issue 28): bf16 autocast (cuDNN's bf16 LSTM, bf16
matmuls), and bf16 autocast under torch.compile where it compiles (a failure is printed as the
row, not hidden; the compile happens in the warm-up steps, outside the timing). PERSISTENT=1 adds
codistill with CODISTILL_LSTM=persistent (scripts/gpu_remote.sh sets it where the persistent
layer passed its gate in the same call).

Usage: [DEVICE=cuda] [PERSISTENT=1] scripts/e2e_compare.py BIN OUTDIR  (scripts/cpu_compare.sh installs torch)
"""
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn as nn

BIN, OUT = sys.argv[1], sys.argv[2]
DEVICE = os.environ.get("DEVICE", "cpu")
GPU = DEVICE != "cpu"
THREADS = os.cpu_count()
torch.set_num_threads(THREADS)
torch.manual_seed(0)
if GPU:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def sync():
    if GPU:
        torch.cuda.synchronize()


def steady(out, key):
    """codistill's throughput: result.json on the CPU; on the GPU the logged intervals after the first."""
    if not GPU:
        return json.load(open(os.path.join(out, "result.json")))[key]
    vals = [json.loads(l)[key] for l in open(os.path.join(out, "metrics.jsonl")) if '"event":"train"' in l]
    vals = vals[1:] or vals
    return sum(vals) / len(vals)


class LM(nn.Module):
    def __init__(self, vocab, emb, hidden, layers, dropout):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden, layers, dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, x, state):
        h, state = self.lstm(self.drop(self.emb(x)), state)
        return self.out(self.drop(h)), state


def torch_lm(vocab, emb, hidden, layers, batch, bptt, steps, warmup=2, bf16=False, compiled=False):
    m = LM(vocab, emb, hidden, layers, 0.2).to(DEVICE)
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    fwd = torch.compile(m) if compiled else m
    data = torch.randint(0, vocab, (bptt + 1, batch), device=DEVICE)
    state = None
    t = None
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            t = time.perf_counter()
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=bf16):
            logits, state = fwd(data[:-1], state)
            state = tuple(s.detach() for s in state)
            loss = nn.functional.cross_entropy(logits.reshape(-1, vocab), data[1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(m.parameters(), 5.0)
        opt.step()
        loss.item()  # codistill reads its loss every step too
    sync()
    return steps * batch * bptt / (time.perf_counter() - t)


def ours_lm(name, vocab, emb, hidden, layers, batch, bptt, steps, bf16=False, env=None):
    out = os.path.join(OUT, name)
    cmd = [BIN, "lm", "train", "--device", DEVICE, "--synthetic-vocab", str(vocab), "--synthetic-tokens", "300000",
           "--emb-dim", str(emb), "--hidden", str(hidden), "--layers", str(layers), "--batch", str(batch),
           "--bptt", str(bptt), "--steps", str(steps), "--dropout", "0.2", "--clip", "5", "--eval-every", "100000",
           "--eval-tokens", "2000", "--log-every", str(max(steps // 5, 1) if GPU else 100000),
           "--checkpoint-every", "100000", "--out", out, "--cache", os.path.join(OUT, "cache")]
    cmd += ["--cpu-bf16", "true"] if bf16 else []
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=open(out + ".log", "w"), env={**os.environ, **(env or {})})
    return steady(out, "tokens_per_s")


class Ctr(nn.Module):
    def __init__(self, buckets=65536, dim=8, fields=26, dense=26, widths=(128, 64)):
        super().__init__()
        self.emb = nn.Embedding(fields * buckets, dim, sparse=True)
        self.dense = nn.Linear(dense, widths[0], bias=False)
        self.l1 = nn.Linear(fields * dim, widths[0])
        self.l2 = nn.Linear(widths[0], widths[1])
        self.l3 = nn.Linear(widths[1], 1)

    def forward(self, ids, dense):
        e = self.emb(ids).reshape(ids.shape[0], -1)
        h = torch.relu(self.l1(e) + self.dense(dense))
        return self.l3(torch.relu(self.l2(h))).squeeze(1)


def torch_criteo(batch=512, steps=200, warmup=5, bf16=False, compiled=False):
    m = Ctr().to(DEVICE)
    fwd = torch.compile(m) if compiled else m
    sparse = torch.optim.SparseAdam([m.emb.weight], lr=2e-3)
    rest = torch.optim.Adam([p for n, p in m.named_parameters() if n != "emb.weight"], lr=2e-3)
    offsets = torch.arange(26) * 65536
    t = None
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            t = time.perf_counter()
        # batches come from the host, as codistill's do
        ids = (torch.randint(0, 65536, (batch, 26)) + offsets).to(DEVICE)
        dense = torch.randn(batch, 26).to(DEVICE)
        y = torch.randint(0, 2, (batch,)).float().to(DEVICE)
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.binary_cross_entropy_with_logits(fwd(ids, dense).float(), y)
        sparse.zero_grad(set_to_none=True)
        rest.zero_grad(set_to_none=True)
        loss.backward()
        sparse.step()
        rest.step()
        loss.item()
    sync()
    return steps * batch / (time.perf_counter() - t)


def ours_criteo():
    out = os.path.join(OUT, "criteo")
    cmd = [BIN, "criteo", "train", "--device", DEVICE, "--synthetic-rows", "300000", "--out", out,
           "--cache", os.path.join(OUT, "cache"), "--eval-rows", "1000"] + (["--log-every", "50"] if GPU else [])
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=open(out + ".log", "w"))
    return steady(out, "rows_per_s" if GPU else "train_rows_per_s")


def peers(run, label):
    """The PyTorch rows of one model: as before (fp32, TF32 on the GPU), then on the GPU bf16
    autocast and bf16 autocast compiled; a configuration that fails is a row saying so."""
    out = [(label, run(bf16=False, compiled=False))]
    if GPU:
        for tag, kw in [("bf16 autocast", dict(bf16=True, compiled=False)), ("bf16 autocast, compiled", dict(bf16=True, compiled=True))]:
            try:
                out.append((tag, run(**kw)))
            except Exception as e:  # noqa: BLE001 - the row reports it
                out.append((f"{tag}: failed ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''})", None))
    return out


os.makedirs(OUT, exist_ok=True)
rows = []
BASE = "fp32, TF32" if GPU else "fp32"
LMS = {"lm-issue7": (10000, 1024, 1024, 2, 64, 35, 100 if GPU else 12),
       "lm-brown": (14115, 256, 256, 1, 32, 35, 200 if GPU else 40)}
for name, (v, e, h, l, b, t, steps) in LMS.items():
    ours = ours_lm(name, v, e, h, l, b, t, steps)
    for peer, theirs in peers(lambda **kw: torch_lm(v, e, h, l, b, t, steps, **kw), BASE):
        rows.append((name, "tokens/s", ours, theirs, peer))
    if GPU and os.environ.get("PERSISTENT") == "1":
        ours_p = ours_lm(name + "-persistent", v, e, h, l, b, t, steps, env={"CODISTILL_LSTM": "persistent"})
        rows.append((name + " (persistent LSTM)", "tokens/s", ours_p, ours, "codistill, step LSTM"))
if not GPU and os.environ.get("BF16", "1") != "0":
    # Both in bf16 on the CPU: codistill --cpu-bf16 (bf16 operands, f32 accumulation) against
    # PyTorch's bf16 autocast (oneDNN's bf16 kernels for the matmuls and the LSTM).
    for name, (v, e, h, l, b, t, steps) in LMS.items():
        ours = ours_lm(name + "-bf16", v, e, h, l, b, t, steps, bf16=True)
        theirs = torch_lm(v, e, h, l, b, t, steps, bf16=True)
        rows.append((name + "-bf16", "tokens/s", ours, theirs, "bf16 autocast"))
ours = ours_criteo()
for peer, theirs in peers(lambda **kw: torch_criteo(steps=1000 if GPU else 200, **kw), BASE):
    rows.append(("criteo", "rows/s", ours, theirs, peer))
where = f"GPU: {torch.cuda.get_device_name()}" if GPU else f"CPU: {THREADS} threads"
print(f"{where}, torch {torch.__version__}")
print(f"{'model':<28} {'unit':<9} {'codistill':>11} {'peer':>11} {'ratio':>6}  peer is")
for name, unit, a, b, peer in rows:
    print(f"{name:<28} {unit:<9} {a:>11.0f} {(b or 0):>11.0f} {(a / b if b else float('nan')):>6.2f}  {peer}")
