//! Every CUDA kernel against its CPU twin, on random inputs (a fixed seed by default, printed;
//! `CODISTILL_TEST_SEED=random` for a fresh one), odd sizes included, with device outputs poisoned
//! (NaN) before each run. Without a GPU every test is reported as ignored (tests/common/harness.rs);
//! with `REQUIRE_GPU=1` a missing GPU fails the binary instead.
//!
//! Bounds against a float64 reference: fp32 kernels 1e-5 relative (norm), bf16 operands 1e-3 on
//! operands already rounded to bf16 (so the bound measures the kernel, not the rounding).

use codistill::cuda::{self, Gpu, GpuBuf, MatmulKernel};

/// The launchers under test, from their op folders.
mod k {
    pub use codistill::ops::dropout::cuda::*;
    pub use codistill::ops::elementwise::cuda::*;
    pub use codistill::ops::embedding::cuda::*;
    pub use codistill::ops::lstm::cuda::{lstm_cell_bwd, lstm_cell_fwd};
    pub use codistill::ops::matmul::cuda::*;
    pub use codistill::ops::optim::cuda::*;
    pub use codistill::ops::reduce::cuda::*;
    pub use codistill::ops::softmax_kl::cuda::*;
}
use codistill::ops::elementwise::{add_row_bias_cpu, binary_cpu, unary_cpu, Binary, Unary};
use codistill::ops::{dropout::dropout_cpu, embedding, lstm, optim, reduce, softmax_kl};
use codistill::{DistillParams, Rng};
use half::bf16;
use std::sync::Arc;

#[allow(dead_code)] // this binary uses only the harness
mod common;

/// The GPU. The harness runs these tests only where one is found, so a test that gets here
/// without one was asked for by hand (`--ignored`) and fails rather than passing unrun.
fn gpu() -> Option<Arc<Gpu>> {
    Some(cuda::gpu(0).unwrap_or_else(|e| panic!("no usable GPU: {e}")))
}

/// The test's random inputs (its seed printed by the harness's `seed`).
fn rng(test: &str) -> Rng {
    Rng::new(common::harness::seed(test))
}

fn poisoned(g: &Arc<Gpu>, n: usize) -> GpuBuf<f32> {
    let mut b = g.alloc::<f32>(n).unwrap();
    b.memset(0xFF).unwrap();
    b
}

/// ||a - b|| / ||b|| against an f64 reference; NaN anywhere fails.
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    assert!(got.iter().all(|x| x.is_finite()), "non-finite output (unwritten or overflowed element)");
    let num: f64 = got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).powi(2)).sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    (num / den.max(1e-300)).sqrt()
}

fn to64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

fn gemm_ref(m: usize, n: usize, kk: usize, a: &[f32], ta: bool, b: &[f32], tb: bool) -> Vec<f64> {
    let mut c = vec![0f64; m * n];
    for i in 0..m {
        for p in 0..kk {
            let av = if ta { a[p * m + i] } else { a[i * kk + p] } as f64;
            for j in 0..n {
                let bv = if tb { b[j * kk + p] } else { b[p * n + j] } as f64;
                c[i * n + j] += av * bv;
            }
        }
    }
    c
}

/// Whether a product is small enough for this run: `CODISTILL_TEST_MAX_MNK` caps m n k (set by
/// scripts/gpu_remote.sh under compute-sanitizer, which slows kernels and the f64 reference by
/// orders of magnitude; the odd and tile-edge sizes, all small, still run). Unset: every size.
fn within_cap(m: usize, n: usize, k: usize) -> bool {
    let cap = std::env::var("CODISTILL_TEST_MAX_MNK").ok().and_then(|s| s.parse::<usize>().ok()).unwrap_or(usize::MAX);
    let ok = m * n * k <= cap;
    if !ok {
        eprintln!("{m}x{n}x{k} left out: over CODISTILL_TEST_MAX_MNK = {cap}");
    }
    ok
}

const SHAPES: &[(usize, usize, usize)] = &[(1, 1, 1), (7, 13, 5), (64, 64, 64), (127, 129, 65), (130, 260, 96), (20, 2600, 650), (256, 200, 328)];

fn gemm_f32_matches_f64_reference() {
    let Some(g) = gpu() else { return };
    let mut r = rng("gemm_f32");
    for &(m, n, kk) in SHAPES.iter().filter(|&&(m, n, k)| within_cap(m, n, k)) {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let a = r.normal_vec(m * kk, 1.0);
            let b = r.normal_vec(kk * n, 1.0);
            let c0 = r.normal_vec(m * n, 1.0);
            let (da, db) = (g.upload(&a).unwrap(), g.upload(&b).unwrap());
            let mut dc = poisoned(&g, m * n);
            k::gemm_f32(m, n, kk, 1.0, &da, ta, &db, tb, 0.0, &mut dc).unwrap();
            let want = gemm_ref(m, n, kk, &a, ta, &b, tb);
            let e = rel_err(&dc.download().unwrap(), &want);
            assert!(e < 1e-5, "gemm_f32 {m}x{n}x{kk} ta={ta} tb={tb}: rel err {e:.2e}");
            // alpha and beta: C = 0.5 AB - 2 C0
            let mut dc = g.upload(&c0).unwrap();
            k::gemm_f32(m, n, kk, 0.5, &da, ta, &db, tb, -2.0, &mut dc).unwrap();
            let want: Vec<f64> = want.iter().zip(&c0).map(|(w, &c)| 0.5 * w - 2.0 * c as f64).collect();
            let e = rel_err(&dc.download().unwrap(), &want);
            assert!(e < 1e-5, "gemm_f32 alpha/beta {m}x{n}x{kk} ta={ta} tb={tb}: rel err {e:.2e}");
        }
    }
}

fn round_bf16(v: Vec<f32>) -> (Vec<bf16>, Vec<f32>) {
    let h: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
    let f = h.iter().map(|x| x.to_f32()).collect();
    (h, f)
}

/// Whether a kernel that failed its gate is to be left out: `CODISTILL_TEST_SKIP_KERNELS` lists
/// them (`wgmma`, `wgmma-tma`; set by scripts/gpu_remote.sh after its gate, which has already
/// reported the failure), so that the suite's other tests do not fail on them again (a trapped
/// kernel also ends the process's CUDA context, which would fail every test after it). The `auto`
/// variants go with the kernel they use for large products (`Auto` with `wgmma-tma`).
/// The GPU for a test of one matmul kernel: None (with the reason on stderr) where there is no GPU,
/// where the kernel needs compute capability 9.0 and this GPU lacks it, or where
/// `CODISTILL_TEST_SKIP_KERNELS` leaves it out.
fn gpu_for(kernel: MatmulKernel) -> Option<Arc<Gpu>> {
    let g = gpu()?;
    if kernel != MatmulKernel::MmaSync && !g.has_wgmma() {
        eprintln!("this GPU is not compute capability 9.0: {kernel:?} is not tested here");
        return None;
    }
    if skipped(kernel) {
        return None;
    }
    Some(g)
}

fn skipped(kernel: MatmulKernel) -> bool {
    let key = match kernel {
        MatmulKernel::Wgmma | MatmulKernel::AutoWgmma => "wgmma",
        MatmulKernel::WgmmaTma | MatmulKernel::AutoWgmmaTma | MatmulKernel::Auto => "wgmma-tma",
        _ => return false,
    };
    let skip = std::env::var("CODISTILL_TEST_SKIP_KERNELS").unwrap_or_default().split(',').any(|s| s.trim() == key);
    if skip {
        eprintln!("{kernel:?} left out: CODISTILL_TEST_SKIP_KERNELS names {key} (it failed its gate)");
    }
    skip
}

/// The tensor-core kernels this GPU runs: mma.sync everywhere, wgmma on compute capability 9.0.
fn tensor_core_kernels(g: &Gpu) -> Vec<MatmulKernel> {
    if g.has_wgmma() {
        [MatmulKernel::MmaSync, MatmulKernel::Wgmma, MatmulKernel::WgmmaTma].into_iter().filter(|&k| !skipped(k)).collect()
    } else {
        eprintln!("this GPU is not compute capability 9.0: the wgmma kernel is not tested here");
        vec![MatmulKernel::MmaSync]
    }
}

/// One tensor-core kernel against the f64 product of bf16-rounded operands, every orientation,
/// odd sizes, alpha and beta; a kernel this GPU cannot run is skipped with the reason.
fn check_gemm_bf16(kernel: MatmulKernel) {
    let Some(g) = gpu_for(kernel) else { return };
    let mut r = rng(&format!("gemm_bf16 {kernel:?}"));
    let mut shapes = SHAPES.to_vec();
    shapes.extend([(128, 128, 32), (300, 512, 1024), (64, 2600, 650), (129, 136, 8), (513, 257, 72), (1, 300, 64), (200, 3, 136)]);
    // The TMA kernel's MN-major operands (m and n multiples of 8) over partial tiles in m, n and k.
    shapes.push((392, 520, 136));
    // split-K on mma.sync (few output tiles, long k): the LSTM's per-step backward product, and
    // an uneven last split
    shapes.extend([(64, 1024, 4096), (33, 100, 3000)]);
    for &(m, n, kk) in shapes.iter().filter(|&&(m, n, k)| within_cap(m, n, k)) {
        if kernel != MatmulKernel::MmaSync && kk % 8 != 0 {
            // wgmma takes inner dimensions in whole 16-byte chunks; the launcher says so.
            let (da, db) = (g.alloc::<bf16>(m * kk).unwrap(), g.alloc::<bf16>(kk * n).unwrap());
            let mut dc = poisoned(&g, m * n);
            let e = k::gemm_bf16_with(kernel, m, n, kk, 1.0, &da, false, &db, false, 0.0, &mut dc).unwrap_err();
            assert!(e.to_string().contains("multiple of 8"), "{e}");
            continue;
        }
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let (ah, af) = round_bf16(r.normal_vec(m * kk, 1.0));
            let (bh, bf) = round_bf16(r.normal_vec(kk * n, 1.0));
            let (da, db) = (g.upload(&ah).unwrap(), g.upload(&bh).unwrap());
            let mut dc = poisoned(&g, m * n);
            k::gemm_bf16_with(kernel, m, n, kk, 1.0, &da, ta, &db, tb, 0.0, &mut dc).unwrap();
            let want = gemm_ref(m, n, kk, &af, ta, &bf, tb);
            let e = rel_err(&dc.download().unwrap(), &want);
            assert!(e < 1e-3, "gemm_bf16 {kernel:?} {m}x{n}x{kk} ta={ta} tb={tb}: rel err {e:.2e}");
            if m * n * kk < 5_000_000 {
                let c0 = r.normal_vec(m * n, 1.0);
                let mut dc = g.upload(&c0).unwrap();
                k::gemm_bf16_with(kernel, m, n, kk, 2.0, &da, ta, &db, tb, 1.0, &mut dc).unwrap();
                let want: Vec<f64> = want.iter().zip(&c0).map(|(w, &c)| 2.0 * w + c as f64).collect();
                let e = rel_err(&dc.download().unwrap(), &want);
                assert!(e < 1e-3, "gemm_bf16 {kernel:?} accumulate {m}x{n}x{kk} ta={ta} tb={tb}: rel err {e:.2e}");
            }
        }
    }
}

fn gemm_bf16_mma_sync_matches_f64_reference() {
    check_gemm_bf16(MatmulKernel::MmaSync);
}

fn gemm_bf16_wgmma_matches_f64_reference() {
    check_gemm_bf16(MatmulKernel::Wgmma);
}

fn gemm_bf16_wgmma_tma_matches_f64_reference() {
    check_gemm_bf16(MatmulKernel::WgmmaTma);
}

/// Structured products whose every output is an exact small integer that names what the kernel
/// read, so that a layout mistake (a wrong swizzle, descriptor, fragment order or tile offset) is
/// reported as *which* element went where, not only as a relative error. `orientations`: the
/// (trans_a, trans_b) layouts the operands are stored in; (false, true) is A [m, k] and B as
/// [n, k], the wgmma kernels' K-major layout, with no transpose involved; the others give the TMA
/// kernel MN-major operands.
/// Probes (value = index + 1; sums of exact products, so exact in f32):
///   rows:    C[i, j] = i + 1          (the accumulator's row order and the row tiles)
///   columns: C[i, j] = j + 1          (column order and the column tiles)
///   a-k:     C[i, j] = perm(i) + 1    (A row i is one-hot at k = perm(i); B[j, k] = k + 1)
///   b-k:     C[i, j] = perm(j) + 1    (B row j is one-hot at k = perm(j); A[i, k] = k + 1)
/// perm spreads the ones over every 16-byte chunk and k tile. On a mismatch the report lists the
/// count and the first outputs with what they read (got - 1) against what they should have.
fn layout_probe(kernel: MatmulKernel, orientations: &[(bool, bool)]) {
    let Some(g) = gpu_for(kernel) else { return };
    let mut report = Vec::new();
    // One wgmma tile exactly, three k tiles, 2 x 2 tiles, and partial tiles in m, n and k.
    for &(m, n, kk) in &[(128usize, 256usize, 64usize), (128, 256, 192), (256, 512, 128), (192, 136, 80)] {
        let perm = |i: usize| (i * 5 + i / 8) % kk;
        // index + 1 as bf16-exact parts: (i % 256) + 1 on k = 0 and 256 * (i / 256) on k = 1
        let lo = |i: usize| (i % 256 + 1) as f32;
        let hi = |i: usize| (256 * (i / 256)) as f32;
        // A [rows, kk] matrix whose element (row i, k = p) is f(i, p).
        let mat = |rows: usize, f: &dyn Fn(usize, usize) -> f32| (0..rows * kk).map(|x| f(x / kk, x % kk)).collect::<Vec<f32>>();
        let index = |i: usize, p: usize| match p {
            0 => lo(i),
            1 => hi(i),
            _ => 0.0,
        };
        let ones = |_: usize, p: usize| if p < 2 { 1.0 } else { 0.0 };
        let one_hot = |i: usize, p: usize| if p == perm(i) { 1.0 } else { 0.0 };
        let k_plus_1 = |_: usize, p: usize| (p + 1) as f32;
        let probes = [
            ("rows", mat(m, &index), mat(n, &ones)),
            ("columns", mat(m, &ones), mat(n, &index)),
            ("a-k", mat(m, &one_hot), mat(n, &k_plus_1)),
            ("b-k", mat(m, &k_plus_1), mat(n, &one_hot)),
        ];
        // [rows, kk] as stored [kk, rows].
        let transposed = |x: &[f32], rows: usize| (0..rows * kk).map(|y| x[(y % rows) * kk + y / rows]).collect::<Vec<f32>>();
        for (name, a, b) in probes {
            for &(ta, tb) in orientations {
                let a = if ta { transposed(&a, m) } else { a.clone() };
                let b = if tb { b.clone() } else { transposed(&b, n) };
                let (ah, af) = round_bf16(a.clone());
                let (bh, bf) = round_bf16(b.clone());
                assert!(af == a && bf == b, "probe {name}: its values must be exact in bf16");
                let (da, db) = (g.upload(&ah).unwrap(), g.upload(&bh).unwrap());
                let mut dc = poisoned(&g, m * n);
                k::gemm_bf16_with(kernel, m, n, kk, 1.0, &da, ta, &db, tb, 0.0, &mut dc).unwrap();
                let got = dc.download().unwrap();
                let want = gemm_ref(m, n, kk, &af, ta, &bf, tb);
                let wrong: Vec<usize> = (0..m * n).filter(|&x| got[x] as f64 != want[x]).collect();
                if !wrong.is_empty() {
                    let mut line = format!(
                        "{kernel:?} {m}x{n}x{kk} ta={ta} tb={tb} probe {name}: {} of {} outputs wrong; first (row, col): read / should",
                        wrong.len(),
                        m * n
                    );
                    for &x in wrong.iter().take(12) {
                        line += &format!(" ({}, {}): {} / {}", x / n, x % n, got[x] - 1.0, want[x] - 1.0);
                    }
                    // Which rows and columns hold the mistakes, in 8-wide groups (fragment and
                    // swizzle periods), so a pattern shows at a glance.
                    let mut rows: Vec<usize> = wrong.iter().map(|&x| x / n / 8).collect();
                    rows.sort_unstable();
                    rows.dedup();
                    let mut cols: Vec<usize> = wrong.iter().map(|&x| x % n / 8).collect();
                    cols.sort_unstable();
                    cols.dedup();
                    line +=
                        &format!("; row groups of 8 with a mistake: {:?}; column groups of 8: {:?}", &rows[..rows.len().min(40)], &cols[..cols.len().min(40)]);
                    eprintln!("{line}");
                    report.push(line);
                }
            }
        }
    }
    assert!(report.is_empty(), "layout probe failed:\n{}", report.join("\n"));
}

/// The K-major layout: A [m, k], B as [n, k].
const K_MAJOR: &[(bool, bool)] = &[(false, true)];

fn gemm_bf16_mma_sync_layout_probe() {
    layout_probe(MatmulKernel::MmaSync, K_MAJOR);
}

fn gemm_bf16_wgmma_layout_probe() {
    layout_probe(MatmulKernel::Wgmma, K_MAJOR);
}

fn gemm_bf16_wgmma_tma_layout_probe() {
    layout_probe(MatmulKernel::WgmmaTma, K_MAJOR);
}

fn gemm_bf16_wgmma_tma_mn_major_layout_probe() {
    // The orientations whose operands the TMA kernel reads MN-major: B stored [k, n] (NN), both
    // (TN), A stored [k, m] (TT).
    if !k::mn_major_enabled() {
        eprintln!("CODISTILL_WGMMA_MN=0: the TMA kernel's MN-major operands are off, not probed");
        return;
    }
    layout_probe(MatmulKernel::WgmmaTma, &[(false, false), (true, false), (true, true)]);
}

fn gemm_on_unaligned_subranges_matches_f64_reference() {
    // Operands that start 1 element (2 bytes) into a buffer: no 16-byte copies straight from them.
    let Some(g) = gpu() else { return };
    let mut r = rng("gemm_unaligned");
    let (m, n, kk) = (130, 136, 72);
    // K-major, and MN-major (which the TMA kernel then cannot read in place).
    for kernel in tensor_core_kernels(&g) {
        for (ta, tb) in [(false, true), (true, false)] {
            let (ah, af) = round_bf16(r.normal_vec(m * kk + 1, 1.0));
            let (bh, bf) = round_bf16(r.normal_vec(kk * n + 1, 1.0));
            let (da, db) = (g.upload(&ah).unwrap(), g.upload(&bh).unwrap());
            let mut dc = poisoned(&g, m * n);
            k::gemm_bf16_with(kernel, m, n, kk, 1.0, &da.slice(1, m * kk).unwrap(), ta, &db.slice(1, kk * n).unwrap(), tb, 0.0, &mut dc).unwrap();
            let want = gemm_ref(m, n, kk, &af[1..], ta, &bf[1..], tb);
            let e = rel_err(&dc.download().unwrap(), &want);
            assert!(e < 1e-3, "gemm_bf16 {kernel:?} ta={ta} tb={tb} on unaligned ranges: rel err {e:.2e}");
        }
    }
}

fn gemm_f32_rounded_to_bf16_matches_f64_reference() {
    // The trainers' default path: f32 operands rounded on the device (straight into the wgmma
    // layout on Hopper), against the f64 product of the rounded operands.
    let Some(g) = gpu() else { return };
    let mut r = rng("gemm_f32_as_bf16");
    let kernels = if g.has_wgmma() { vec![MatmulKernel::Auto, MatmulKernel::AutoWgmma, MatmulKernel::AutoWgmmaTma] } else { vec![MatmulKernel::Auto] };
    for kernel in kernels.into_iter().filter(|&k| !skipped(k)) {
        for &(m, n, kk) in [(7, 13, 5), (300, 512, 1024), (513, 257, 72), (129, 2600, 64), (264, 136, 72)].iter().filter(|&&(m, n, k)| within_cap(m, n, k)) {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let (a, b) = (r.normal_vec(m * kk, 1.0), r.normal_vec(kk * n, 1.0));
                let (_, af) = round_bf16(a.clone());
                let (_, bf) = round_bf16(b.clone());
                let (da, db) = (g.upload(&a).unwrap(), g.upload(&b).unwrap());
                let mut dc = poisoned(&g, m * n);
                k::gemm_f32_as_bf16_with(kernel, m, n, kk, 1.0, &da, ta, &db, tb, 0.0, &mut dc).unwrap();
                let want = gemm_ref(m, n, kk, &af, ta, &bf, tb);
                let e = rel_err(&dc.download().unwrap(), &want);
                assert!(e < 1e-3, "gemm_f32_as_bf16 {kernel:?} {m}x{n}x{kk} ta={ta} tb={tb}: rel err {e:.2e}");
            }
        }
    }
}

fn transposes_match_cpu() {
    let Some(g) = gpu() else { return };
    if !g.has_wgmma() {
        eprintln!("the transpose kernels live in the compute_90a module: not a compute capability 9.0 GPU, skipped");
        return;
    }
    let mut r = rng("transpose");
    for &(rows, cols) in &[(1, 1), (31, 33), (64, 64), (100, 7), (1025, 130)] {
        let x = r.normal_vec(rows * cols, 3.0);
        let (xh, _) = round_bf16(x.clone());
        let want_f32: Vec<bf16> = (0..rows * cols).map(|i| bf16::from_f32(x[(i % rows) * cols + i / rows])).collect();
        let want_bf16: Vec<bf16> = (0..rows * cols).map(|i| xh[(i % rows) * cols + i / rows]).collect();
        let mut out = g.alloc::<bf16>(rows * cols).unwrap();
        out.memset(0xFF).unwrap();
        k::transpose_f32_to_bf16(&g.upload(&x).unwrap(), rows, cols, &mut out).unwrap();
        assert_eq!(out.download().unwrap(), want_f32, "transpose_f32_to_bf16 {rows}x{cols}");
        out.memset(0xFF).unwrap();
        k::transpose_bf16(&g.upload(&xh).unwrap(), rows, cols, &mut out).unwrap();
        assert_eq!(out.download().unwrap(), want_bf16, "transpose_bf16 {rows}x{cols}");
    }
}

fn bf16_conversion_rounds_like_half() {
    let Some(g) = gpu() else { return };
    let mut r = rng("bf16 conversion");
    let mut x = r.normal_vec(10_001, 100.0);
    // ... and two exact ties between bf16 neighbours (1 + 2^-8, 1 + 3 * 2^-8): round to even.
    x.extend([0.0, -0.0, 1e-40, 3.0e38, f32::INFINITY, 1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0]);
    let dx = g.upload(&x).unwrap();
    let mut dy = g.alloc::<bf16>(x.len()).unwrap();
    dy.memset(0xFF).unwrap();
    cuda::f32_to_bf16(&dx, &mut dy).unwrap();
    let got = dy.download().unwrap();
    let want: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
    assert_eq!(got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    let mut back = poisoned(&g, x.len());
    cuda::bf16_to_f32(&dy, &mut back).unwrap();
    let want: Vec<u32> = want.iter().map(|v| v.to_f32().to_bits()).collect();
    assert_eq!(back.download().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want);
}

fn embedding_gather_and_both_scatter_modes_match_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = rng("embedding");
    for (vocab, dim, n) in [(1, 1, 1), (50, 13, 333), (1000, 64, 4096), (7, 128, 1000), (100_000, 16, 20_000)] {
        let table = r.normal_vec(vocab * dim, 1.0);
        // Zipf-like ids so that some repeat many times.
        let ids: Vec<i32> = (0..n).map(|_| ((r.uniform().powi(3)) * vocab as f64) as i32 % vocab as i32).collect();
        let (dt, di) = (g.upload(&table).unwrap(), g.upload(&ids).unwrap());
        let mut out = poisoned(&g, n * dim);
        k::gather(&dt, vocab, dim, &di, &mut out).unwrap();
        let mut want = vec![0f32; n * dim];
        embedding::gather_cpu(&table, dim, &ids, &mut want);
        assert_eq!(out.download().unwrap(), want, "gather {vocab}x{dim}, {n} ids");

        let dout = r.normal_vec(n * dim, 1.0);
        let base = r.normal_vec(vocab * dim, 1.0);
        let mut cpu = base.clone();
        embedding::scatter_add_cpu(&dout, dim, &ids, &mut cpu);
        let dd = g.upload(&dout).unwrap();
        let mut det = Vec::new();
        for _ in 0..2 {
            let mut dtab = g.upload(&base).unwrap();
            k::scatter_add(&dd, vocab, dim, &di, Some(&ids), &mut dtab, k::ScatterMode::Deterministic).unwrap();
            det.push(dtab.download().unwrap());
        }
        assert_eq!(det[0], det[1], "deterministic scatter-add differs between runs");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&det[0]), bits(&cpu), "deterministic scatter-add is not bitwise the CPU twin ({vocab}x{dim})");
        let mut dtab = g.upload(&base).unwrap();
        k::scatter_add(&dd, vocab, dim, &di, None, &mut dtab, k::ScatterMode::Atomic).unwrap();
        let e = rel_err(&dtab.download().unwrap(), &to64(&cpu));
        assert!(e < 1e-5, "atomic scatter-add {vocab}x{dim}: rel err {e:.2e}");
    }
}

fn lstm_cell_forward_and_backward_match_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = rng("lstm cell");
    for (b, h) in [(1, 1), (3, 7), (20, 200), (33, 650), (64, 1024)] {
        let gates = r.normal_vec(b * 4 * h, 2.0);
        let c_prev = r.normal_vec(b * h, 1.0);
        let (mut cg, mut cc, mut ch) = (gates.clone(), vec![0f32; b * h], vec![0f32; b * h]);
        lstm::cell_forward_cpu(&mut cg, &c_prev, &mut cc, &mut ch, h);
        let mut dg = g.upload(&gates).unwrap();
        let dcp = g.upload(&c_prev).unwrap();
        let (mut dc, mut dh) = (poisoned(&g, b * h), poisoned(&g, b * h));
        let mut dhb = g.alloc::<bf16>(b * h).unwrap();
        dhb.memset(0xFF).unwrap();
        k::lstm_cell_fwd(&mut dg, &dcp, &mut dc, &mut dh, Some(&mut dhb), b, h).unwrap();
        let got_h = dh.download().unwrap();
        for (name, got, want) in [("act", dg.download().unwrap(), &cg), ("c", dc.download().unwrap(), &cc), ("h", got_h.clone(), &ch)] {
            let e = rel_err(&got, &to64(want));
            assert!(e < 1e-5, "lstm fwd {name} B{b} H{h}: rel err {e:.2e}");
        }
        // the optional bf16 copy of h is h rounded to nearest even, element for element
        let want_hb: Vec<bf16> = got_h.iter().map(|&x| bf16::from_f32(x)).collect();
        assert_eq!(dhb.download().unwrap(), want_hb, "lstm fwd h as bf16 B{b} H{h}");
        // and without it the kernel writes the same f32 outputs
        let mut dg2 = g.upload(&gates).unwrap();
        let (mut dc2, mut dh2) = (poisoned(&g, b * h), poisoned(&g, b * h));
        k::lstm_cell_fwd(&mut dg2, &dcp, &mut dc2, &mut dh2, None, b, h).unwrap();
        assert_eq!(dh2.download().unwrap(), got_h, "lstm fwd h without the bf16 copy B{b} H{h}");
        let dhv = r.normal_vec(b * h, 1.0);
        let dcv = r.normal_vec(b * h, 1.0);
        let (mut cpu_dc, mut cpu_dg) = (dcv.clone(), vec![0f32; b * 4 * h]);
        lstm::cell_backward_cpu(&cg, &c_prev, &cc, &dhv, &mut cpu_dc, &mut cpu_dg, h);
        let act = g.upload(&cg).unwrap();
        let cbuf = g.upload(&cc).unwrap();
        let ddh = g.upload(&dhv).unwrap();
        let mut ddc = g.upload(&dcv).unwrap();
        let mut ddg = poisoned(&g, b * 4 * h);
        let mut ddgb = g.alloc::<bf16>(b * 4 * h).unwrap();
        ddgb.memset(0xFF).unwrap();
        k::lstm_cell_bwd(&act, &dcp, &cbuf, &ddh, &mut ddc, &mut ddg, Some(&mut ddgb), b, h).unwrap();
        let got_dg = ddg.download().unwrap();
        let e = rel_err(&got_dg, &to64(&cpu_dg));
        assert!(e < 1e-5, "lstm bwd dgates B{b} H{h}: rel err {e:.2e}");
        let want_dgb: Vec<bf16> = got_dg.iter().map(|&x| bf16::from_f32(x)).collect();
        assert_eq!(ddgb.download().unwrap(), want_dgb, "lstm bwd dgates as bf16 B{b} H{h}");
        let e = rel_err(&ddc.download().unwrap(), &to64(&cpu_dc));
        assert!(e < 1e-5, "lstm bwd dc B{b} H{h}: rel err {e:.2e}");
    }
}

fn softmax_kl_matches_cpu_twin() {
    let Some(g) = gpu() else { return };
    let mut r = rng("softmax-KL");
    let cases = [(1, 1, 1), (3, 5, 1), (37, 1001, 2), (64, 4096, 1), (16, 32768, 3), (9, 10_000, 8), (5, 130, 0), (4, 60_001, 5), (2, 70_000, 1)];
    let mut failures = Vec::new();
    for &(rows, cols, nt) in &cases {
        for (t, a) in [(1.0, 0.5), (2.0, 1.0), (4.0, 0.0), (1.5, 0.7)] {
            if nt == 0 && a > 0.0 {
                continue;
            }
            for extreme in [false, true] {
                let std = if extreme { 1e4 } else { 3.0 };
                let s = r.normal_vec(rows * cols, std);
                let ts: Vec<Vec<f32>> = (0..nt).map(|_| r.normal_vec(rows * cols, std)).collect();
                let y: Vec<i32> = (0..rows).map(|_| r.below(cols) as i32).collect();
                let p = DistillParams { temperature: t, alpha: a };
                let trefs: Vec<&[f32]> = ts.iter().map(|v| v.as_slice()).collect();
                let mut cg = vec![0f32; rows * cols];
                let want = softmax_kl::softmax_kl_cpu(&s, if a > 0.0 { &trefs } else { &[] }, Some(&y), rows, cols, p, &mut cg);
                let ds = g.upload(&s).unwrap();
                let dts: Vec<GpuBuf<f32>> = ts.iter().map(|v| g.upload(v).unwrap()).collect();
                let dtr: Vec<&GpuBuf<f32>> = if a > 0.0 { dts.iter().collect() } else { vec![] };
                let dy = g.upload(&y).unwrap();
                let mut dg = poisoned(&g, rows * cols);
                let got = k::softmax_kl(&ds, &dtr, Some(&dy), rows, cols, p, &mut dg).unwrap();
                let what = format!("{rows}x{cols} K{nt} T{t} a{a} extreme={extreme}");
                let gg = dg.download().unwrap();
                if cols == 1 {
                    // One class: the loss and gradient are zero up to fp32 rounding of the logits.
                    if !(gg.iter().all(|v| v.abs() < 1e-6) && got.total.abs() < 1e-6) {
                        failures.push(format!("{what}: single-class row gave {:?} / loss {}", gg, got.total));
                    }
                    continue;
                }
                // Against the f64 gradient of the same inputs, entry by entry, within the bound the
                // CPU twin meets (tests/softmax_kl.rs): 1e-5 of the matrix's largest entry plus 1e-5
                // of the entry. (A norm-wise 1e-5 against the CPU twin failed once on an H100 at
                // 1.25e-5 with logits of 1e4: probabilities near 1 are exact only to f32's spacing
                // there, in both twins.)
                let want64 = softmax_kl_grad64(&s, if a > 0.0 { &trefs } else { &[] }, &y, rows, cols, t as f64, a as f64);
                let top = want64.iter().fold(0f64, |m, v| m.max(v.abs()));
                if let Some(i) = (0..rows * cols).find(|&i| (gg[i] as f64 - want64[i]).abs() > 1e-5 * top + 1e-5 * want64[i].abs()) {
                    failures.push(format!("grad {what}: [{}][{}] {:e} vs f64 {:e} (largest entry {top:e})", i / cols, i % cols, gg[i], want64[i]));
                }
                // fp32 loss: relative 1e-5, with an absolute floor of 1e-7 for near-zero losses.
                for (part, g, w) in [("total", got.total, want.total), ("hard", got.hard, want.hard), ("soft", got.soft, want.soft)] {
                    if (g - w).abs() > 1e-5 * w.abs().max(1e-2) {
                        failures.push(format!("{part} loss {what}: {g} vs {w}"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "softmax-KL mismatches:\n{}", failures.join("\n"));
}

/// d/ds of mean_r [(1 - a) CE(y, softmax(s)) + a T^2 KL(p || softmax(s / T))], p the teachers'
/// averaged softmax(t / T), in f64: ((1 - a)(softmax(s) - onehot(y)) + a T (softmax(s / T) - p)) / n.
fn softmax_kl_grad64(s: &[f32], teachers: &[&[f32]], y: &[i32], rows: usize, cols: usize, t: f64, a: f64) -> Vec<f64> {
    let softmax = |x: &[f32], scale: f64| {
        let m = x.iter().map(|&v| v as f64 * scale).fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = x.iter().map(|&v| (v as f64 * scale - m).exp()).collect();
        let z: f64 = e.iter().sum();
        e.into_iter().map(|v| v / z).collect::<Vec<f64>>()
    };
    let mut g = vec![0f64; rows * cols];
    for r in 0..rows {
        let row = &s[r * cols..(r + 1) * cols];
        let q = softmax(row, 1.0);
        let qt = softmax(row, 1.0 / t);
        let mut p = vec![0f64; cols];
        for tk in teachers {
            for (pj, v) in p.iter_mut().zip(softmax(&tk[r * cols..(r + 1) * cols], 1.0 / t)) {
                *pj += v / teachers.len() as f64;
            }
        }
        for j in 0..cols {
            let hard = q[j] - if j == y[r] as usize { 1.0 } else { 0.0 };
            let soft = if a > 0.0 { t * (qt[j] - p[j]) } else { 0.0 };
            g[r * cols + j] = ((1.0 - a) * hard + a * soft) / rows as f64;
        }
    }
    g
}

fn elementwise_kernels_match_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = rng("elementwise");
    for n in [1, 17, 1000, 100_003] {
        let x = r.normal_vec(n, 2.0);
        let pos: Vec<f32> = x.iter().map(|v| v.abs() + 0.1).collect();
        let dx_in = g.upload(&x).unwrap();
        let dpos = g.upload(&pos).unwrap();
        for op in [Unary::Relu, Unary::Sigmoid, Unary::Tanh, Unary::Exp, Unary::Log, Unary::Scale(-1.5)] {
            let (src, din) = if op == Unary::Log { (&pos, &dpos) } else { (&x, &dx_in) };
            let mut want = vec![0f32; n];
            unary_cpu(op, src, &mut want);
            let mut y = poisoned(&g, n);
            k::unary(op, din, &mut y).unwrap();
            let e = rel_err(&y.download().unwrap(), &to64(&want));
            assert!(e < 1e-5, "{op:?} n={n}: rel err {e:.2e}");
            // The backward against dy * f'(x) in f64 of the same inputs (x and the forward's y). The
            // CPU twin is no reference here: its 1 - y * y rounds twice, which near |y| = 1 loses
            // more than 1e-5 of the result (a 1.76e-5 difference was seen on an H100 at n = 1).
            let dy = r.normal_vec(n, 1.0);
            let mut gdx = poisoned(&g, n);
            let (dyb, yb) = (g.upload(&dy).unwrap(), g.upload(&want).unwrap());
            k::unary_backward(op, din, &yb, &dyb, &mut gdx).unwrap();
            let wdx: Vec<f64> = (0..n)
                .map(|i| {
                    let (x, y) = (src[i] as f64, want[i] as f64);
                    dy[i] as f64
                        * match op {
                            Unary::Relu => (x > 0.0) as u8 as f64,
                            Unary::Sigmoid => y * (1.0 - y),
                            Unary::Tanh => 1.0 - y * y,
                            Unary::Exp => y,
                            Unary::Log => 1.0 / x,
                            Unary::Scale(c) => c as f64,
                        }
                })
                .collect();
            let e = rel_err(&gdx.download().unwrap(), &wdx);
            assert!(e < 1e-5, "{op:?} backward n={n}: rel err {e:.2e}");
        }
        let b = r.normal_vec(n, 1.0);
        let db = g.upload(&b).unwrap();
        for op in [Binary::Add, Binary::Sub, Binary::Mul] {
            let mut want = vec![0f32; n];
            binary_cpu(op, &x, &b, &mut want);
            let mut o = poisoned(&g, n);
            k::binary(op, &dx_in, &db, &mut o).unwrap();
            assert_eq!(o.download().unwrap(), want, "{op:?} n={n}");
        }
        let mut a = g.upload(&x).unwrap();
        k::axpy(0.25, &db, &mut a).unwrap();
        let want: Vec<f64> = x.iter().zip(&b).map(|(&p, &q)| p as f64 + 0.25 * q as f64).collect();
        assert!(rel_err(&a.download().unwrap(), &want) < 1e-6);
    }
    for (rows, d) in [(1, 1), (13, 7), (300, 650)] {
        let x = r.normal_vec(rows * d, 1.0);
        let bias = r.normal_vec(d, 1.0);
        let mut want = vec![0f32; rows * d];
        add_row_bias_cpu(&x, &bias, &mut want);
        let mut o = poisoned(&g, rows * d);
        k::add_row_bias(&g.upload(&x).unwrap(), &g.upload(&bias).unwrap(), &mut o).unwrap();
        assert_eq!(o.download().unwrap(), want);
    }
}

fn dropout_mask_is_bitwise_the_cpu_mask() {
    let Some(g) = gpu() else { return };
    let mut r = rng("dropout");
    for (n, p) in [(1, 0.5), (1001, 0.1), (1 << 20, 0.3), (77, 0.0)] {
        let x = r.normal_vec(n, 1.0);
        let seed = r.next_u64();
        let mut want = vec![0f32; n];
        dropout_cpu(&x, p, seed, &mut want);
        let mut y = poisoned(&g, n);
        k::dropout(&g.upload(&x).unwrap(), p, seed, &mut y).unwrap();
        assert_eq!(y.download().unwrap(), want, "dropout n={n} p={p}");
    }
}

fn reductions_match_f64() {
    let Some(g) = gpu() else { return };
    let mut r = rng("reductions");
    for n in [1, 255, 4097, 3_000_001] {
        let x = r.normal_vec(n, 1.0);
        let dx = g.upload(&x).unwrap();
        let (s, ss) = (k::sum(&dx).unwrap(), k::sum_squares(&dx).unwrap());
        let (ws, wss) = (reduce::sum_cpu(&x), reduce::sum_squares_cpu(&x));
        assert!((s - ws).abs() <= 1e-9 * wss.sqrt().max(1.0), "sum n={n}: {s} vs {ws}");
        assert!((ss - wss).abs() / wss < 1e-12, "sum of squares n={n}: {ss} vs {wss}");
        assert_eq!(k::sum(&dx).unwrap(), s, "the GPU sum is not deterministic");
    }
    // Several buffers at once (the global gradient norm), one of them a slice, one empty.
    let xs: Vec<Vec<f32>> = [3usize, 0, 70_001, 1].iter().map(|&n| r.normal_vec(n, 2.0)).collect();
    let bufs: Vec<_> = xs.iter().map(|x| g.upload(x).unwrap()).collect();
    let sl = bufs[2].slice(5, 60_000).unwrap();
    let want: f64 = xs.iter().map(|x| reduce::sum_squares_cpu(x)).sum::<f64>() + reduce::sum_squares_cpu(&xs[2][5..60_005]);
    let mut many: Vec<&dyn codistill::cuda::GpuRange<f32>> = bufs.iter().map(|b| b as &dyn codistill::cuda::GpuRange<f32>).collect();
    many.push(&sl);
    let got = k::sum_squares_many(&many).unwrap();
    assert!((got - want).abs() / want < 1e-12, "sum_squares_many: {got} vs {want}");
    assert_eq!(k::sum_squares_many(&[]).unwrap(), 0.0);
    for (rows, d) in [(1, 1), (7, 13), (2000, 650), (20_000, 3)] {
        let x = r.normal_vec(rows * d, 1.0);
        let old = r.normal_vec(d, 1.0);
        for beta in [0.0f32, 1.0] {
            let mut want = old.clone();
            reduce::sum_rows_cpu(&x, d, beta, &mut want);
            let mut o = if beta == 0.0 { poisoned(&g, d) } else { g.upload(&old).unwrap() };
            k::sum_rows(&g.upload(&x).unwrap(), rows, d, beta, &mut o).unwrap();
            let e = rel_err(&o.download().unwrap(), &to64(&want));
            assert!(e < 1e-6, "sum_rows {rows}x{d} beta {beta}: rel err {e:.2e}");
        }
    }
}

fn optimizer_updates_match_cpu_dense_and_row_sparse() {
    let Some(g) = gpu() else { return };
    let mut r = rng("optimizers");
    let (vocab, dim) = (301, 13);
    let n = vocab * dim;
    let rows: Vec<i32> = vec![0, 5, 17, 300, 42];
    for sparse in [false, true] {
        let w = r.normal_vec(n, 1.0);
        let glen = if sparse { rows.len() * dim } else { n };
        let grad = r.normal_vec(glen, 1.0);
        let s1: Vec<f32> = r.normal_vec(n, 0.1);
        let s2: Vec<f32> = r.normal_vec(n, 0.1).iter().map(|v| v.abs()).collect();
        // CPU: apply the twin to each touched row (or everything).
        let apply = |f: &mut dyn FnMut(std::ops::Range<usize>, std::ops::Range<usize>)| {
            if sparse {
                for (i, &row) in rows.iter().enumerate() {
                    f(row as usize * dim..(row as usize + 1) * dim, i * dim..(i + 1) * dim);
                }
            } else {
                f(0..n, 0..n);
            }
        };
        let drows = g.upload(&rows).unwrap();
        let rr = if sparse { Some(&drows) } else { None };
        let dgrad = g.upload(&grad).unwrap();

        let (mut cw, mut cv) = (w.clone(), s1.clone());
        apply(&mut |wr, gr| optim::sgd_cpu(&mut cw[wr.clone()], &grad[gr], &mut cv[wr], 0.1, 0.9, 1e-3, 0.7));
        let (mut gw, mut gv) = (g.upload(&w).unwrap(), g.upload(&s1).unwrap());
        k::sgd(&mut gw, &dgrad, &mut gv, rr, dim, 0.1, 0.9, 1e-3, 0.7).unwrap();
        assert!(rel_err(&gw.download().unwrap(), &to64(&cw)) < 1e-6, "sgd sparse={sparse}");
        assert!(rel_err(&gv.download().unwrap(), &to64(&cv)) < 1e-6, "sgd velocity sparse={sparse}");

        let (mut cw, mut ca) = (w.clone(), s2.clone());
        apply(&mut |wr, gr| optim::adagrad_cpu(&mut cw[wr.clone()], &grad[gr], &mut ca[wr], 0.05, 1e-8, 1.0));
        let (mut gw, mut ga) = (g.upload(&w).unwrap(), g.upload(&s2).unwrap());
        k::adagrad(&mut gw, &dgrad, &mut ga, rr, dim, 0.05, 1e-8, 1.0).unwrap();
        assert!(rel_err(&gw.download().unwrap(), &to64(&cw)) < 1e-6, "adagrad sparse={sparse}");
        assert!(rel_err(&ga.download().unwrap(), &to64(&ca)) < 1e-6, "adagrad accum sparse={sparse}");

        let (mut cw, mut cm, mut cv) = (w.clone(), s1.clone(), s2.clone());
        apply(&mut |wr, gr| optim::adam_cpu(&mut cw[wr.clone()], &grad[gr], &mut cm[wr.clone()], &mut cv[wr], 1e-3, 0.9, 0.999, 1e-8, 0.01, 7, 0.5));
        let (mut gw, mut gm, mut gv) = (g.upload(&w).unwrap(), g.upload(&s1).unwrap(), g.upload(&s2).unwrap());
        k::adam(&mut gw, &dgrad, &mut gm, &mut gv, rr, dim, 1e-3, 0.9, 0.999, 1e-8, 0.01, 7, 0.5).unwrap();
        assert!(rel_err(&gw.download().unwrap(), &to64(&cw)) < 1e-6, "adam sparse={sparse}");
        assert!(rel_err(&gm.download().unwrap(), &to64(&cm)) < 1e-6, "adam m sparse={sparse}");
        assert!(rel_err(&gv.download().unwrap(), &to64(&cv)) < 1e-6, "adam v sparse={sparse}");
    }
}

fn repeated_steps_reuse_cached_device_memory() {
    let Some(g) = gpu() else { return };
    let step = |g: &Arc<Gpu>| {
        let a = g.full(1000, 1.0).unwrap();
        let b = g.full(1 << 20, 2.0).unwrap();
        let mut c = g.alloc::<f32>(1000).unwrap();
        k::binary(Binary::Add, &a, &a, &mut c).unwrap();
        drop(b);
        c.download().unwrap()
    };
    step(&g);
    let before = g.stats();
    for _ in 0..10 {
        assert_eq!(step(&g)[999], 2.0);
    }
    let after = g.stats();
    assert_eq!(after.device_allocs, before.device_allocs, "a repeated step called cuMemAlloc: {before:?} -> {after:?}");
    assert!(after.cache_hits >= before.cache_hits + 30);
}

fn wrong_sizes_are_errors_not_faults() {
    let Some(g) = gpu() else { return };
    let a = g.full(10, 1.0).unwrap();
    let mut c = g.alloc::<f32>(3).unwrap();
    let e = k::gemm_f32(2, 2, 5, 1.0, &a, false, &a, false, 0.0, &mut c).unwrap_err().to_string();
    assert!(e.contains("holds 3 elements"), "{e}");
    let e = k::softmax_kl(&a, &[], None, 2, 5, DistillParams { temperature: 0.0, alpha: 0.0 }, &mut c).unwrap_err().to_string();
    assert!(e.contains("T > 0"), "{e}");
}

/// Every test of this binary, run by the GPU harness (tests/common/harness.rs).
fn main() {
    common::harness::run(
        "gpu",
        &[
            ("gemm_f32_matches_f64_reference", gemm_f32_matches_f64_reference),
            ("gemm_bf16_mma_sync_matches_f64_reference", gemm_bf16_mma_sync_matches_f64_reference),
            ("gemm_bf16_wgmma_matches_f64_reference", gemm_bf16_wgmma_matches_f64_reference),
            ("gemm_bf16_wgmma_tma_matches_f64_reference", gemm_bf16_wgmma_tma_matches_f64_reference),
            ("gemm_bf16_mma_sync_layout_probe", gemm_bf16_mma_sync_layout_probe),
            ("gemm_bf16_wgmma_layout_probe", gemm_bf16_wgmma_layout_probe),
            ("gemm_bf16_wgmma_tma_layout_probe", gemm_bf16_wgmma_tma_layout_probe),
            ("gemm_bf16_wgmma_tma_mn_major_layout_probe", gemm_bf16_wgmma_tma_mn_major_layout_probe),
            ("gemm_on_unaligned_subranges_matches_f64_reference", gemm_on_unaligned_subranges_matches_f64_reference),
            ("gemm_f32_rounded_to_bf16_matches_f64_reference", gemm_f32_rounded_to_bf16_matches_f64_reference),
            ("transposes_match_cpu", transposes_match_cpu),
            ("bf16_conversion_rounds_like_half", bf16_conversion_rounds_like_half),
            ("embedding_gather_and_both_scatter_modes_match_cpu", embedding_gather_and_both_scatter_modes_match_cpu),
            ("lstm_cell_forward_and_backward_match_cpu", lstm_cell_forward_and_backward_match_cpu),
            ("softmax_kl_matches_cpu_twin", softmax_kl_matches_cpu_twin),
            ("elementwise_kernels_match_cpu", elementwise_kernels_match_cpu),
            ("dropout_mask_is_bitwise_the_cpu_mask", dropout_mask_is_bitwise_the_cpu_mask),
            ("reductions_match_f64", reductions_match_f64),
            ("optimizer_updates_match_cpu_dense_and_row_sparse", optimizer_updates_match_cpu_dense_and_row_sparse),
            ("repeated_steps_reuse_cached_device_memory", repeated_steps_reuse_cached_device_memory),
            ("wrong_sizes_are_errors_not_faults", wrong_sizes_are_errors_not_faults),
        ],
        false,
    )
}
