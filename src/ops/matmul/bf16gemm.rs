//! Matrix products with bf16 operands and f32 accumulation on the CPU: the GPU's default numerics
//! (`MatmulPrecision::Bf16`), at up to twice the f32 rate where the CPU has AVX-512 BF16.
//!
//! `VDPBF16PS` multiplies 16 pairs of bf16 values and adds both products of each pair to an f32
//! lane: 32 multiply-adds per instruction, and on the 2-core AMD EPYC (Zen 4) CI machine it issues
//! once a cycle, 1.8x the f32 FMA rate of two 8-wide `vfmadd` a cycle (measured in isolation). So
//! the operands are rounded to bf16 (round to nearest even, as the GPU's `__float2bfloat16_rn`) and
//! packed in pairs along k: B in panels of [`NR`] columns (`[k/2][NR][2]`), A in blocks of [`MR`]
//! rows (`[k/2][MR]` pairs), and an 8 x 48 register-blocked kernel keeps its 24 accumulators in
//! registers over slices of 512 k (BLIS's loop order: a slice of A's rows in L2, of a panel in L1).
//!
//! Where the CPU lacks AVX-512 BF16 the same product is formed from the rounded operands on the
//! f32 kernel ([`super::gemm_cpu`]): the same numbers up to summation order, and slower
//! than f32 (the rounded copies: 0.4x at the click model's small products), so there it is only
//! for matching the GPU's numerics.
//! The native conversion and dot product take denormals (magnitudes below 1.2e-38) as zero, which
//! the fallback does not; nothing else differs.

use super::gemm_cpu;
use crate::ops::SendPtr;
use half::bf16;

/// Rows per register block.
pub const MR: usize = 8;
/// Columns per panel: three 16-float vectors.
pub const NR: usize = 48;
/// Pairs of k per pass over the panels (512 values of k).
const KC_PAIRS: usize = 256;
/// Register blocks of rows per unit of work (96 rows).
const MC_BLOCKS: usize = 12;
/// Products of fewer multiply-adds than this run on the calling thread.
const SERIAL_MAX: usize = 1 << 22;

/// Whether this CPU has the native kernel (x86-64 with AVX-512F and AVX-512 BF16).
/// `CODISTILL_CPU_BF16_NATIVE=0` forces the fallback (read once).
pub fn available() -> bool {
    static HAVE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAVE.get_or_init(|| detect() && std::env::var("CODISTILL_CPU_BF16_NATIVE").as_deref() != Ok("0"))
}

fn detect() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `x` rounded to the nearest bf16 (ties to even), as f32.
#[inline]
pub fn round_bf16(x: f32) -> f32 {
    bf16::from_f32(x).to_f32()
}

/// `B [k, n]` rounded to bf16 and packed for products `C = alpha * op(A) @ B + beta * C`: made once
/// and used for many left-hand sides (the LSTM's recurrent weight, at every time step).
pub struct Bf16B {
    k: usize,
    n: usize,
    layout: Layout,
    /// The most threads a product may use.
    threads: usize,
}

enum Layout {
    /// Panel p holds columns `NR p ..` as `[k/2][NR]` pairs of bf16 (the even k in the low half),
    /// zero past column n and past k.
    Native(Vec<u32>),
    /// The rounded matrix in its own layout (`[n, k]` when transposed), for the f32 kernel.
    Rounded(Vec<f32>, bool),
}

impl Bf16B {
    /// Packs `b`, which is `[k, n]`, or `[n, k]` holding B's transpose when `trans`.
    pub fn new(b: &[f32], k: usize, n: usize, trans: bool) -> Bf16B {
        Self::new_on(crate::backend::machine_cores(), b, k, n, trans)
    }

    /// [`Bf16B::new`] packing, and later multiplying, on at most `threads` threads.
    pub fn new_on(threads: usize, b: &[f32], k: usize, n: usize, trans: bool) -> Bf16B {
        Self::packed_for(b, k, n, trans, available(), threads.max(1))
    }

    /// [`Bf16B::new`] for the native kernel or, when `native` is false, the f32 fallback.
    fn packed_for(b: &[f32], k: usize, n: usize, trans: bool, native: bool, threads: usize) -> Bf16B {
        assert!(b.len() >= k * n, "Bf16B: {} elements for a {k} x {n} matrix", b.len());
        if !native {
            return Bf16B { k, n, layout: Layout::Rounded(b[..k * n].iter().map(|&x| round_bf16(x)).collect(), trans), threads };
        }
        let (kp, np) = (k.div_ceil(2), n.div_ceil(NR));
        let per = kp * NR;
        let mut panels = pool::take(np * per);
        // Every element is written (padding with zeros), so a reused buffer's old contents never
        // matter.
        let pack = |p: usize, panel: &mut [u32]| {
            let (j0, w) = (p * NR, NR.min(n - p * NR));
            // SAFETY: `available()` held; the reads stay inside b's k x n elements (asserted) and
            // the writes inside this panel's kp x NR pairs.
            unsafe {
                if trans {
                    // Column j of B is row j of the stored matrix: its pairs are adjacent.
                    for j in 0..w {
                        avx512::pack_adjacent(b.as_ptr().add((j0 + j) * k), k, panel.as_mut_ptr().add(j), NR);
                    }
                    if w < NR {
                        for q in 0..kp {
                            panel[q * NR + w..(q + 1) * NR].fill(0);
                        }
                    }
                } else {
                    avx512::pack_rows(b.as_ptr().add(j0), n, k, w, panel.as_mut_ptr(), NR);
                }
            }
        };
        if per > 0 {
            let threads = if k * n < 1 << 18 { 1 } else { threads.min(np) };
            crate::par::rows(&mut panels[..np * per], per, threads, pack);
        }
        Bf16B { k, n, layout: Layout::Native(panels), threads }
    }

    /// Rows of B (the product's depth).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns of B.
    pub fn n(&self) -> usize {
        self.n
    }

    /// `C = alpha * op(A) @ B + beta * C`: `a` is `[m, k]`, or `[k, m]` when `trans_a`; `c` is
    /// `[m, n]`. With `beta == 0` the old contents of `c` are never read. Each output element is
    /// summed by one thread in a fixed order (register-block sums over slices of 512 k, added in
    /// turn), so the result does not depend on the thread count.
    pub fn gemm(&self, m: usize, alpha: f32, a: &[f32], trans_a: bool, beta: f32, c: &mut [f32]) {
        let (k, n) = (self.k, self.n);
        assert!(a.len() >= m * k && c.len() >= m * n, "Bf16B::gemm: buffers too small for {m} x {k} @ {k} x {n}");
        if m == 0 || n == 0 {
            return;
        }
        let panels = match &self.layout {
            Layout::Rounded(b, trans_b) => {
                let ar: Vec<f32> = a[..m * k].iter().map(|&x| round_bf16(x)).collect();
                gemm_cpu(m, n, k, alpha, &ar, trans_a, b, *trans_b, beta, c);
                return;
            }
            Layout::Native(p) => p,
        };
        if k == 0 {
            for x in &mut c[..m * n] {
                *x = if beta == 0.0 { 0.0 } else { beta * *x };
            }
            return;
        }
        let threads = if m * n * k < SERIAL_MAX { 1 } else { self.threads };
        let apack = pack_a(m, k, a, trans_a, threads);
        let kp = k.div_ceil(2);
        let (mb, np) = (m.div_ceil(MR), n.div_ceil(NR));
        // Rows per block: the block's packed A (MC x k bf16) and one panel of B stay in L2.
        let row_blocks = mb.div_ceil(MC_BLOCKS);
        // Work units: (row block, group of panels), enough for every thread to have several.
        let groups = if row_blocks >= 4 * threads { 1 } else { np.min((4 * threads).div_ceil(row_blocks)) };
        let per_group = np.div_ceil(groups);
        let units = row_blocks * groups;
        let cp = SendPtr(c.as_mut_ptr());
        let run = |t: usize, nthreads: usize| {
            let mut u = t;
            while u < units {
                let (rb, g) = (u / groups, u % groups);
                let (b0, b1) = (rb * MC_BLOCKS, ((rb + 1) * MC_BLOCKS).min(mb));
                let (p0, p1) = ((g * per_group).min(np), ((g + 1) * per_group).min(np));
                // Slices of KC_PAIRS pairs: the row block's A (96 rows, 96 KiB) stays in L2 across
                // the panels, each panel's slice (48 KiB) across the row block. The first slice
                // applies the caller's beta; later ones add to C.
                let mut q0 = 0;
                while q0 < kp {
                    let kq = KC_PAIRS.min(kp - q0);
                    let beta_here = if q0 == 0 { beta } else { 1.0 };
                    for p in p0..p1 {
                        let (j0, w) = (p * NR, NR.min(n - p * NR));
                        let bp = &panels[(p * kp + q0) * NR..(p * kp + q0 + kq) * NR];
                        for blk in b0..b1 {
                            let (i0, rows) = (blk * MR, MR.min(m - blk * MR));
                            let ap = &apack[(blk * kp + q0) * MR..(blk * kp + q0 + kq) * MR];
                            // SAFETY: `available()` held when B was packed; the slices hold kq
                            // pairs of MR rows and NR columns; the block writes rows i0 .. i0 +
                            // rows and columns j0 .. j0 + w of C (m x n, asserted above), which no
                            // other unit writes.
                            unsafe { kernel(kq, ap.as_ptr(), bp.as_ptr(), cp.get().add(i0 * n + j0), n, rows, w, alpha, beta_here) };
                        }
                    }
                    q0 += kq;
                }
                u += nthreads;
            }
        };
        let threads = threads.min(units).max(1);
        if threads == 1 {
            run(0, 1);
        } else {
            std::thread::scope(|s| {
                for t in 1..threads {
                    s.spawn(move || run(t, threads));
                }
                run(0, threads);
            });
        }
        pool::give(apack);
    }
}

/// `C = alpha * op(A) @ op(B) + beta * C` with both operands rounded to bf16 and f32 accumulation;
/// the arguments as [`gemm_cpu`]'s.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16_cpu(m: usize, n: usize, k: usize, alpha: f32, a: &[f32], trans_a: bool, b: &[f32], trans_b: bool, beta: f32, c: &mut [f32]) {
    gemm_bf16_cpu_on(crate::backend::machine_cores(), m, n, k, alpha, a, trans_a, b, trans_b, beta, c)
}

/// [`gemm_bf16_cpu`] on at most `threads` threads.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16_cpu_on(
    threads: usize,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    trans_a: bool,
    b: &[f32],
    trans_b: bool,
    beta: f32,
    c: &mut [f32],
) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n, "gemm_bf16_cpu buffers too small");
    if m == 0 || n == 0 {
        return;
    }
    Bf16B::new_on(threads, b, k, n, trans_b).gemm(m, alpha, a, trans_a, beta, c)
}

/// op(A) `[m, k]` rounded and packed for the native kernel: block b holds rows `MR b ..` as
/// `[k/2][MR]` pairs (the low half the even k), zero past row m and past k.
fn pack_a(m: usize, k: usize, a: &[f32], trans: bool, threads: usize) -> Vec<u32> {
    let kp = k.div_ceil(2);
    let per = kp * MR;
    let len = m.div_ceil(MR) * per;
    let mut out = pool::take(len);
    let pack = |blk: usize, dst: &mut [u32]| {
        let (i0, rows) = (blk * MR, MR.min(m - blk * MR));
        // SAFETY: `available()` held (the caller packs A only for the native kernel); the reads stay
        // inside a's m x k elements (asserted by the caller) and the writes inside this block.
        unsafe {
            if trans {
                // op(A)'s row i is column i of the stored [k, m] matrix: pairs come from two rows.
                avx512::pack_rows(a.as_ptr().add(i0), m, k, rows, dst.as_mut_ptr(), MR);
            } else {
                for r in 0..rows {
                    avx512::pack_adjacent(a.as_ptr().add((i0 + r) * k), k, dst.as_mut_ptr().add(r), MR);
                }
                if rows < MR {
                    for q in 0..kp {
                        dst[q * MR + rows..(q + 1) * MR].fill(0);
                    }
                }
            }
        }
    };
    let threads = if m * k < 1 << 18 { 1 } else { threads.min(m.div_ceil(MR)) };
    if per > 0 {
        crate::par::rows(&mut out[..len], per, threads, pack);
    }
    out
}

/// Packing buffers kept for reuse: a training step packs the same shapes every time, and a fresh
/// buffer costs a zeroing pass (and, past glibc's mmap threshold, page faults) over tens of MB (the
/// issue-7 model's output-layer gradient packs 45 MB). The packers write every element, so a
/// reused buffer's old contents never reach a result.
mod pool {
    use std::sync::Mutex;

    /// Buffers kept at most: the two operands of a product and the LSTM's packed weight, twice.
    const KEEP: usize = 6;
    static FREE: Mutex<Vec<Vec<u32>>> = Mutex::new(Vec::new());

    /// A buffer of at least `len` elements (contents unspecified), the smallest that fits.
    pub(super) fn take(len: usize) -> Vec<u32> {
        let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
        let best = free.iter().enumerate().filter(|(_, v)| v.len() >= len).min_by_key(|(_, v)| v.len()).map(|(i, _)| i);
        match best {
            Some(i) => free.swap_remove(i),
            None => {
                // None fits: grow the largest kept one (its old part is not rewritten) or make one.
                let largest = free.iter().enumerate().max_by_key(|(_, v)| v.len()).map(|(i, _)| i);
                let mut v = largest.map(|i| free.swap_remove(i)).unwrap_or_default();
                drop(free);
                v.resize(len, 0);
                v
            }
        }
    }

    /// Gives a buffer back; past `KEEP` the smallest is freed.
    pub(super) fn give(v: Vec<u32>) {
        if v.is_empty() {
            return;
        }
        let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
        free.push(v);
        if free.len() > KEEP {
            let smallest = free.iter().enumerate().min_by_key(|(_, v)| v.len()).map(|(i, _)| i).unwrap_or(0);
            free.swap_remove(smallest);
        }
    }
}

impl Drop for Bf16B {
    fn drop(&mut self) {
        if let Layout::Native(v) = &mut self.layout {
            pool::give(std::mem::take(v));
        }
    }
}

/// One register block: `C[rows, w] = alpha * Apanel @ Bpanel + beta * C` over `kp` pairs.
///
/// # Safety
/// AVX-512F and AVX-512 BF16 are present; `a` holds `kp * MR` pairs, `b` `kp * NR` pairs; `c` covers `rows <= MR` rows `ldc` apart of `w <= NR` columns.
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(kp: usize, a: *const u32, b: *const u32, c: *mut f32, ldc: usize, rows: usize, w: usize, alpha: f32, beta: f32) {
    #[cfg(target_arch = "x86_64")]
    avx512::block(kp, a, b, c, ldc, rows, w, alpha, beta);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (kp, a, b, c, ldc, rows, w, alpha, beta);
        unreachable!("the native bf16 kernel is x86-64 only");
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// Mask of the first `n` (at most 16) lanes.
    #[inline]
    fn lanes(n: usize) -> __mmask16 {
        if n >= 16 {
            0xFFFF
        } else {
            (1u16 << n) - 1
        }
    }

    /// Pairs of one vector: the 16 f32 of `lo` rounded to bf16 in the low halves, those of `hi` in
    /// the high halves.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn pairs(lo: __m512, hi: __m512) -> __m512i {
        let l = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(lo)));
        let h = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(hi)));
        _mm512_or_si512(l, _mm512_slli_epi32::<16>(h))
    }

    /// Packs a run whose pairs are adjacent in memory: `src[0 .. k]` rounded, pair q (elements 2q,
    /// 2q + 1; zero past k) written to `dst[q * stride]`.
    ///
    /// # Safety
    /// AVX-512F and AVX-512 BF16 are present; `src` holds k floats and `dst` covers
    /// `(k.div_ceil(2) - 1) * stride + 1` pairs.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn pack_adjacent(src: *const f32, k: usize, dst: *mut u32, stride: usize) {
        let even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
        let odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
        let mut buf = [0u32; 16];
        let mut p = 0;
        while p < k {
            let take = (k - p).min(32);
            let v0 = _mm512_maskz_loadu_ps(lanes(take), src.add(p));
            let v1 = _mm512_maskz_loadu_ps(lanes(take.saturating_sub(16)), src.add(p + 16.min(take)));
            // Even elements of the 32 to the low halves, odd to the high.
            let lo = _mm512_permutex2var_ps(v0, even, v1);
            let hi = _mm512_permutex2var_ps(v0, odd, v1);
            _mm512_storeu_si512(buf.as_mut_ptr() as *mut _, pairs(lo, hi));
            for (i, &x) in buf.iter().enumerate().take(take.div_ceil(2)) {
                *dst.add((p / 2 + i) * stride) = x;
            }
            p += 32;
        }
    }

    /// Packs `w` columns of a row-major matrix whose pairs sit in consecutive rows: element
    /// `(kk, j)` is `src[kk * ld + j]` for `kk < k`, `j < w`; pair q of column j (rows 2q, 2q + 1;
    /// zero past k) is written to `dst[q * stride + j]`, and zeros to columns w .. stride.
    ///
    /// # Safety
    /// AVX-512F and AVX-512 BF16 are present; `src` covers k rows of w columns `ld` apart; `dst`
    /// covers `k.div_ceil(2) * stride` pairs, `w <= stride`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn pack_rows(src: *const f32, ld: usize, k: usize, w: usize, dst: *mut u32, stride: usize) {
        for q in 0..k.div_ceil(2) {
            let (r0, r1) = (src.add(2 * q * ld), src.add((2 * q + 1).min(k - 1) * ld));
            let second = 2 * q + 1 < k;
            // The whole row of `stride` pairs is written: zeros past column w.
            let mut j = 0;
            while j < stride {
                let m = lanes(w.saturating_sub(j));
                let lo = _mm512_maskz_loadu_ps(m, r0.add(j));
                let hi = if second { _mm512_maskz_loadu_ps(m, r1.add(j)) } else { _mm512_setzero_ps() };
                _mm512_mask_storeu_epi32(dst.add(q * stride + j) as *mut _, lanes(stride - j), pairs(lo, hi));
                j += 16;
            }
        }
    }

    /// See [`super::kernel`].
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn block(kp: usize, a: *const u32, b: *const u32, c: *mut f32, ldc: usize, rows: usize, w: usize, alpha: f32, beta: f32) {
        let mut acc = [[_mm512_setzero_ps(); 3]; MR];
        for q in 0..kp {
            let bq = b.add(q * NR);
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bq as *const _));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bq.add(16) as *const _));
            let b2: __m512bh = std::mem::transmute(_mm512_loadu_si512(bq.add(32) as *const _));
            let aq = a.add(q * MR);
            for (r, accr) in acc.iter_mut().enumerate() {
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*aq.add(r) as i32));
                accr[0] = _mm512_dpbf16_ps(accr[0], av, b0);
                accr[1] = _mm512_dpbf16_ps(accr[1], av, b1);
                accr[2] = _mm512_dpbf16_ps(accr[2], av, b2);
            }
        }
        let al = _mm512_set1_ps(alpha);
        let bv = _mm512_set1_ps(beta);
        for (r, accr) in acc.iter().enumerate().take(rows) {
            let cr = c.add(r * ldc);
            for (v, &x) in accr.iter().enumerate() {
                let j = v * 16;
                if j >= w {
                    break;
                }
                let mask: __mmask16 = if w - j >= 16 { 0xFFFF } else { (1u16 << (w - j)) - 1 };
                let mut y = _mm512_mul_ps(al, x);
                if beta != 0.0 {
                    y = _mm512_fmadd_ps(bv, _mm512_maskz_loadu_ps(mask, cr.add(j)), y);
                }
                _mm512_mask_storeu_ps(cr.add(j), mask, y);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    /// f64 product of the bf16-rounded operands, and the sum of |a||b| per element (the scale of
    /// the f32 accumulation's rounding).
    fn reference(m: usize, n: usize, k: usize, a: &[f32], ta: bool, b: &[f32], tb: bool) -> (Vec<f64>, Vec<f64>) {
        let mut out = vec![0f64; m * n];
        let mut mag = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let x = round_bf16(if ta { a[p * m + i] } else { a[i * k + p] }) as f64;
                    let y = round_bf16(if tb { b[j * k + p] } else { b[p * n + j] }) as f64;
                    out[i * n + j] += x * y;
                    mag[i * n + j] += (x * y).abs();
                }
            }
        }
        (out, mag)
    }

    #[allow(clippy::too_many_arguments)]
    fn check(m: usize, n: usize, k: usize, ta: bool, tb: bool, alpha: f32, beta: f32, rng: &mut Rng) {
        let a: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
        let b: Vec<f32> = (0..k * n).map(|_| rng.normal() as f32).collect();
        let c0: Vec<f32> = (0..m * n).map(|_| rng.normal() as f32).collect();
        let mut c = if beta == 0.0 { vec![f32::NAN; m * n] } else { c0.clone() };
        gemm_bf16_cpu(m, n, k, alpha, &a, ta, &b, tb, beta, &mut c);
        let (r, mag) = reference(m, n, k, &a, ta, &b, tb);
        for i in 0..m * n {
            let want = alpha as f64 * r[i] + if beta == 0.0 { 0.0 } else { beta as f64 * c0[i] as f64 };
            let tol = 1e-5 * (alpha.abs() as f64 * mag[i] + (beta * c0[i]).abs() as f64) + 1e-6;
            assert!((c[i] as f64 - want).abs() <= tol, "{m}x{n}x{k} ta {ta} tb {tb} alpha {alpha} beta {beta}: element {i} is {} against {want}", c[i]);
        }
    }

    #[test]
    fn odd_sizes_and_transposes_match_f64_on_rounded_operands() {
        let mut rng = Rng::new(71);
        for &(m, n, k) in &[(1, 1, 1), (3, 5, 7), (8, 48, 2), (9, 49, 3), (17, 97, 33), (13, 50, 64), (2, 130, 1), (40, 7, 101)] {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                check(m, n, k, ta, tb, 1.0, 0.0, &mut rng);
            }
        }
        check(21, 53, 19, false, true, -0.5, 2.0, &mut rng);
        check(21, 53, 19, true, false, 1.5, 1.0, &mut rng);
    }

    #[test]
    fn threaded_products_match_f64_and_a_packed_b_serves_many_left_sides() {
        let mut rng = Rng::new(72);
        // Above the serial limit (4M multiply-adds): split over row blocks and panel groups.
        check(200, 300, 90, false, true, 1.0, 0.0, &mut rng);
        check(70, 1000, 64, true, false, 0.5, 1.0, &mut rng);
        let (k, n) = (37, 101);
        let b: Vec<f32> = (0..k * n).map(|_| rng.normal() as f32).collect();
        let packed = Bf16B::new(&b, k, n, false);
        for m in [1, 8, 11] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
            let mut c = vec![f32::NAN; m * n];
            packed.gemm(m, 1.0, &a, false, 0.0, &mut c);
            let mut want = vec![0f32; m * n];
            gemm_bf16_cpu(m, n, k, 1.0, &a, false, &b, false, 0.0, &mut want);
            assert_eq!(c, want, "m {m}");
        }
    }

    #[test]
    fn the_f32_fallback_forms_the_same_product() {
        let mut rng = Rng::new(73);
        for &(m, n, k, ta, tb) in &[(9, 49, 3, false, false), (17, 97, 33, true, true), (5, 60, 20, false, true)] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.normal() as f32).collect();
            let mut c = vec![f32::NAN; m * n];
            Bf16B::packed_for(&b, k, n, tb, false, 2).gemm(m, 1.0, &a, ta, 0.0, &mut c);
            let (r, mag) = reference(m, n, k, &a, ta, &b, tb);
            for i in 0..m * n {
                assert!((c[i] as f64 - r[i]).abs() <= 1e-5 * mag[i] + 1e-6, "{m}x{n}x{k}: element {i} is {} against {}", c[i], r[i]);
            }
        }
    }

    #[test]
    fn reused_buffers_holding_nans_never_reach_a_result() {
        let mut rng = Rng::new(74);
        for round in 0..3 {
            // Fill the pool's buffers with NaN pairs, then take them for products whose padding
            // (last panel's columns, last block's rows, odd k) sits where the NaNs were.
            let big = vec![f32::NAN; 200 * 300];
            let mut sink = vec![0f32; 200 * 200];
            gemm_bf16_cpu(200, 200, 300, 1.0, &big, false, &big, true, 0.0, &mut sink);
            gemm_bf16_cpu(200, 200, 300, 1.0, &big, true, &big, false, 0.0, &mut sink);
            check(13 + round, 50 + round, 33, round == 1, round == 2, 1.0, 0.0, &mut rng);
            check(9, 97, 7 + 2 * round, round != 1, round != 2, 1.0, 0.0, &mut rng);
        }
    }

    #[test]
    fn empty_depth_scales_the_output() {
        let mut c = vec![f32::NAN, f32::NAN];
        gemm_bf16_cpu(1, 2, 0, 1.0, &[], false, &[], false, 0.0, &mut c);
        assert_eq!(c, [0.0, 0.0]);
        let mut c = vec![1.0, -2.0];
        gemm_bf16_cpu(2, 1, 0, 1.0, &[], false, &[], false, 3.0, &mut c);
        assert_eq!(c, [3.0, -6.0]);
    }

    /// The products round their operands as the conversion does (ties to even), on the native
    /// kernel where the CPU has one and on the f32 fallback: `A [m, 1] @ [1]` is A rounded.
    #[test]
    fn products_round_operands_to_nearest_even() {
        let bits = [0x3F80_8000u32, 0x3F81_8000, 0xBF81_8000, 0x3F80_8001, 0x3F80_7FFF, 0x4049_0FDB];
        let a: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
        let want: Vec<f32> = a.iter().map(|&x| bf16::from_f32(x).to_f32()).collect();
        assert_eq!(want[..3], [1.0, f32::from_bits(0x3F82_0000), f32::from_bits(0xBF82_0000)], "half's ties are not to even");
        let mut c = vec![f32::NAN; a.len()];
        gemm_bf16_cpu(a.len(), 1, 1, 1.0, &a, false, &[1.0], false, 0.0, &mut c);
        assert_eq!(c, want, "A rounded on the way into the product");
        let mut c = vec![f32::NAN; a.len()];
        gemm_bf16_cpu(1, a.len(), 1, 1.0, &[1.0], false, &a, false, 0.0, &mut c);
        assert_eq!(c, want, "B rounded on the way into the product");
        let mut c = vec![f32::NAN; a.len()];
        Bf16B::packed_for(&a, 1, a.len(), false, false, 1).gemm(1, 1.0, &[1.0], false, 0.0, &mut c);
        assert_eq!(c, want, "the f32 fallback's rounding of B");
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to the even one, 1.
        assert_eq!(round_bf16(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(round_bf16(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
        assert!(round_bf16(f32::NAN).is_nan());
    }
}
