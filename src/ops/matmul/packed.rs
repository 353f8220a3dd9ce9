//! A right-hand matrix packed once for many products with a few rows on the left: the LSTM's
//! recurrent weight, multiplied by the batch's hidden state at every time step (`m` = batch).
//!
//! A general GEMM packs its operands inside every call (matrixmultiply, the CPU GEMM until
//! 2026-11-27, packed the right-hand one on a single thread: for `h [64, 1024] @ W_hh [1024, 4096]`
//! 16 MB copied 35 times per window while the second core waited; the `gemm` crate now behind
//! `gemm_cpu` is still 1.2-1.5x slower than this at those shapes). Here `W_hh` (or its transpose,
//! for the backward pass) is laid out once per layer call in panels of 16 columns (`[k][16]`,
//! zero-padded), and each step runs a 6 x 16 AVX2/FMA register-blocked kernel over the panels, split between
//! threads by panel. Where AVX2 and FMA are missing, [`PackedB::gemm`] falls back to the portable
//! GEMM on the unpacked matrix, with the same result up to summation order.

use super::gemm_cpu;
use crate::ops::SendPtr;

/// Columns per panel (two 8-float vectors).
const NR: usize = 16;
/// Rows per register block: 6 x 2 accumulators + 2 panel vectors + 1 broadcast = 15 of 16 ymm.
const MR: usize = 6;
/// Depth of one pass over a panel: 256 x 16 floats (16 KiB) stays in L1 across the row blocks.
const KC: usize = 256;
/// Rows of A per outer block: 96 x 1024 floats (384 KiB) stay in L2 while every panel passes.
const MC: usize = 96;

/// `B [k, n]` packed for `C[m, n] = A[m, k] @ B + beta * C`.
pub struct PackedB<'b> {
    k: usize,
    n: usize,
    /// Panel p holds columns 16p .. 16p + 16 as `[k][16]`, zero past column n.
    panels: Vec<f32>,
    /// The unpacked matrix (borrowed as given), for the portable fallback.
    plain: Option<(&'b [f32], bool)>,
    /// The most threads a product may use (every core unless [`PackedB::with_threads`] says).
    threads: usize,
}

/// Whether this CPU runs the packed kernel (x86-64 with AVX2 and FMA).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl<'b> PackedB<'b> {
    /// Packs `b`, which is `[k, n]`, or `[n, k]` holding B's transpose when `trans`.
    pub fn new(b: &'b [f32], k: usize, n: usize, trans: bool) -> PackedB<'b> {
        assert!(b.len() >= k * n, "PackedB: {} elements for a {k} x {n} matrix", b.len());
        if !available() {
            return PackedB { k, n, panels: Vec::new(), plain: Some((&b[..k * n], trans)), threads: crate::backend::machine_cores() };
        }
        let np = n.div_ceil(NR);
        let mut panels = vec![0f32; np * k * NR];
        if k == 0 {
            return PackedB { k, n, panels, plain: None, threads: crate::backend::machine_cores() };
        }
        for (p, panel) in panels.chunks_exact_mut(k * NR).enumerate() {
            let (j0, w) = (p * NR, NR.min(n - p * NR));
            if trans {
                for j in 0..w {
                    let col = &b[(j0 + j) * k..(j0 + j + 1) * k];
                    for (kk, &v) in col.iter().enumerate() {
                        panel[kk * NR + j] = v;
                    }
                }
            } else {
                for (kk, row) in panel.chunks_exact_mut(NR).enumerate() {
                    row[..w].copy_from_slice(&b[kk * n + j0..kk * n + j0 + w]);
                }
            }
        }
        PackedB { k, n, panels, plain: None, threads: crate::backend::machine_cores() }
    }

    /// `C = A @ B + beta * C` for `A [m, k]` and `C [m, n]`, both row-major. With `beta == 0` the
    /// old contents of C are never read.
    /// The same packing, its products on at most `threads` threads (at least one).
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    pub fn gemm(&self, m: usize, a: &[f32], beta: f32, c: &mut [f32]) {
        self.gemm_scaled(m, a, 1.0, beta, c)
    }

    /// `C = alpha * A @ B + beta * C` (see [`PackedB::gemm`]).
    pub fn gemm_scaled(&self, m: usize, a: &[f32], alpha: f32, beta: f32, c: &mut [f32]) {
        let (k, n) = (self.k, self.n);
        assert!(a.len() >= m * k && c.len() >= m * n, "PackedB::gemm: buffers too small for {m} x {k} @ {k} x {n}");
        if let Some((b, trans)) = &self.plain {
            gemm_cpu(m, n, k, alpha, a, false, b, *trans, beta, c);
            return;
        }
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            for x in &mut c[..m * n] {
                *x = if beta == 0.0 { 0.0 } else { beta * *x };
            }
            return;
        }
        let np = n.div_ceil(NR);
        // Threads only for products worth a thread's start (about 8 MFLOP, ~0.1 ms here, against
        // ~20 us). Many rows: each thread takes whole row blocks; few: a range of panels. Either
        // way the threads write disjoint parts of C.
        let cores = self.threads;
        let by_rows = m >= 2 * MC * cores;
        let units = if by_rows { m.div_ceil(MC) } else { np.div_ceil(2) };
        let threads = if m * n * k < 1 << 22 { 1 } else { cores.min(units).max(1) };
        let task = |t: usize| -> (usize, usize, usize, usize) {
            if by_rows {
                let per = m.div_ceil(MC).div_ceil(threads) * MC;
                ((t * per).min(m), ((t + 1) * per).min(m), 0, np)
            } else {
                let per = np.div_ceil(threads);
                (0, m, (t * per).min(np), ((t + 1) * per).min(np))
            }
        };
        let cp = SendPtr(c.as_mut_ptr());
        std::thread::scope(|s| {
            for t in 1..threads {
                let (r0, r1, p0, p1) = task(t);
                if r0 < r1 && p0 < p1 {
                    // SAFETY: `available()` held when the panels were packed; bounds asserted
                    // above; each thread writes only its own rows or panels of C.
                    s.spawn(move || unsafe { self.run(a, alpha, beta, cp.get(), r0, r1, p0, p1) });
                }
            }
            let (r0, r1, p0, p1) = task(0);
            // SAFETY: as above; this thread takes the first part.
            unsafe { self.run(a, alpha, beta, cp.get(), r0, r1, p0, p1) };
        });
    }

    /// Rows `r0 .. r1` and panels `p0 .. p1` of `C = alpha * A @ B + beta * C`: for each block of
    /// MC rows (kept in L2), each panel, each KC-deep slice of it (kept in L1), each MR-row block.
    ///
    /// # Safety
    /// AVX2 and FMA are present; `c` points to `m * n` floats (m >= r1) of which only these rows and
    /// the columns of these panels are touched.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run(&self, a: &[f32], alpha: f32, beta: f32, c: *mut f32, r0: usize, r1: usize, p0: usize, p1: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            let (k, n) = (self.k, self.n);
            let mut ib = r0;
            while ib < r1 {
                let ie = (ib + MC).min(r1);
                for p in p0..p1 {
                    let (j0, w) = (p * NR, NR.min(n - p * NR));
                    let panel = self.panels.as_ptr().add(p * k * NR);
                    let mut k0 = 0;
                    while k0 < k {
                        let kc = KC.min(k - k0);
                        // The first slice of k applies the caller's beta; later ones accumulate.
                        let b = if k0 == 0 { beta } else { 1.0 };
                        let mut i0 = ib;
                        while i0 < ie {
                            let mr = MR.min(ie - i0);
                            let ap = a.as_ptr().add(i0 * k + k0);
                            let bp = panel.add(k0 * NR);
                            let cp = c.add(i0 * n + j0);
                            match mr {
                                6 => avx::block::<6>(kc, ap, k, bp, cp, n, w, alpha, b),
                                5 => avx::block::<5>(kc, ap, k, bp, cp, n, w, alpha, b),
                                4 => avx::block::<4>(kc, ap, k, bp, cp, n, w, alpha, b),
                                3 => avx::block::<3>(kc, ap, k, bp, cp, n, w, alpha, b),
                                2 => avx::block::<2>(kc, ap, k, bp, cp, n, w, alpha, b),
                                _ => avx::block::<1>(kc, ap, k, bp, cp, n, w, alpha, b),
                            }
                            i0 += mr;
                        }
                        k0 += kc;
                    }
                }
                ib = ie;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (a, alpha, beta, c, r0, r1, p0, p1);
            unreachable!("the packed kernel is x86-64 only; `plain` is used elsewhere");
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use super::NR;
    use std::arch::x86_64::*;

    /// `C[R, w] = alpha * A[R, kc] @ panel[kc, 16][:, :w] + beta * C` for one register block: A rows `lda`
    /// apart, C rows `ldc` apart, `w <= 16` valid columns (the panel is zero past them).
    ///
    /// # Safety
    /// AVX2 and FMA are present and every pointer covers the ranges described.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn block<const R: usize>(
        kc: usize,
        a: *const f32,
        lda: usize,
        panel: *const f32,
        c: *mut f32,
        ldc: usize,
        w: usize,
        alpha: f32,
        beta: f32,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for p in 0..kc {
            let b0 = _mm256_loadu_ps(panel.add(p * NR));
            let b1 = _mm256_loadu_ps(panel.add(p * NR + 8));
            for (r, accr) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*a.add(r * lda + p));
                accr[0] = _mm256_fmadd_ps(av, b0, accr[0]);
                accr[1] = _mm256_fmadd_ps(av, b1, accr[1]);
            }
        }
        let al = _mm256_set1_ps(alpha);
        for (r, accr) in acc.iter().enumerate() {
            let cr = c.add(r * ldc);
            if w == NR {
                let (mut v0, mut v1) = (_mm256_mul_ps(al, accr[0]), _mm256_mul_ps(al, accr[1]));
                if beta != 0.0 {
                    let bv = _mm256_set1_ps(beta);
                    v0 = _mm256_fmadd_ps(bv, _mm256_loadu_ps(cr), v0);
                    v1 = _mm256_fmadd_ps(bv, _mm256_loadu_ps(cr.add(8)), v1);
                }
                _mm256_storeu_ps(cr, v0);
                _mm256_storeu_ps(cr.add(8), v1);
            } else {
                let mut tmp = [0f32; NR];
                _mm256_storeu_ps(tmp.as_mut_ptr(), _mm256_mul_ps(al, accr[0]));
                _mm256_storeu_ps(tmp.as_mut_ptr().add(8), _mm256_mul_ps(al, accr[1]));
                for (j, &t) in tmp.iter().enumerate().take(w) {
                    let o = cr.add(j);
                    *o = if beta == 0.0 { t } else { t + beta * *o };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    #[allow(clippy::too_many_arguments)]
    fn reference(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], trans: bool, beta: f64, c0: &[f32]) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for p in 0..k {
                    let bv = if trans { b[j * k + p] } else { b[p * n + j] };
                    s += a[i * k + p] as f64 * bv as f64;
                }
                c[i * n + j] = s + beta * c0[i * n + j] as f64;
            }
        }
        c
    }

    #[test]
    fn packed_products_match_f64_reference_at_odd_sizes() {
        let mut rng = Rng::new(5);
        for &(m, n, k) in &[(1, 1, 1), (6, 16, 8), (7, 17, 300), (64, 4096 / 16, 1024 / 8), (13, 35, 513), (5, 3, 257), (64, 100, 0)] {
            for trans in [false, true] {
                for beta in [0.0f32, 1.0, -0.5] {
                    let a = rng.normal_vec(m * k, 1.0);
                    let b = rng.normal_vec(k * n, 1.0);
                    let c0 = rng.normal_vec(m * n, 1.0);
                    let packed = PackedB::new(&b, k, n, trans);
                    // beta 0: poisoned output, every element must be written
                    let mut c = if beta == 0.0 { vec![f32::NAN; m * n] } else { c0.clone() };
                    packed.gemm(m, &a, beta, &mut c);
                    let want = reference(m, n, k, &a, &b, trans, beta as f64, &c0);
                    for (idx, (x, y)) in c.iter().zip(&want).enumerate() {
                        let tol = 1e-5 * (k as f64).sqrt() * (1.0 + y.abs());
                        assert!((*x as f64 - y).abs() <= tol, "m{m} n{n} k{k} trans {trans} beta {beta} at {idx}: {x} vs {y}");
                    }
                }
            }
        }
    }

    #[test]
    fn scaled_products_across_row_blocks_and_thread_splits_match_gemm_cpu() {
        // m from one register block to several row blocks per thread (the by-rows split)
        let mut rng = Rng::new(7);
        for &(m, n, k) in &[(1, 1, 1), (7, 13, 5), (97, 33, 300), (200, 70, 64), (1000, 40, 150)] {
            for tb in [false, true] {
                let a = rng.normal_vec(m * k, 1.0);
                let b = rng.normal_vec(k * n, 1.0);
                let c0 = rng.normal_vec(m * n, 1.0);
                let (mut want, mut got) = (c0.clone(), c0.clone());
                gemm_cpu(m, n, k, 0.5, &a, false, &b, tb, -2.0, &mut want);
                PackedB::new(&b, k, n, tb).gemm_scaled(m, &a, 0.5, -2.0, &mut got);
                for (x, y) in got.iter().zip(&want) {
                    assert!((x - y).abs() <= 1e-4 * (k as f32).sqrt() * (1.0 + y.abs()), "m{m} n{n} k{k} tb{tb}: {x} vs {y}");
                }
            }
        }
    }

    #[test]
    fn packed_and_portable_gemm_agree() {
        // The LSTM's two uses: gates += h @ W_hh, and dh = dgates @ W_hh^T.
        let mut rng = Rng::new(6);
        let (batch, hidden) = (9, 40);
        let w = rng.normal_vec(hidden * 4 * hidden, 0.1);
        let h = rng.normal_vec(batch * hidden, 1.0);
        let g = rng.normal_vec(batch * 4 * hidden, 1.0);
        let mut want = rng.normal_vec(batch * 4 * hidden, 1.0);
        let mut got = want.clone();
        gemm_cpu(batch, 4 * hidden, hidden, 1.0, &h, false, &w, false, 1.0, &mut want);
        PackedB::new(&w, hidden, 4 * hidden, false).gemm(batch, &h, 1.0, &mut got);
        assert!(got.iter().zip(&want).all(|(x, y)| (x - y).abs() <= 1e-4 * (1.0 + y.abs())));
        let (mut want, mut got) = (vec![0f32; batch * hidden], vec![f32::NAN; batch * hidden]);
        gemm_cpu(batch, hidden, 4 * hidden, 1.0, &g, false, &w, true, 0.0, &mut want);
        PackedB::new(&w, 4 * hidden, hidden, true).gemm(batch, &g, 0.0, &mut got);
        assert!(got.iter().zip(&want).all(|(x, y)| (x - y).abs() <= 1e-4 * (1.0 + y.abs())));
    }
}
