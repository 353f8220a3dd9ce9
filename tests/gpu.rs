//! The matrix-product kernels at the launcher level, where each kernel variant (fp32, `mma.sync`
//! with and without split-K, the TMA `wgmma` kernel, MN-major operands) is chosen by hand and has
//! no CPU leg: against float64 on random inputs (a fixed seed by default, printed;
//! `CODISTILL_TEST_SEED=random` for a fresh one), odd sizes included, with device outputs poisoned
//! (NaN) before each run; the layout probes; the transposes and conversions they use; the caching
//! allocator; argument checks. Every op's own tests (each kernel through its tensor-level entry,
//! one body per device) are in its folder, run by `tests/ops.rs`. Without a GPU every test is reported as ignored (tests/common/harness.rs);
//! with `REQUIRE_GPU=1` a missing GPU fails the binary instead.
//!
//! Bounds against a float64 reference: fp32 kernels 1e-5 relative (norm), bf16 operands 1e-3 on
//! operands already rounded to bf16 (so the bound measures the kernel, not the rounding).

use codistill::cuda::{self, Gemm, Gpu, GpuBuf, MatmulKernel};

/// The launchers under test, from their op folders.
mod k {
    pub use codistill::ops::elementwise::cuda::*;
    pub use codistill::ops::matmul::cuda::*;
    pub use codistill::ops::softmax_kl::cuda::*;
}
use codistill::ops::elementwise::Binary;
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
/// them (`wgmma-tma`; set by scripts/gpu_remote.sh after its gate, which has already reported the
/// failure), so that the suite's other tests do not fail on them again (a trapped kernel also ends
/// the process's CUDA context, which would fail every test after it). `Auto` goes with the kernel
/// it uses for large products (`wgmma-tma`).
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
        MatmulKernel::WgmmaTma | MatmulKernel::Auto => "wgmma-tma",
        MatmulKernel::WgmmaTmaPersistent => "wgmma-tma-persistent",
        _ => return false,
    };
    listed_as_skipped(key)
}

/// Whether `CODISTILL_TEST_SKIP_KERNELS` names `key` (said on stderr).
fn listed_as_skipped(key: &str) -> bool {
    let skip = std::env::var("CODISTILL_TEST_SKIP_KERNELS").unwrap_or_default().split(',').any(|s| s.trim() == key);
    if skip {
        eprintln!("{key} left out: CODISTILL_TEST_SKIP_KERNELS names it (it failed its gate, or its gate did not run)");
    }
    skip
}

/// The tensor-core kernels this GPU runs: mma.sync everywhere, wgmma on compute capability 9.0.
fn tensor_core_kernels(g: &Gpu) -> Vec<MatmulKernel> {
    if g.has_wgmma() {
        [MatmulKernel::MmaSync, MatmulKernel::WgmmaTma, MatmulKernel::WgmmaTmaPersistent].into_iter().filter(|&k| !skipped(k)).collect()
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
    // More 128 x 256 output tiles (9 x 17 = 153) than an H100 or H200 has multiprocessors (132), with
    // partial tiles in m, n and k: the persistent TMA kernel's blocks loop over tiles.
    shapes.push((1100, 4100, 136));
    for &(m, n, kk) in shapes.iter().filter(|&&(m, n, k)| within_cap(m, n, k)) {
        if kernel != MatmulKernel::MmaSync && kk % 8 != 0 {
            // wgmma takes inner dimensions in whole 16-byte chunks; the launcher says so.
            let (da, db) = (g.alloc::<bf16>(m * kk).unwrap(), g.alloc::<bf16>(kk * n).unwrap());
            let mut dc = poisoned(&g, m * n);
            let e = k::gemm_bf16_with(Gemm { kernel, ..Gemm::default() }, m, n, kk, 1.0, &da, false, &db, false, 0.0, &mut dc).unwrap_err();
            assert!(e.to_string().contains("multiple of 8"), "{e}");
            continue;
        }
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let (ah, af) = round_bf16(r.normal_vec(m * kk, 1.0));
            let (bh, bf) = round_bf16(r.normal_vec(kk * n, 1.0));
            let (da, db) = (g.upload(&ah).unwrap(), g.upload(&bh).unwrap());
            let mut dc = poisoned(&g, m * n);
            k::gemm_bf16_with(Gemm { kernel, ..Gemm::default() }, m, n, kk, 1.0, &da, ta, &db, tb, 0.0, &mut dc).unwrap();
            let want = gemm_ref(m, n, kk, &af, ta, &bf, tb);
            let e = rel_err(&dc.download().unwrap(), &want);
            assert!(e < 1e-3, "gemm_bf16 {kernel:?} {m}x{n}x{kk} ta={ta} tb={tb}: rel err {e:.2e}");
            if m * n * kk < 5_000_000 {
                let c0 = r.normal_vec(m * n, 1.0);
                let mut dc = g.upload(&c0).unwrap();
                k::gemm_bf16_with(Gemm { kernel, ..Gemm::default() }, m, n, kk, 2.0, &da, ta, &db, tb, 1.0, &mut dc).unwrap();
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

fn gemm_bf16_wgmma_tma_matches_f64_reference() {
    check_gemm_bf16(MatmulKernel::WgmmaTma);
}

fn gemm_bf16_wgmma_tma_persistent_matches_f64_reference() {
    check_gemm_bf16(MatmulKernel::WgmmaTmaPersistent);
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
                k::gemm_bf16_with(Gemm { kernel, ..Gemm::default() }, m, n, kk, 1.0, &da, ta, &db, tb, 0.0, &mut dc).unwrap();
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

fn gemm_bf16_wgmma_tma_layout_probe() {
    layout_probe(MatmulKernel::WgmmaTma, K_MAJOR);
}

fn gemm_bf16_wgmma_tma_persistent_layout_probe() {
    // K-major, then (unless CODISTILL_WGMMA_MN=0) the MN-major variants. The probes' shapes have a
    // few tiles, one per block; blocks that loop over several tiles are the reference test's
    // 1100 x 4100 product (153 tiles).
    layout_probe(MatmulKernel::WgmmaTmaPersistent, K_MAJOR);
    if Gemm::from_env().unwrap().mn_major {
        layout_probe(MatmulKernel::WgmmaTmaPersistent, &[(false, false), (true, false), (true, true)]);
    }
}

fn gemm_bf16_wgmma_tma_mn_major_layout_probe() {
    // The orientations whose operands the TMA kernel reads MN-major: B stored [k, n] (NN), both
    // (TN), A stored [k, m] (TT).
    if !Gemm::from_env().unwrap().mn_major {
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
            k::gemm_bf16_with(
                Gemm { kernel, ..Gemm::default() },
                m,
                n,
                kk,
                1.0,
                &da.slice(1, m * kk).unwrap(),
                ta,
                &db.slice(1, kk * n).unwrap(),
                tb,
                0.0,
                &mut dc,
            )
            .unwrap();
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
    // Auto: wgmma-tma for the large products on Hopper (rounded straight into the layout it
    // reads), mma.sync for the rest; and mma.sync for everything.
    for kernel in [MatmulKernel::Auto, MatmulKernel::MmaSync].into_iter().filter(|&k| !skipped(k)) {
        for &(m, n, kk) in [(7, 13, 5), (300, 512, 1024), (513, 257, 72), (129, 2600, 64), (264, 136, 72)].iter().filter(|&&(m, n, k)| within_cap(m, n, k)) {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let (a, b) = (r.normal_vec(m * kk, 1.0), r.normal_vec(kk * n, 1.0));
                let (_, af) = round_bf16(a.clone());
                let (_, bf) = round_bf16(b.clone());
                let (da, db) = (g.upload(&a).unwrap(), g.upload(&b).unwrap());
                let mut dc = poisoned(&g, m * n);
                k::gemm_f32_as_bf16_with(Gemm { kernel, ..Gemm::default() }, m, n, kk, 1.0, &da, ta, &db, tb, 0.0, &mut dc).unwrap();
                let want = gemm_ref(m, n, kk, &af, ta, &bf, tb);
                let e = rel_err(&dc.download().unwrap(), &want);
                assert!(e < 1e-3, "gemm_f32_as_bf16 {kernel:?} {m}x{n}x{kk} ta={ta} tb={tb}: rel err {e:.2e}");
            }
        }
    }
}

/// The persistent LSTM layer (issue 28; `CODISTILL_LSTM=persistent`) against the CPU layer in f32
/// (within 1e-5 of float64: the bf16 bound 1e-2 applies to the outputs, 5e-2 to the gradients)
/// and against the GPU's step layer on the same bf16 operands (only the products' summation order
/// differs: 2e-3), forward outputs and
/// every gradient, at odd batches and step counts, outputs poisoned first. A shape the plan refuses
/// fails the test (it would otherwise pass on the step layer). `CODISTILL_TEST_SKIP_KERNELS` naming
/// `lstm-persistent` leaves it out (scripts/gpu_remote.sh, unless its own gate passed first).
fn lstm_persistent_matches_the_step_layer() {
    use codistill::ops::lstm::{layer_backward, layer_forward, persistent};
    use codistill::{Backend, Device, LstmKernel, Tensor};
    let Some(g) = gpu() else { return };
    if listed_as_skipped("lstm-persistent") {
        return;
    }
    let mut r = rng("lstm_persistent");
    let cpu = Backend { matmul: cuda::MatmulPrecision::F32, ..Backend::default() };
    let steps = Backend { matmul: cuda::MatmulPrecision::Bf16, ..Backend::default() };
    let pers = Backend { lstm: LstmKernel::Persistent, ..steps };
    let dev = Device::Cuda(0);
    let norm_err = |what: &str, got: &Tensor, want: &Tensor| -> f64 {
        let (a, b) = (got.to_vec_f32().unwrap(), want.to_vec_f32().unwrap());
        assert!(a.iter().all(|x| x.is_finite()), "{what}: non-finite output (an element left unwritten)");
        let num: f64 = a.iter().zip(&b).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum();
        let den: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
        (num / den.max(1e-300)).sqrt()
    };
    for &(t_len, batch, input, hidden) in &[(1, 1, 3, 2), (7, 5, 9, 48), (35, 33, 64, 96), (3, 130, 17, 250), (35, 64, 1024, 1024)] {
        let p = persistent::plan(&g, batch, hidden).unwrap_or_else(|why| panic!("T{t_len} B{batch} H{hidden}: no persistent plan: {why}"));
        eprintln!("T{t_len} B{batch} In{input} H{hidden}: {p:?}");
        let k = 1.0 / (hidden as f32).sqrt();
        let ins = [
            Tensor::randn(&[t_len * batch, input], 1.0, &mut r),
            Tensor::randn(&[batch, hidden], 0.5, &mut r),
            Tensor::randn(&[batch, hidden], 0.5, &mut r),
            Tensor::uniform(&[input, 4 * hidden], -k, k, &mut r),
            Tensor::uniform(&[hidden, 4 * hidden], -k, k, &mut r),
            Tensor::uniform(&[4 * hidden], -k, k, &mut r),
        ];
        let dy = Tensor::randn(&[t_len * batch, hidden], 1.0, &mut r);
        let (dh, dc) = (Tensor::randn(&[batch, hidden], 1.0, &mut r), Tensor::randn(&[batch, hidden], 1.0, &mut r));
        let run = |be: &Backend, d: Device| {
            let v: Vec<Tensor> = ins.iter().map(|t| t.to_device(d).unwrap()).collect();
            Tensor::poison_free_buffers(d, t_len * batch * 4 * hidden).unwrap();
            let out = layer_forward(be, &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], t_len).unwrap();
            Tensor::poison_free_buffers(d, t_len * batch * 4 * hidden).unwrap();
            let gr = layer_backward(
                be,
                &v[0],
                &v[1],
                &v[3],
                &v[4],
                &out,
                &dy.to_device(d).unwrap(),
                Some(&dh.to_device(d).unwrap()),
                Some(&dc.to_device(d).unwrap()),
            )
            .unwrap();
            let host = |t: &Tensor| t.to_device(Device::Cpu).unwrap();
            [&out.y, &out.h_last, &out.c_last, &gr.dx, &gr.dh0, &gr.dc0, &gr.dw_ih, &gr.dw_hh, &gr.db].map(host)
        };
        let (want, step, got) = (run(&cpu, Device::Cpu), run(&steps, dev), run(&pers, dev));
        for (i, name) in ["y", "h_last", "c_last", "dx", "dh0", "dc0", "dw_ih", "dw_hh", "db"].iter().enumerate() {
            let what = format!("persistent lstm T{t_len} B{batch} In{input} H{hidden} {name}");
            let (e_ref, e_step) = (norm_err(&what, &got[i], &want[i]), norm_err(&what, &got[i], &step[i]));
            // Gradients carry the operands' bf16 rounding back through every step: 5x the
            // forward's bound against f32 (the step layer's op test allows 10x).
            let bound = if i < 3 { 1e-2 } else { 5e-2 };
            assert!(e_ref < bound, "{what}: rel err {e_ref:.2e} against the CPU layer (f32)");
            assert!(e_step < 2e-3, "{what}: rel err {e_step:.2e} against the step layer (bf16; the CPU layer's: {e_ref:.2e})");
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
    let e = k::softmax_kl(&a, &[], None, 2, 5, DistillParams { temperature: 0.0, alpha: 0.0, ..Default::default() }, &mut c).unwrap_err().to_string();
    assert!(e.contains("T > 0"), "{e}");
}

/// Every test of this binary, run by the GPU harness (tests/common/harness.rs).
fn main() {
    common::harness::run(
        "gpu",
        &[
            ("gemm_f32_matches_f64_reference", gemm_f32_matches_f64_reference),
            ("gemm_bf16_mma_sync_matches_f64_reference", gemm_bf16_mma_sync_matches_f64_reference),
            ("gemm_bf16_wgmma_tma_matches_f64_reference", gemm_bf16_wgmma_tma_matches_f64_reference),
            ("gemm_bf16_wgmma_tma_persistent_matches_f64_reference", gemm_bf16_wgmma_tma_persistent_matches_f64_reference),
            ("gemm_bf16_mma_sync_layout_probe", gemm_bf16_mma_sync_layout_probe),
            ("gemm_bf16_wgmma_tma_layout_probe", gemm_bf16_wgmma_tma_layout_probe),
            ("gemm_bf16_wgmma_tma_mn_major_layout_probe", gemm_bf16_wgmma_tma_mn_major_layout_probe),
            ("gemm_bf16_wgmma_tma_persistent_layout_probe", gemm_bf16_wgmma_tma_persistent_layout_probe),
            ("gemm_on_unaligned_subranges_matches_f64_reference", gemm_on_unaligned_subranges_matches_f64_reference),
            ("gemm_f32_rounded_to_bf16_matches_f64_reference", gemm_f32_rounded_to_bf16_matches_f64_reference),
            ("lstm_persistent_matches_the_step_layer", lstm_persistent_matches_the_step_layer),
            ("transposes_match_cpu", transposes_match_cpu),
            ("bf16_conversion_rounds_like_half", bf16_conversion_rounds_like_half),
            ("repeated_steps_reuse_cached_device_memory", repeated_steps_reuse_cached_device_memory),
            ("wrong_sizes_are_errors_not_faults", wrong_sizes_are_errors_not_faults),
        ],
    )
}
