#!/usr/bin/env python3
"""Times cuBLAS (through torch.matmul) and PyTorch on the shapes benches/gpu.rs uses, then prints
one table of our kernels beside them. Run on the GPU machine after the bench:

    python3 scripts/gpu_compare.py OURS.jsonl [TORCH_OUT.jsonl]

Each torch figure is the median of CUDA-event timings after warm-up, on random (never zero) data,
as the Rust bench does. Ratio column: torch time / our time (above 1: ours is faster); for matmul,
our TFLOP/s over cuBLAS's.
"""
import json
import sys

import torch
import torch.nn.functional as F

dev = "cuda"
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def time_ms(fn, iters=20, warm=3):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


def main():
    ours = [json.loads(l) for l in open(sys.argv[1])]
    out = {}
    n = 256 << 20
    a = torch.randn(n, device=dev)
    b = torch.empty_like(a)
    out["copy d2d"] = time_ms(lambda: b.copy_(a))
    del a, b
    for row in ours:
        name, shape = row["name"], row["shape"]
        if name.startswith("gemm"):
            dims, t = shape.split()
            m, nn, k = map(int, dims.split("x"))
            dt = torch.bfloat16 if "bf16" in name else torch.float32
            A = torch.randn(k, m, device=dev, dtype=dt).t() if t[0] == "T" else torch.randn(m, k, device=dev, dtype=dt)
            B = torch.randn(nn, k, device=dev, dtype=dt).t() if t[1] == "T" else torch.randn(k, nn, device=dev, dtype=dt)
            it = 10 if m * nn * k > 1 << 36 else 50
            out[name + "|" + shape] = time_ms(lambda: torch.matmul(A, B), iters=it)
            del A, B
    alpha = 0.5
    for rows, v, nt, T in [(4096, 32768, 1, 2.0), (2240, 10000, 1, 2.0), (4096, 32768, 3, 2.0), (4096, 32768, 1, 1.0)]:
        s = (3 * torch.randn(rows, v, device=dev)).requires_grad_()
        ts = [3 * torch.randn(rows, v, device=dev) for _ in range(nt)]
        y = torch.randint(0, v, (rows,), device=dev)

        def step():
            s.grad = None
            p = sum(F.softmax(t / T, dim=-1) for t in ts) / nt
            loss = (1 - alpha) * F.cross_entropy(s, y) + alpha * T * T * F.kl_div(F.log_softmax(s / T, dim=-1), p, reduction="batchmean")
            loss.backward()

        label = "softmax-KL fwd+bwd" + ("" if T == 2.0 else f" T={T:g}")
        out[f"{label}, {nt} teacher(s)|{rows}x{v}"] = time_ms(step)
        del s, ts
    vocab, dim, n = 1_000_000, 128, 262_144
    table = torch.randn(vocab, dim, device=dev)
    ids = torch.randint(0, vocab, (n,), device=dev)
    key = f"{n} ids x {dim}, V={vocab}"
    out["embedding gather|" + key] = time_ms(lambda: F.embedding(ids, table), iters=50)
    dout = torch.randn(n, dim, device=dev)
    dtab = torch.zeros(vocab, dim, device=dev)
    out["embedding backward, atomic|" + key] = time_ms(lambda: dtab.index_add_(0, ids, dout), iters=50)
    tw = table.clone().requires_grad_()

    def emb_bwd():
        tw.grad = None
        F.embedding(ids, tw).backward(dout)

    out["embedding backward, deterministic|" + key] = time_ms(emb_bwd, iters=50)
    bsz, h = 64, 1024
    gates = torch.randn(bsz, 4 * h, device=dev)
    cp = torch.randn(bsz, h, device=dev)

    def cell(g, c):
        i, f, gg, o = g.chunk(4, 1)
        i, f, gg, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(gg), torch.sigmoid(o)
        c2 = f * c + i * gg
        return o * torch.tanh(c2), c2

    out[f"lstm cell fwd|B{bsz} H{h}"] = time_ms(lambda: cell(gates, cp), iters=200)
    gq = gates.clone().requires_grad_()
    cq = cp.clone().requires_grad_()
    hh, cc = cell(gq, cq)
    dh, dc = torch.randn_like(hh), torch.randn_like(cc)
    out[f"lstm cell bwd|B{bsz} H{h}"] = time_ms(lambda: torch.autograd.grad((hh, cc), (gq, cq), (dh, dc), retain_graph=True), iters=200)
    # The whole LSTM layer through cuDNN (torch.nn.LSTM), the shapes of benches/gpu.rs. Our layer
    # multiplies bf16 operands with fp32 accumulation, so the reference is cuDNN in bf16; cuDNN in
    # fp32 with TF32 allowed is printed beside it.
    t_len, inp = 35, 1024
    key = f"T{t_len} B{bsz} I{inp} H{h}"
    for dt, tf32, tag in [(torch.bfloat16, False, ""), (torch.float32, True, " (cuDNN fp32, TF32)")]:
        torch.backends.cudnn.allow_tf32 = tf32
        lstm = torch.nn.LSTM(inp, h).to(device=dev, dtype=dt)
        xs = torch.randn(t_len, bsz, inp, device=dev, dtype=dt, requires_grad=True)
        state = (torch.randn(1, bsz, h, device=dev, dtype=dt), torch.randn(1, bsz, h, device=dev, dtype=dt))
        dy = torch.randn(t_len, bsz, h, device=dev, dtype=dt)
        with torch.no_grad():
            out["lstm layer fwd" + tag + "|" + key] = time_ms(lambda: lstm(xs, state))

        def fwd_bwd():
            y, _ = lstm(xs, state)
            torch.autograd.grad(y, [xs] + list(lstm.parameters()), dy)

        out["lstm layer fwd+bwd" + tag + "|" + key] = time_ms(fwd_bwd)
        del lstm, xs, state, dy
    torch.backends.cudnn.allow_tf32 = False
    n = 64 << 20
    w = torch.randn(n, device=dev, requires_grad=True)
    w.grad = torch.randn(n, device=dev)
    opt = torch.optim.Adam([w], lr=1e-3, fused=True)
    out[f"adam update|{n} params"] = time_ms(opt.step)
    if len(sys.argv) > 2:
        with open(sys.argv[2], "w") as f:
            json.dump(out, f, indent=1)

    copy_ms = next(r["ms"] for r in ours if r["name"] == "copy d2d")
    copy_bw = next(r["bytes"] for r in ours if r["name"] == "copy d2d") / copy_ms / 1e6
    print(f"\nGPU: {torch.cuda.get_device_name()}, torch {torch.__version__}; copy bandwidth ours {copy_bw:.0f} GB/s, "
          f"torch {2 * (256 << 20) * 4 / out['copy d2d'] / 1e6:.0f} GB/s")
    print(f"{'kernel':<38} {'shape':<30} {'ours ms':>9} {'ref ms':>9} {'ours':>12} {'ref':>12} {'ours/ref':>9}  ref is")
    for r in ours:
        # The persistent LSTM layer's rows have the same peer as the step layer's.
        base = r["name"].removesuffix(" persistent")
        key = base + "|" + r["shape"]
        ref = out.get(key, out.get(r["name"]) if r["name"] == "copy d2d" else None)
        if r["flops"]:
            o, t = f"{r['flops'] / r['ms'] / 1e9:.1f} TF/s", (f"{r['flops'] / ref / 1e9:.1f} TF/s" if ref else "")
            ratio = f"{ref / r['ms']:.2f}" if ref else ""
            who = "cuDNN bf16" if r["name"].startswith("lstm layer") else "cuBLAS"
        else:
            o = f"{r['bytes'] / r['ms'] / 1e6:.0f} GB/s ({100 * r['bytes'] / r['ms'] / 1e6 / copy_bw:.0f}%)"
            t = f"{r['bytes'] / ref / 1e6:.0f} GB/s" if ref else ""
            ratio = f"{ref / r['ms']:.2f}" if ref else ""
            who = "PyTorch"
        print(f"{r['name']:<38} {r['shape']:<30} {r['ms']:>9.4f} {(ref or 0):>9.4f} {o:>12} {t:>12} {ratio:>9}  {who}")
        alt = out.get(base + " (cuDNN fp32, TF32)|" + r["shape"])
        if alt:
            print(f"{'':<38} {'':<30} {'':>9} {alt:>9.4f} {'':>12} {r['flops'] / alt / 1e9:>7.1f} TF/s {alt / r['ms']:>9.2f}  cuDNN fp32 (TF32)")


if __name__ == "__main__":
    main()
