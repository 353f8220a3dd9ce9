//! Kernel lab: the cp.async `wgmma` matmul (`dev/kernels/gemm_wgmma_cpasync_sm90a.cu`), the first
//! Hopper kernel of this project, kept out of the library for comparison with the TMA kernel that
//! replaced it (`kernels/matmul_sm90a.cu`). This harness is all the lab kernel has: its launcher,
//! its layout probe, its validation against float64 and its times beside the library's kernels,
//! in one run on one GPU. See dev/README.md.
//!
//!   cargo build --release --example lab_gemm_wgmma_cpasync   (scripts/gpu_build.sh copies it to
//!   device-bin/lab-gemm-wgmma-cpasync; on the GPU machine: STAGES=lab bash scripts/gpu_remote.sh)
//!
//! Options: `--validate-only` (probe and validation, no timing). Prints `probe ...`, `valid ...`
//! and `gemm ...` lines and a last `PASS` or `FAIL` line; exits 1 on any failure, 2 where there is
//! no GPU of compute capability 9.0 (the kernel needs `wgmma`).

use codistill::cuda::{self, Gemm, Gpu, GpuBuf, MatmulKernel};
use codistill::ops::matmul::cuda::{gemm_bf16_with, transpose_bf16};
use codistill::Rng;
use cudarc::driver::{sys, CudaFunction, LaunchConfig, PushKernelArg};
use half::bf16;
use std::sync::Arc;

/// The lab kernel's PTX (tools/ptx.py builds it from dev/kernels/ and checks it in CI).
const PTX: &str = include_str!("ptx/gemm_wgmma_cpasync_sm90a.ptx");

/// One stage's A tile: 128 rows x 64 k of bf16.
const STAGE_A: u32 = 128 * 64 * 2;

/// The lab kernel on one GPU: `gemm_wgmma_b128` and `gemm_wgmma_b256`.
struct Lab {
    gpu: Arc<Gpu>,
    b128: CudaFunction,
    b256: CudaFunction,
}

impl Lab {
    fn new(gpu: Arc<Gpu>) -> Result<Lab, String> {
        let module =
            gpu.context().load_module(cudarc::nvrtc::Ptx::from_src(PTX)).map_err(|e| format!("loading dev/ptx/gemm_wgmma_cpasync_sm90a.ptx: {e:?}"))?;
        let f = |name: &str| module.load_function(name).map_err(|e| format!("kernel {name}: {e:?}"));
        Ok(Lab { b128: f("gemm_wgmma_b128")?, b256: f("gemm_wgmma_b256")?, gpu })
    }

    /// The tile width the library's launcher took for this kernel: 128 where it fills the last wave
    /// of blocks clearly better than 256 (one block per multiprocessor at a time).
    fn tile_for(&self, m: usize, n: usize) -> usize {
        let sms = self.gpu.sm_count();
        let fill = |bn: usize| {
            let tiles = n.div_ceil(bn) * m.div_ceil(128);
            tiles as f64 / (tiles.div_ceil(sms) * sms) as f64
        };
        if fill(128) > fill(256) + 0.1 {
            128
        } else {
            256
        }
    }

    /// `C = alpha * A @ Bt^T + beta * C` with `A [m, k]` and `Bt [n, k]` K-major bf16 (16-byte
    /// aligned, `k` a multiple of 8), on the tile width `bn` (128 or 256).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        bn: usize,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: &GpuBuf<bf16>,
        bt: &GpuBuf<bf16>,
        beta: f32,
        c: &mut GpuBuf<f32>,
    ) -> Result<(), String> {
        if a.len() < m * k || bt.len() < n * k || c.len() < m * n {
            return Err(format!("{m}x{n}x{k}: A holds {}, Bt {}, C {} elements", a.len(), bt.len(), c.len()));
        }
        if !k.is_multiple_of(8) || !a.ptr().is_multiple_of(16) || !bt.ptr().is_multiple_of(16) {
            return Err(format!("{m}x{n}x{k}: the kernel needs k a multiple of 8 and 16-byte aligned operands"));
        }
        let f = match bn {
            128 => &self.b128,
            256 => &self.b256,
            _ => return Err(format!("tile width {bn}: 128 or 256")),
        };
        let smem = 4 * (STAGE_A + bn as u32 * 64 * 2) + 1024;
        f.set_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32).map_err(|e| format!("{e:?}"))?;
        let cfg = LaunchConfig { grid_dim: (n.div_ceil(bn) as u32, m.div_ceil(128) as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: smem };
        let (mi, ni, ki, pa, pb, pc) = (m as i32, n as i32, k as i32, a.ptr(), bt.ptr(), c.ptr());
        let mut l = self.gpu.stream().launch_builder(f);
        l.arg(&mi).arg(&ni).arg(&ki).arg(&alpha).arg(&pa).arg(&pb).arg(&beta).arg(&pc);
        // SAFETY: A holds m x k, Bt n x k and C m x n elements (checked above).
        unsafe { l.launch(cfg) }.map_err(|e| format!("launch of gemm_wgmma_b{bn}: {e:?}"))?;
        Ok(())
    }

    /// `C = alpha * op(A) @ op(B) + beta * C` as the library's launcher ran this kernel: operands
    /// whose contiguous dimension is not k transposed into K-major scratch copies first.
    #[allow(clippy::too_many_arguments)]
    fn gemm_any(
        &self,
        bn: usize,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: &GpuBuf<bf16>,
        ta: bool,
        b: &GpuBuf<bf16>,
        tb: bool,
        beta: f32,
        c: &mut GpuBuf<f32>,
    ) -> Result<(), String> {
        let err = |e: codistill::Error| e.to_string();
        let a_t;
        let a = if ta {
            let mut t = self.gpu.alloc::<bf16>(m * k).map_err(err)?;
            transpose_bf16(a, k, m, &mut t).map_err(err)?;
            a_t = t;
            &a_t
        } else {
            a
        };
        let b_t;
        let bt = if tb {
            b
        } else {
            let mut t = self.gpu.alloc::<bf16>(n * k).map_err(err)?;
            transpose_bf16(b, k, n, &mut t).map_err(err)?;
            b_t = t;
            &b_t
        };
        self.gemm(bn, m, n, k, alpha, a, bt, beta, c)
    }
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

/// ||got - want|| / ||want||; infinite where an output is not finite (unwritten: the outputs
/// start as NaN).
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    if got.iter().any(|x| !x.is_finite()) {
        return f64::INFINITY;
    }
    let num: f64 = got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).powi(2)).sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    (num / den.max(1e-300)).sqrt()
}

fn rounded(v: Vec<f32>) -> (Vec<bf16>, Vec<f32>) {
    let h: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
    let f = h.iter().map(|x| x.to_f32()).collect();
    (h, f)
}

fn poisoned(g: &Arc<Gpu>, n: usize) -> Result<GpuBuf<f32>, String> {
    let mut c = g.alloc::<f32>(n).map_err(|e| e.to_string())?;
    c.memset(0xFF).map_err(|e| e.to_string())?;
    Ok(c)
}

/// Exact integer products that name the element each output read (as tests/gpu.rs's probes for
/// the library's kernels): rows, columns, A's k and B's k, K-major operands, both tile widths.
fn probe(lab: &Lab) -> Result<usize, String> {
    let g = &lab.gpu;
    let mut failures = 0;
    for &(m, n, kk) in &[(128usize, 256usize, 64usize), (128, 256, 192), (256, 512, 128), (192, 136, 80)] {
        let perm = |i: usize| (i * 5 + i / 8) % kk;
        let lo = |i: usize| (i % 256 + 1) as f32;
        let hi = |i: usize| (256 * (i / 256)) as f32;
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
        for (name, a, b) in probes {
            let (ah, af) = rounded(a.clone());
            let (bh, bf) = rounded(b.clone());
            if af != a || bf != b {
                return Err(format!("probe {name}: its values must be exact in bf16"));
            }
            let (da, db) = (g.upload(&ah).map_err(|e| e.to_string())?, g.upload(&bh).map_err(|e| e.to_string())?);
            let want = gemm_ref(m, n, kk, &af, false, &bf, true);
            for bn in [128, 256] {
                let mut dc = poisoned(g, m * n)?;
                lab.gemm(bn, m, n, kk, 1.0, &da, &db, 0.0, &mut dc)?;
                let got = dc.download().map_err(|e| e.to_string())?;
                let wrong: Vec<usize> = (0..m * n).filter(|&x| got[x] as f64 != want[x]).collect();
                if wrong.is_empty() {
                    println!("probe b{bn} {m}x{n}x{kk} {name}: exact");
                } else {
                    failures += 1;
                    let first: Vec<String> = wrong.iter().take(8).map(|&x| format!("({}, {}): {} / {}", x / n, x % n, got[x] - 1.0, want[x] - 1.0)).collect();
                    println!(
                        "probe b{bn} {m}x{n}x{kk} {name}: {} of {} outputs wrong; first (row, col) read / should: {}",
                        wrong.len(),
                        m * n,
                        first.join(" ")
                    );
                }
            }
        }
    }
    Ok(failures)
}

/// Random bf16 operands against float64, every orientation (through the transposes), odd sizes,
/// both tile widths, alpha and beta; outputs poisoned with NaN first. Bound 1e-3 relative.
fn validate(lab: &Lab, r: &mut Rng) -> Result<usize, String> {
    let g = &lab.gpu;
    let mut failures = 0;
    let shapes = [
        (8, 13, 8),
        (64, 64, 64),
        (127, 129, 72),
        (130, 260, 96),
        (128, 128, 32),
        (129, 136, 8),
        (513, 257, 72),
        (1, 300, 64),
        (200, 3, 136),
        (392, 520, 136),
        (300, 512, 1024),
        (64, 1024, 4096),
        (33, 100, 3000),
    ];
    for &(m, n, kk) in &shapes {
        for (ta, tb) in [(false, true), (false, false), (true, false), (true, true)] {
            let (ah, af) = rounded(r.normal_vec(m * kk, 1.0));
            let (bh, bf) = rounded(r.normal_vec(kk * n, 1.0));
            let (da, db) = (g.upload(&ah).map_err(|e| e.to_string())?, g.upload(&bh).map_err(|e| e.to_string())?);
            let want = gemm_ref(m, n, kk, &af, ta, &bf, tb);
            let c0 = r.normal_vec(m * n, 1.0);
            let want2: Vec<f64> = want.iter().zip(&c0).map(|(w, &c)| 2.0 * w + c as f64).collect();
            for bn in [128, 256] {
                let mut dc = poisoned(g, m * n)?;
                lab.gemm_any(bn, m, n, kk, 1.0, &da, ta, &db, tb, 0.0, &mut dc)?;
                let e1 = rel_err(&dc.download().map_err(|e| e.to_string())?, &want);
                let mut dc = g.upload(&c0).map_err(|e| e.to_string())?;
                lab.gemm_any(bn, m, n, kk, 2.0, &da, ta, &db, tb, 1.0, &mut dc)?;
                let e2 = rel_err(&dc.download().map_err(|e| e.to_string())?, &want2);
                let ok = e1 < 1e-3 && e2 < 1e-3;
                failures += !ok as usize;
                println!("valid b{bn} {m}x{n}x{kk} ta={ta} tb={tb}: rel err {e1:.2e}, accumulating {e2:.2e} {}", if ok { "ok" } else { "FAILED" });
            }
        }
    }
    Ok(failures)
}

/// Median milliseconds of `f` over `iters` launches (CUDA events), after 3 to warm up.
fn time_ms(g: &Arc<Gpu>, iters: usize, mut f: impl FnMut() -> Result<(), String>) -> Result<f64, String> {
    for _ in 0..3 {
        f()?;
    }
    g.sync().map_err(|e| e.to_string())?;
    let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let a = g.stream().record_event(flags).map_err(|e| format!("{e:?}"))?;
        f()?;
        let b = g.stream().record_event(flags).map_err(|e| format!("{e:?}"))?;
        times.push(a.elapsed_ms(&b).map_err(|e| format!("{e:?}"))? as f64);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[iters / 2])
}

/// The lab kernel (its time includes the transposes the library's launcher made for it) beside
/// the library's TMA kernel and mma.sync, at the shapes of benches/gpu.rs; the outputs compared.
fn bench(lab: &Lab, r: &mut Rng) -> Result<usize, String> {
    let g = &lab.gpu;
    let mut mismatches = 0;
    let shapes: &[(&str, usize, usize, usize, bool, bool)] = &[
        ("square", 4096, 4096, 4096, false, false),
        ("square", 4096, 4096, 4096, false, true),
        ("square", 8192, 8192, 8192, false, false),
        ("lstm x@W_ih", 2240, 4096, 1024, false, false),
        ("lstm logits h@W_out^T", 2240, 10000, 1024, false, true),
        ("lstm dW = h^T@dlogits", 1024, 10000, 2240, true, false),
        ("criteo mlp", 8192, 512, 432, false, false),
    ];
    println!("gemm {:<24} {:>18} {:>28} {:>9} {:>8} {:>9}", "shape", "", "kernel", "ms", "TFLOP/s", "vs tma");
    for &(what, m, n, kk, ta, tb) in shapes {
        let to_bf16 = |v: Vec<f32>| v.into_iter().map(bf16::from_f32).collect::<Vec<bf16>>();
        let a = g.upload(&to_bf16(r.normal_vec(m * kk, 1.0))).map_err(|e| e.to_string())?;
        let b = g.upload(&to_bf16(r.normal_vec(kk * n, 1.0))).map_err(|e| e.to_string())?;
        let mut c = g.alloc::<f32>(m * n).map_err(|e| e.to_string())?;
        let iters = if m * n * kk > 1 << 36 { 10 } else { 50 };
        let flops = 2.0 * (m * n * kk) as f64;
        let lib = |kernel: MatmulKernel| Gemm { kernel, ..Gemm::from_env().unwrap_or_default() };
        let err = |e: codistill::Error| e.to_string();
        let tma_ms = time_ms(g, iters, || gemm_bf16_with(lib(MatmulKernel::WgmmaTma), m, n, kk, 1.0, &a, ta, &b, tb, 0.0, &mut c).map_err(err))?;
        let reference = c.download().map_err(|e| e.to_string())?;
        let mma_ms = time_ms(g, iters, || gemm_bf16_with(lib(MatmulKernel::MmaSync), m, n, kk, 1.0, &a, ta, &b, tb, 0.0, &mut c).map_err(err))?;
        let bn = lab.tile_for(m, n);
        let mut rows = vec![("library wgmma-tma".to_string(), tma_ms, true), ("library mma.sync".to_string(), mma_ms, true)];
        for tile in [bn, if bn == 256 { 128 } else { 256 }] {
            let ms = time_ms(g, iters, || lab.gemm_any(tile, m, n, kk, 1.0, &a, ta, &b, tb, 0.0, &mut c))?;
            let got = c.download().map_err(|e| e.to_string())?;
            let num: f64 = got.iter().zip(&reference).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
            let den: f64 = reference.iter().map(|y| (*y as f64).powi(2)).sum();
            let agrees = (num / den.max(1e-300)).sqrt() < 1e-3;
            mismatches += !agrees as usize;
            let which = if tile == bn { "the launcher's pick" } else { "the other width" };
            rows.push((format!("lab cp.async b{tile} ({which})"), ms, agrees));
        }
        let t = format!("{m}x{n}x{kk} {}{}", if ta { "T" } else { "N" }, if tb { "T" } else { "N" });
        for (kernel, ms, agrees) in rows {
            let mark = if agrees { "" } else { " MISMATCH" };
            println!("gemm {what:<24} {t:>18} {kernel:>28} {ms:>9.3} {:>8.1} {:>8.2}x{mark}", flops / ms / 1e9, tma_ms / ms);
        }
    }
    Ok(mismatches)
}

fn run() -> Result<usize, String> {
    let validate_only = std::env::args().any(|a| a == "--validate-only");
    if let Some(bad) = std::env::args().skip(1).find(|a| a != "--validate-only") {
        return Err(format!("unknown option {bad:?} (the one option is --validate-only)"));
    }
    let gpu = cuda::gpu(0).map_err(|e| format!("no usable GPU: {e}"))?;
    if !gpu.has_wgmma() {
        return Err(format!("{} is not compute capability 9.0: the lab kernel needs wgmma", gpu.name().unwrap_or_default()));
    }
    println!("lab gemm_wgmma_cpasync on {} ({} SMs)", gpu.name().unwrap_or_default(), gpu.sm_count());
    let lab = Lab::new(gpu)?;
    let seed = std::env::var("CODISTILL_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261202u64);
    println!("seed {seed} (CODISTILL_TEST_SEED)");
    let mut r = Rng::new(seed);
    let mut failures = probe(&lab)?;
    failures += validate(&lab, &mut r)?;
    lab.gpu.sync().map_err(|e| e.to_string())?;
    if !validate_only && failures == 0 {
        failures += bench(&lab, &mut r)?;
    }
    Ok(failures)
}

fn main() {
    match run() {
        Ok(0) => println!("PASS"),
        Ok(n) => {
            println!("FAIL: {n} checks failed");
            std::process::exit(1);
        }
        Err(e) => {
            println!("FAIL: {e}");
            std::process::exit(if e.starts_with("no usable GPU") || e.contains("compute capability") { 2 } else { 1 });
        }
    }
}
