#!/usr/bin/env python3
"""Emulates kernels/lstm.cu's persistent layer (lstm_persistent_fwd / _bwd) on the host, thread by
thread and fragment by fragment, and checks it against a plain LSTM in float64: a check of the
kernels' index arithmetic (units per block, the W_hh slices in shared memory, the mma.sync
fragment layout of PTX's m16n8k16, the k-splits and their partial sums, the double buffers) that
needs no GPU. It transcribes the kernels' loops; it cannot check what only a GPU shows (the
barrier's memory ordering, timing), which the gate in tests/gpu.rs does.

  python3 tools/emulate_persistent_lstm.py      (a few seconds; exits 1 on a mismatch)

Emulated: blocks one after another within each phase of a step (the grid barrier separates the
phases, and the double buffers make every phase's reads independent of the order of its blocks);
the 32 lanes of each warp and the fragments of each mma as PTX specifies them (A row-major: a0 rows
g, k 2t..2t+1; a1 rows g + 8; a2, a3 the same at k + 8; B column-major: b0 k 2t..2t+1 of column g,
b1 at k + 8; C: c0, c1 row g, columns 2t, 2t + 1; c2, c3 row g + 8), with g = lane / 4, t = lane % 4.
"""
import math
import random
import struct
import sys

THREADS, WARPS, MAX_NT, KU = 256, 8, 8, 8


def bf16(x):
    """float32 rounding of x, then bf16 round-to-nearest-even."""
    b = struct.unpack("<I", struct.pack("<f", x))[0]
    b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
    return struct.unpack("<f", struct.pack("<I", b))[0]


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def plan(batch, hidden, sms=132, units=None):
    """The fewest units per block (the most blocks) up to `sms` blocks, as ops::lstm::persistent::plan
    (without its shared-memory and occupancy limits); `units` forces a width."""
    ks = max(1, WARPS // ((batch + 15) // 16))
    for u in ([units] if units else range(2, min(16, hidden) + 1, 2)):
        if hidden % u == 0 and hidden // u <= sms:
            return u, hidden // u, ks
    return None


def pl_product(A, rows, K, ws, ncols, ks_count):
    """The kernel's pl_product for one block: part[ks][r][n] (a dict keyed by (ks, r, n))."""
    part = {}
    mtiles, nt = (rows + 15) // 16, ncols // 8
    kchunk = (((K + 15) // 16 + ks_count - 1) // ks_count) * 16
    for warp in range(WARPS):
        for item in range(warp, mtiles * ks_count, WARPS):
            mt, ks = item % mtiles, item // mtiles
            k_lo, k_hi = ks * kchunk, min(K, ks * kchunk + kchunk)
            acc = [[[0.0] * 4 for _ in range(MAX_NT)] for _ in range(32)]
            for kc in range(k_lo, k_hi, 16 * KU):
                for s in range(KU):
                    if kc + 16 * s >= k_hi:
                        break
                    # The fragments of every lane, then the warp's mma on them.
                    frag_a, frag_b = {}, {}
                    for lane in range(32):
                        g, t4 = lane // 4, lane % 4
                        r0, r1 = mt * 16 + g, mt * 16 + g + 8
                        ka, kb = kc + 16 * s + 2 * t4, kc + 16 * s + 2 * t4 + 8

                        def pair(r, k):
                            return (A[r][k], A[r][k + 1]) if (r < rows and k < K) else (0.0, 0.0)

                        frag_a[lane] = [pair(r0, ka), pair(r1, ka), pair(r0, kb), pair(r1, kb)]
                        for n in range(nt):
                            w = ws[n * 8 + g]
                            frag_b[(lane, n)] = ((w[ka], w[ka + 1]), (w[kb], w[kb + 1]))
                    for n in range(nt):
                        # Rebuild the 16 x 16 A tile and the 16 x 8 B tile from the fragments.
                        At = [[None] * 16 for _ in range(16)]
                        Bt = [[None] * 8 for _ in range(16)]
                        for lane in range(32):
                            g, t4 = lane // 4, lane % 4
                            a = frag_a[lane]
                            for (rr, kk), v in [((g, 2 * t4), a[0]), ((g + 8, 2 * t4), a[1]), ((g, 2 * t4 + 8), a[2]), ((g + 8, 2 * t4 + 8), a[3])]:
                                At[rr][kk], At[rr][kk + 1] = v
                            b0, b1 = frag_b[(lane, n)]
                            Bt[2 * t4][g], Bt[2 * t4 + 1][g] = b0
                            Bt[2 * t4 + 8][g], Bt[2 * t4 + 9][g] = b1
                        for lane in range(32):
                            g, t4 = lane // 4, lane % 4
                            for idx, (rr, cc) in enumerate([(g, 2 * t4), (g, 2 * t4 + 1), (g + 8, 2 * t4), (g + 8, 2 * t4 + 1)]):
                                acc[lane][n][idx] += sum(At[rr][q] * Bt[q][cc] for q in range(16))
            for lane in range(32):
                g, t4 = lane // 4, lane % 4
                r0, r1 = mt * 16 + g, mt * 16 + g + 8
                for n in range(nt):
                    col = n * 8 + 2 * t4
                    for r, (i0, i1) in [(r0, (0, 1)), (r1, (2, 3))]:
                        if r < rows:
                            for c, i in [(col, i0), (col + 1, i1)]:
                                key = (ks, r, c)
                                assert key not in part, f"partial sum {key} written twice"
                                part[key] = acc[lane][n][i]
    for ks in range(ks_count):
        for r in range(rows):
            for c in range(ncols):
                assert (ks, r, c) in part, f"partial sum {(ks, r, c)} never written"
    return part


def persistent(T, B, H, x_proj, whh, h0, c0, dy, dh_last, dc_last, units=None):
    U, nblk, ks_count = plan(B, H, units=units)
    G = 4 * H
    act = [row[:] for row in x_proj]  # [T*B][G]
    c_all = [c0[:]] + [[0.0] * (B * H) for _ in range(T)]
    y = [[0.0] * (B * H) for _ in range(T)]
    hb = [[bf16(v) for v in h0], [float("nan")] * (B * H)]
    whh_b = [[bf16(v) for v in row] for row in whh]
    S = (H + 15) // 16 * 16 + 8
    ncols = 4 * U
    slices = []
    for blk in range(nblk):
        j0 = blk * U
        ws = [[0.0] * S for _ in range(ncols)]
        for n in range(ncols):
            col = (n // U) * H + j0 + n % U
            for k in range(H):
                ws[n][k] = whh_b[k][col]
        slices.append(ws)
    for t in range(T):
        A = [hb[t & 1][b * H:(b + 1) * H] for b in range(B)]
        parts = [pl_product(A, B, H, slices[blk], ncols, ks_count) for blk in range(nblk)]
        for blk in range(nblk):
            j0, part = blk * U, parts[blk]
            for idx in range(B * U):
                b, u = idx // U, idx % U
                j = j0 + u
                pre = []
                for q in range(4):
                    s = act[t * B + b][q * H + j]
                    for ks in range(ks_count):
                        s += part[(ks, b, q * U + u)]
                    pre.append(s)
                i, f, gg, o = sig(pre[0]), sig(pre[1]), math.tanh(pre[2]), sig(pre[3])
                for q, v in enumerate([i, f, gg, o]):
                    act[t * B + b][q * H + j] = v
                k = b * H + j
                cv = f * c_all[t][k] + i * gg
                c_all[t + 1][k] = cv
                hv = o * math.tanh(cv)
                y[t][k] = hv
                hb[(t + 1) & 1][k] = bf16(hv)
    # Backward.
    U8 = (U + 7) // 8 * 8
    S2 = (G + 15) // 16 * 16 + 8
    rows_w = []
    for blk in range(nblk):
        j0 = blk * U
        wr = [[0.0] * S2 for _ in range(U8)]
        for u in range(U):
            for g in range(G):
                wr[u][g] = whh_b[j0 + u][g]
        rows_w.append(wr)
    dh, dc = dh_last[:], dc_last[:]
    dgates = [[0.0] * G for _ in range(T * B)]
    dgb = [[float("nan")] * (B * G), [float("nan")] * (B * G)]
    for t in range(T - 1, -1, -1):
        for blk in range(nblk):
            j0 = blk * U
            for idx in range(B * U):
                b, u = idx // U, idx % U
                j = j0 + u
                k = b * H + j
                a = act[t * B + b]
                i, f, g, o = a[j], a[H + j], a[2 * H + j], a[3 * H + j]
                dhv = dh[k] + dy[t][k]
                tc = math.tanh(c_all[t + 1][k])
                dct = dc[k] + dhv * o * (1 - tc * tc)
                d = [dct * g * i * (1 - i), dct * c_all[t][k] * f * (1 - f), dct * i * (1 - g * g), dhv * tc * o * (1 - o)]
                for q in range(4):
                    dgates[t * B + b][q * H + j] = d[q]
                    dgb[t & 1][b * G + q * H + j] = bf16(d[q])
                dc[k] = dct * f
        A = [dgb[t & 1][b * G:(b + 1) * G] for b in range(B)]
        parts = [pl_product(A, B, G, rows_w[blk], U8, ks_count) for blk in range(nblk)]
        for blk in range(nblk):
            for idx in range(B * U):
                b, u = idx // U, idx % U
                dh[b * H + blk * U + u] = sum(parts[blk][(ks, b, u)] for ks in range(ks_count))
    return y, c_all, dh, dc, dgates


def reference(T, B, H, x_proj, whh, h0, c0, dy, dh_last, dc_last):
    """A plain LSTM in float64 (no rounding), forward and backward through time."""
    G = 4 * H
    h, c = h0[:], c0[:]
    acts, cs, ys = [], [c0[:]], []
    for t in range(T):
        hn, cn, at = [0.0] * (B * H), [0.0] * (B * H), []
        for b in range(B):
            pre = [x_proj[t * B + b][q] + sum(h[b * H + k] * whh[k][q] for k in range(H)) for q in range(G)]
            a = [sig(v) for v in pre[:2 * H]] + [math.tanh(v) for v in pre[2 * H:3 * H]] + [sig(v) for v in pre[3 * H:]]
            at.append(a)
            for j in range(H):
                cn[b * H + j] = a[H + j] * c[b * H + j] + a[j] * a[2 * H + j]
                hn[b * H + j] = a[3 * H + j] * math.tanh(cn[b * H + j])
        acts.append(at)
        cs.append(cn)
        ys.append(hn)
        h, c = hn, cn
    dh, dc = dh_last[:], dc_last[:]
    dgates = [[0.0] * G for _ in range(T * B)]
    for t in range(T - 1, -1, -1):
        for b in range(B):
            a = acts[t][b]
            for j in range(H):
                k = b * H + j
                i, f, g, o = a[j], a[H + j], a[2 * H + j], a[3 * H + j]
                dhv = dh[k] + dy[t][k]
                tc = math.tanh(cs[t + 1][k])
                dct = dc[k] + dhv * o * (1 - tc * tc)
                dgates[t * B + b][j] = dct * g * i * (1 - i)
                dgates[t * B + b][H + j] = dct * cs[t][k] * f * (1 - f)
                dgates[t * B + b][2 * H + j] = dct * i * (1 - g * g)
                dgates[t * B + b][3 * H + j] = dhv * tc * o * (1 - o)
                dc[k] = dct * f
        dh = [sum(dgates[t * B + b][q] * whh[j][q] for q in range(G)) for b in range(B) for j in range(H)]
    return ys, cs, dh, dc, dgates


def rel(a, b):
    num = sum((x - y) ** 2 for x, y in zip(a, b))
    den = sum(y * y for y in b)
    return math.sqrt(num / max(den, 1e-300))


def main():
    rnd = random.Random(28)
    ok = True
    # Odd batches (a partial 16-row tile, k split over 8 warps), several blocks, hidden sizes that
    # are not multiples of 16, a batch of more than 8 row tiles; 2 units per block (the fewest),
    # then 6 (3 gate tiles forward, a backward tile of 8 rows with 2 of padding), 8 and 16 (the most).
    for T, B, H, units in [(1, 1, 2, None), (3, 5, 12, None), (2, 17, 20, None), (2, 33, 8, None), (1, 130, 4, None),
                           (2, 9, 24, 6), (2, 21, 32, 8), (1, 40, 32, 16)]:
        G = 4 * H
        k = 1 / math.sqrt(H)
        x_proj = [[rnd.uniform(-1, 1) for _ in range(G)] for _ in range(T * B)]
        whh = [[rnd.uniform(-k, k) for _ in range(G)] for _ in range(H)]
        h0, c0 = [rnd.gauss(0, 0.5) for _ in range(B * H)], [rnd.gauss(0, 0.5) for _ in range(B * H)]
        dy = [[rnd.gauss(0, 1) for _ in range(B * H)] for _ in range(T)]
        dh_last, dc_last = [rnd.gauss(0, 1) for _ in range(B * H)], [rnd.gauss(0, 1) for _ in range(B * H)]
        got = persistent(T, B, H, x_proj, whh, h0, c0, dy, dh_last, dc_last, units)
        want = reference(T, B, H, x_proj, whh, h0, c0, dy, dh_last, dc_last)
        flat = lambda v: [x for row in v for x in row] if v and isinstance(v[0], list) else v  # noqa: E731
        errs = {name: rel(flat(g), flat(w)) for name, g, w in zip(["y", "c", "dh0", "dc0", "dgates"], got, want)}
        # bf16 operands: about 2^-9 relative per product term.
        bad = {n: e for n, e in errs.items() if not e < 1e-2}
        print(f"T{T} B{B} H{H} plan (units, blocks, k-splits) {plan(B, H, units=units)}: " + ", ".join(f"{n} {e:.1e}" for n, e in errs.items()) + (f"  FAILED {bad}" if bad else ""))
        ok &= not bad
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
