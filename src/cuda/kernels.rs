//! One launcher per kernel in `kernels/`, each with the contract of its CPU twin in `ops/` (the
//! twin's doc is the kernel's spec). Launchers queue work on the device's compute stream and
//! return; `GpuBuf::download` or `Gpu::sync` waits and surfaces asynchronous faults. Arguments are
//! checked here (lengths, dtypes, ranges) so that a kernel never reads or writes past a buffer.

use super::{k, Gpu, GpuBuf, GpuRange, Kernel, MatmulKernel};
use crate::ops::elementwise::{Binary, Unary};
use crate::ops::softmax_kl::{DistillLoss, DistillParams};
use crate::{bail, Error, Result};
use cudarc::driver::{sys, DeviceRepr, LaunchConfig, PushKernelArg};
use half::bf16;
use std::sync::Arc;

macro_rules! launch {
    ($gpu:expr, $kernel:expr, $cfg:expr; $($arg:ident),* $(,)?) => {{
        let kernel: Kernel = $kernel;
        let f = $gpu.function(kernel)?;
        let mut b = $gpu.stream().launch_builder(&f);
        $( b.arg(&$arg); )*
        // SAFETY: each launcher checks its buffers' lengths against the sizes the kernel uses.
        unsafe { b.launch($cfg) }.map_err(|e| Error::Device(format!("launch of {}: {e:?}", kernel.name)))?;
        sync_if_asked(&$gpu, kernel.name)?;
    }};
}

/// With `CODISTILL_SYNC_EACH_LAUNCH` set, waits for the kernel just queued, so that a fault is
/// reported with its name.
fn sync_if_asked(gpu: &Gpu, name: &str) -> Result<()> {
    if std::env::var_os("CODISTILL_SYNC_EACH_LAUNCH").is_some() {
        gpu.sync().map_err(|e| Error::Device(format!("kernel {name} failed: {e}")))?;
    }
    Ok(())
}

const THREADS: u32 = 256;

/// A grid-stride launch over n elements.
fn elems(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, 132 * 16) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

fn need<T: Copy>(what: &str, b: &impl GpuRange<T>, n: usize) -> Result<()> {
    if b.len() < n {
        bail!(Shape, "{what} holds {} elements on the device, the kernel needs {n}", b.len());
    }
    Ok(())
}

fn same_gpu<A: Copy, B: Copy>(a: &impl GpuRange<A>, b: &impl GpuRange<B>) -> Result<()> {
    if !Arc::ptr_eq(a.gpu(), b.gpu()) {
        bail!(Device, "buffers on cuda:{} and cuda:{}", a.gpu().ordinal(), b.gpu().ordinal());
    }
    Ok(())
}

pub fn fill(x: &mut impl GpuRange<f32>, v: f32) -> Result<()> {
    let (p, n) = (x.ptr(), x.len() as i64);
    launch!(x.gpu(), k::elementwise::fill_f32, elems(x.len()); p, v, n);
    Ok(())
}

// ---- matmul -------------------------------------------------------------------------------------

/// `C = alpha * op(A) @ op(B) + beta * C` in fp32 on the CUDA cores; twin of `gemm_cpu`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &impl GpuRange<f32>,
    trans_a: bool,
    b: &impl GpuRange<f32>,
    trans_b: bool,
    beta: f32,
    c: &mut impl GpuRange<f32>,
) -> Result<()> {
    need("A", a, m * k)?;
    need("B", b, k * n)?;
    need("C", c, m * n)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let cfg = LaunchConfig { grid_dim: (n.div_ceil(64) as u32, m.div_ceil(64) as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let (mi, ni, ki) = (m as i32, n as i32, k as i32);
    let (pa, pb, pc) = (a.ptr(), b.ptr(), c.ptr());
    let (ta, tb) = (trans_a as i32, trans_b as i32);
    launch!(a.gpu(), k::matmul::gemm_f32, cfg; mi, ni, ki, alpha, pa, ta, pb, tb, beta, pc);
    Ok(())
}

const GEMM_SMEM: u32 = 2 * 4 * 128 * (32 + 8) * 2;

/// `C = alpha * op(A) @ op(B) + beta * C` with bf16 operands on the tensor cores and fp32
/// accumulation; the twin of `gemm_cpu` on the operands widened to f32. The kernel is the
/// process's choice ([`crate::cuda::matmul_kernel`]).
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &impl GpuRange<bf16>,
    trans_a: bool,
    b: &impl GpuRange<bf16>,
    trans_b: bool,
    beta: f32,
    c: &mut impl GpuRange<f32>,
) -> Result<()> {
    gemm_bf16_with(super::matmul_kernel(), m, n, k, alpha, a, trans_a, b, trans_b, beta, c)
}

/// [`gemm_bf16`] on a chosen kernel: `MmaSync` on any GPU from sm_80; `Wgmma` on compute
/// capability 9.0 with `k` a multiple of 8 (an error elsewhere, never a silent fallback); `Auto`
/// as documented on [`MatmulKernel`].
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16_with(
    kernel: MatmulKernel,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &impl GpuRange<bf16>,
    trans_a: bool,
    b: &impl GpuRange<bf16>,
    trans_b: bool,
    beta: f32,
    c: &mut impl GpuRange<f32>,
) -> Result<()> {
    need("A", a, m * k)?;
    need("B", b, k * n)?;
    need("C", c, m * n)?;
    same_gpu(a, b)?;
    same_gpu(a, c)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let gpu = a.gpu().clone();
    if wgmma_for(&gpu, kernel, m, n, k)? {
        let tma = uses_tma(kernel);
        // Each operand K-major (A as [m, k], B as [n, k]), or, on the TMA kernel, MN-major as it is
        // stored (A stored [k, m], B stored [k, n]) where its rows are 16-byte aligned.
        let (a_mn, b_mn) = (tma && mn_major_ok(a, m, trans_a), tma && mn_major_ok(b, n, !trans_b));
        let (pa, _a_tmp) = if a_mn { (a.ptr(), None) } else { kmajor_bf16(a, m, k, trans_a)? };
        let (pb, _b_tmp) = if b_mn { (b.ptr(), None) } else { kmajor_bf16(b, n, k, !trans_b)? };
        // The scratch operands go back to the allocator after the launch is queued: later work on
        // the same stream runs after the kernel.
        let layout = Operands { a: pa, a_mn, b: pb, b_mn };
        return launch_wgmma(&gpu, tma, m, n, k, alpha, layout, beta, c);
    }
    // 16-byte copies need the operand's contiguous dimension in whole 8-element chunks.
    let a_contig = if trans_a { m } else { k };
    let b_contig = if trans_b { k } else { n };
    let vec_a = (a_contig % 8 == 0 && a.ptr() % 16 == 0) as i32;
    let vec_b = (b_contig % 8 == 0 && b.ptr() % 16 == 0) as i32;
    let kernel = match (trans_a, trans_b) {
        (false, false) => k::matmul::gemm_bf16_nn,
        (false, true) => k::matmul::gemm_bf16_nt,
        (true, false) => k::matmul::gemm_bf16_tn,
        (true, true) => k::matmul::gemm_bf16_tt,
    };
    let name = kernel.name;
    let f = gpu.function(kernel)?;
    f.set_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, GEMM_SMEM as i32)?;
    let (splits, kchunk) = split_k(&gpu, m, n, k);
    // Split-K: the partial products go to a workspace, summed into C by splitk_reduce.
    let ws = if splits > 1 { Some(gpu.alloc::<f32>(splits * m * n)?) } else { None };
    let cfg = LaunchConfig { grid_dim: (n.div_ceil(128) as u32, m.div_ceil(128) as u32, splits as u32), block_dim: (256, 1, 1), shared_mem_bytes: GEMM_SMEM };
    let (mi, ni, ki, kc) = (m as i32, n as i32, k as i32, kchunk as i32);
    let (pa, pb) = (a.ptr(), b.ptr());
    let (alpha_k, beta_k, pc) = match &ws {
        Some(w) => (1.0f32, 0.0f32, w.ptr()),
        None => (alpha, beta, c.ptr()),
    };
    let mut l = gpu.stream().launch_builder(&f);
    l.arg(&mi).arg(&ni).arg(&ki).arg(&alpha_k).arg(&pa).arg(&pb).arg(&beta_k).arg(&pc).arg(&vec_a).arg(&vec_b).arg(&kc);
    unsafe { l.launch(cfg) }.map_err(|e| Error::Device(format!("launch of {name}: {e:?}")))?;
    sync_if_asked(&gpu, name)?;
    if let Some(w) = &ws {
        let (pw, sp, mn, pc) = (w.ptr(), splits as i32, (m * n) as i64, c.ptr());
        launch!(gpu, k::matmul::splitk_reduce, elems(m * n); pw, sp, mn, alpha, beta, pc);
    }
    Ok(())
}

/// A process-wide on/off switch, on unless its environment variable is `0`, until set.
struct Switch {
    state: std::sync::atomic::AtomicU8,
    var: &'static str,
}

impl Switch {
    const fn new(var: &'static str) -> Self {
        Switch { state: std::sync::atomic::AtomicU8::new(2), var }
    }

    fn set(&self, on: bool) {
        self.state.store(on as u8, std::sync::atomic::Ordering::Relaxed);
    }

    fn get(&self) -> bool {
        match self.state.load(std::sync::atomic::Ordering::Relaxed) {
            0 => false,
            1 => true,
            _ => {
                let on = std::env::var(self.var).as_deref() != Ok("0");
                self.set(on);
                on
            }
        }
    }
}

static SPLIT_K: Switch = Switch::new("CODISTILL_SPLIT_K");

/// Turns split-K of the mma.sync kernel on or off for the process (overrides `CODISTILL_SPLIT_K`).
pub fn set_split_k(on: bool) {
    SPLIT_K.set(on);
}

/// Whether split-K is on: as set, else off where `CODISTILL_SPLIT_K=0` (the product then runs as
/// one grid of output tiles, as before split-K existed), else on.
pub fn split_k_enabled() -> bool {
    SPLIT_K.get()
}

/// (splits, k per split, a multiple of the kernel's 32-deep k tile) for the mma.sync kernel: one
/// split unless the 128 x 128 output tiles would fill at most half the multiprocessors and k is
/// long (at least 512); then enough splits to fill the device, each at least 256 deep.
fn split_k(gpu: &Gpu, m: usize, n: usize, k: usize) -> (usize, usize) {
    let tiles = n.div_ceil(128) * m.div_ceil(128);
    let sms = gpu.sm_count();
    if !split_k_enabled() || k < 512 || tiles * 2 > sms {
        return (1, k);
    }
    let want = sms.div_ceil(tiles).min(k / 256).max(1);
    let kchunk = k.div_ceil(want).div_ceil(32) * 32;
    (k.div_ceil(kchunk), kchunk)
}

/// `C = alpha * op(A) @ op(B) + beta * C` for f32 operands rounded to bf16 on the device (the
/// `MatmulPrecision::Bf16` path), on the process's kernel choice (see [`gemm_f32_as_bf16_with`]).
#[allow(clippy::too_many_arguments)]
pub fn gemm_f32_as_bf16(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &impl GpuRange<f32>,
    trans_a: bool,
    b: &impl GpuRange<f32>,
    trans_b: bool,
    beta: f32,
    c: &mut impl GpuRange<f32>,
) -> Result<()> {
    gemm_f32_as_bf16_with(super::matmul_kernel(), m, n, k, alpha, a, trans_a, b, trans_b, beta, c)
}

/// [`gemm_f32_as_bf16`] on a chosen kernel: on a `wgmma` kernel each operand is rounded straight
/// into the layout it reads (one pass, transposing where needed), else rounded and passed to
/// `mma.sync`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_f32_as_bf16_with(
    kernel: MatmulKernel,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &impl GpuRange<f32>,
    trans_a: bool,
    b: &impl GpuRange<f32>,
    trans_b: bool,
    beta: f32,
    c: &mut impl GpuRange<f32>,
) -> Result<()> {
    need("A", a, m * k)?;
    need("B", b, k * n)?;
    need("C", c, m * n)?;
    same_gpu(a, b)?;
    let gpu = a.gpu().clone();
    if m > 0 && n > 0 && wgmma_for(&gpu, kernel, m, n, k)? {
        // Rounded as stored where the TMA kernel reads that layout (MN-major rows of a multiple of
        // 8 elements), else rounded and transposed into the K-major layout in one pass.
        let tma = uses_tma(kernel);
        let (mut ab, mut bb) = (gpu.alloc::<bf16>(m * k)?, gpu.alloc::<bf16>(n * k)?);
        let (a_mn, b_mn) = (tma && mn_major_ok(&ab, m, trans_a), tma && mn_major_ok(&bb, n, !trans_b));
        if trans_a && !a_mn {
            transpose_f32_to_bf16(a, k, m, &mut ab)?;
        } else {
            f32_to_bf16(&a.range(0, m * k)?, &mut ab)?;
        }
        if !trans_b && !b_mn {
            transpose_f32_to_bf16(b, k, n, &mut bb)?;
        } else {
            f32_to_bf16(&b.range(0, n * k)?, &mut bb)?;
        }
        let layout = Operands { a: ab.ptr(), a_mn, b: bb.ptr(), b_mn };
        return launch_wgmma(&gpu, tma, m, n, k, alpha, layout, beta, c);
    }
    let mut ab = gpu.alloc::<bf16>(m * k)?;
    f32_to_bf16(&a.range(0, m * k)?, &mut ab)?;
    let mut bb = gpu.alloc::<bf16>(n * k)?;
    f32_to_bf16(&b.range(0, n * k)?, &mut bb)?;
    gemm_bf16_with(MatmulKernel::MmaSync, m, n, k, alpha, &ab, trans_a, &bb, trans_b, beta, c)
}

fn uses_tma(kernel: MatmulKernel) -> bool {
    matches!(kernel, MatmulKernel::Auto | MatmulKernel::WgmmaTma | MatmulKernel::AutoWgmmaTma)
}

static MN_MAJOR: Switch = Switch::new("CODISTILL_WGMMA_MN");

/// Turns the TMA kernel's MN-major operands on or off for the process (overrides
/// `CODISTILL_WGMMA_MN`). Off, every operand whose contiguous dimension is not k is transposed
/// into a scratch copy first, as the cp.async `wgmma` kernel always does.
pub fn set_mn_major(on: bool) {
    MN_MAJOR.set(on);
}

/// Whether the TMA kernel reads operands stored MN-major (A as [k, m], B as [k, n]) as they lie,
/// with `wgmma`'s transpose flag: as set, else off where `CODISTILL_WGMMA_MN=0`, else on.
pub fn mn_major_enabled() -> bool {
    MN_MAJOR.get()
}

/// Whether an operand stored MN-major (`stored_mn`: its `mn` index contiguous) can be read so by
/// the TMA kernel: MN-major loads on, a 16-byte aligned start and rows of a multiple of 8 elements.
fn mn_major_ok(x: &impl GpuRange<bf16>, mn: usize, stored_mn: bool) -> bool {
    stored_mn && mn_major_enabled() && mn.is_multiple_of(8) && x.ptr().is_multiple_of(16)
}

/// The device addresses of a `wgmma` product's operands and their layouts: A [m, k] (or, with
/// `a_mn`, [k, m]) and B [n, k] (or, with `b_mn`, [k, n]).
struct Operands {
    a: u64,
    a_mn: bool,
    b: u64,
    b_mn: bool,
}

/// Whether a bf16 product of this shape runs on `wgmma` under `kernel`.
fn wgmma_for(gpu: &Gpu, kernel: MatmulKernel, m: usize, n: usize, k: usize) -> Result<bool> {
    match kernel {
        MatmulKernel::MmaSync => Ok(false),
        MatmulKernel::Auto | MatmulKernel::AutoWgmma | MatmulKernel::AutoWgmmaTma => {
            Ok(gpu.has_wgmma() && k.is_multiple_of(8) && m >= 128 && n >= 128 && k >= 64)
        }
        MatmulKernel::Wgmma | MatmulKernel::WgmmaTma => {
            if !gpu.has_wgmma() {
                let cc = gpu.context().compute_capability().map(|(a, b)| format!("{a}.{b}")).unwrap_or_else(|e| format!("unknown ({e:?})"));
                bail!(Device, "the wgmma matmul needs a GPU of compute capability 9.0; cuda:{} has {cc}", gpu.ordinal());
            }
            if !k.is_multiple_of(8) {
                bail!(Shape, "the wgmma matmul needs an inner dimension that is a multiple of 8, got {k}");
            }
            Ok(true)
        }
    }
}

/// The device address of `x` as a K-major operand (`rows` rows of `k` contiguous elements, 16-byte
/// aligned): `x` itself where it already is one, else a scratch copy (transposed from `[k, rows]`
/// when `stored_t`), returned so that the caller keeps it alive until the launch is queued.
fn kmajor_bf16(x: &impl GpuRange<bf16>, rows: usize, k: usize, stored_t: bool) -> Result<(u64, Option<GpuBuf<bf16>>)> {
    if !stored_t && x.ptr() % 16 == 0 {
        return Ok((x.ptr(), None));
    }
    let mut t = x.gpu().alloc::<bf16>(rows * k)?;
    if stored_t {
        transpose_bf16(x, k, rows, &mut t)?;
    } else {
        super::copy(&x.range(0, rows * k)?, &mut t)?;
    }
    Ok((t.ptr(), Some(t)))
}

const WG_STAGE_A: u32 = 128 * 64 * 2;

/// A `CUtensorMap`, passed to a kernel by value (`const __grid_constant__ TmaMap`).
#[repr(C, align(64))]
struct TmaMap(sys::CUtensorMap);

// SAFETY: plain bytes, the layout of the kernel's `TmaMap` parameter (128 bytes, 64-byte aligned).
unsafe impl DeviceRepr for TmaMap {}

/// The tensor map of a bf16 operand stored as `outer` rows of `inner` contiguous elements (at a
/// 16-byte aligned `ptr`, `inner` a multiple of 8), in boxes of `box_inner` x `box_outer`, written
/// to shared memory with the 128-byte swizzle; reads past the operand's edges fill zeros. A K-major
/// operand is `rows` x `k` in boxes of 64 k by the tile's rows; an MN-major one `k` x `rows` in
/// boxes of 64 x 64.
fn tma_map(ptr: u64, inner: usize, outer: usize, box_inner: u32, box_outer: u32) -> Result<TmaMap> {
    use sys::{CUtensorMapDataType as D, CUtensorMapFloatOOBfill as F, CUtensorMapInterleave as I, CUtensorMapL2promotion as L, CUtensorMapSwizzle as S};
    let dims: [u64; 2] = [inner as u64, outer as u64];
    let strides: [u64; 1] = [(inner * 2) as u64];
    let boxes: [u32; 2] = [box_inner, box_outer];
    let steps: [u32; 2] = [1, 1];
    let mut map = std::mem::MaybeUninit::<sys::CUtensorMap>::zeroed();
    // SAFETY: every array holds the rank's entries; the map is fully written on success.
    unsafe {
        sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            D::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            2,
            ptr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            steps.as_ptr(),
            I::CU_TENSOR_MAP_INTERLEAVE_NONE,
            S::CU_TENSOR_MAP_SWIZZLE_128B,
            L::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            F::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
        .result()
        .map_err(|e| Error::Device(format!("tensor map of a {outer} x {inner} bf16 operand: {e:?}")))?;
        Ok(TmaMap(map.assume_init()))
    }
}

/// The tensor map of one operand of the TMA kernel: `rows` (M or N) by `k`, K-major in boxes of
/// `tile_rows` x 64 k, or MN-major in boxes of 64 x 64.
fn operand_map(ptr: u64, mn_major: bool, rows: usize, k: usize, tile_rows: u32) -> Result<TmaMap> {
    if mn_major {
        tma_map(ptr, rows, k, 64, 64)
    } else {
        tma_map(ptr, k, rows, 64, tile_rows)
    }
}

/// Launches a `wgmma` kernel on `ops`: with `tma`, `gemm_wgmma_tma` (the variant of the operands'
/// layouts), else `gemm_wgmma_b{128,256}` (K-major operands only).
#[allow(clippy::too_many_arguments)]
fn launch_wgmma(gpu: &Arc<Gpu>, tma: bool, m: usize, n: usize, k: usize, alpha: f32, ops: Operands, beta: f32, c: &mut impl GpuRange<f32>) -> Result<()> {
    let (mi, ni, ki, pc) = (m as i32, n as i32, k as i32, c.ptr());
    let (pa, pb) = (ops.a, ops.b);
    debug_assert!(tma || !(ops.a_mn || ops.b_mn), "the cp.async wgmma kernel reads K-major operands only");
    let (name, f, cfg) = if tma {
        // 4 stages of a 128 x 64 and a 256 x 64 tile, 1 KiB for alignment, 8 mbarriers.
        let smem = 4 * (WG_STAGE_A + 256 * 64 * 2) + 1024 + 64;
        let kernel = match (ops.a_mn, ops.b_mn) {
            (false, false) => k::matmul_sm90a::gemm_wgmma_tma,
            (false, true) => k::matmul_sm90a::gemm_wgmma_tma_nn,
            (true, true) => k::matmul_sm90a::gemm_wgmma_tma_tn,
            (true, false) => k::matmul_sm90a::gemm_wgmma_tma_tt,
        };
        let name = kernel.name;
        let f = gpu.function(kernel)?;
        f.set_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32)?;
        (name, f, LaunchConfig { grid_dim: (n.div_ceil(256) as u32, m.div_ceil(128) as u32, 1), block_dim: (384, 1, 1), shared_mem_bytes: smem })
    } else {
        // One block per multiprocessor at a time (the stages fill shared memory): take the
        // narrower tile only where it fills the last wave clearly better (a first rule; to be
        // tuned on the GPU).
        let sms = gpu.sm_count();
        let fill = |bn: usize| {
            let tiles = n.div_ceil(bn) * m.div_ceil(128);
            tiles as f64 / (tiles.div_ceil(sms) * sms) as f64
        };
        let bn: usize = if fill(128) > fill(256) + 0.1 { 128 } else { 256 };
        let kernel = if bn == 256 { k::matmul_sm90a::gemm_wgmma_b256 } else { k::matmul_sm90a::gemm_wgmma_b128 };
        let name = kernel.name;
        let smem = 4 * (WG_STAGE_A + bn as u32 * 64 * 2) + 1024;
        let f = gpu.function(kernel)?;
        f.set_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32)?;
        (name, f, LaunchConfig { grid_dim: (n.div_ceil(bn) as u32, m.div_ceil(128) as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: smem })
    };
    let mut l = gpu.stream().launch_builder(&f);
    let maps;
    if tma {
        maps = (operand_map(pa, ops.a_mn, m, k, 128)?, operand_map(pb, ops.b_mn, n, k, 256)?);
        l.arg(&maps.0).arg(&maps.1).arg(&mi).arg(&ni).arg(&ki).arg(&alpha).arg(&beta).arg(&pc);
    } else {
        l.arg(&mi).arg(&ni).arg(&ki).arg(&alpha).arg(&pa).arg(&pb).arg(&beta).arg(&pc);
    }
    // SAFETY: the operands hold m x k and n x k elements and C m x n (checked by the callers).
    unsafe { l.launch(cfg) }.map_err(|e| Error::Device(format!("launch of {name}: {e:?}")))?;
    sync_if_asked(gpu, name)
}

/// `out[c, r] = x[r, c]` for `x` of `[r, c]` bf16 (sm_90 module; used to lay operands out for
/// the `wgmma` kernel).
pub fn transpose_bf16(x: &impl GpuRange<bf16>, r: usize, c: usize, out: &mut impl GpuRange<bf16>) -> Result<()> {
    transpose(k::matmul_sm90a::transpose_bf16, x, r, c, out)
}

/// `out[c, r] = bf16(x[r, c])` for `x` of `[r, c]` f32, rounded to nearest even.
pub fn transpose_f32_to_bf16(x: &impl GpuRange<f32>, r: usize, c: usize, out: &mut impl GpuRange<bf16>) -> Result<()> {
    transpose(k::matmul_sm90a::transpose_f32_to_bf16, x, r, c, out)
}

/// Launches one of the two transposes (32 x 32 tiles, 256 threads a block).
fn transpose<T: Copy>(kernel: Kernel, x: &impl GpuRange<T>, r: usize, c: usize, out: &mut impl GpuRange<bf16>) -> Result<()> {
    need("x", x, r * c)?;
    need("out", out, r * c)?;
    let gpu = x.gpu();
    let cfg = LaunchConfig { grid_dim: (c.div_ceil(32) as u32, r.div_ceil(32) as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let (ri, ci, px, po) = (r as i32, c as i32, x.ptr(), out.ptr());
    let (name, f) = (kernel.name, gpu.function(kernel)?);
    let mut l = gpu.stream().launch_builder(&f);
    l.arg(&ri).arg(&ci).arg(&px).arg(&po);
    // SAFETY: both ranges hold r x c elements (checked above).
    unsafe { l.launch(cfg) }.map_err(|e| Error::Device(format!("launch of {name}: {e:?}")))?;
    sync_if_asked(gpu, name)
}

// ---- embedding ----------------------------------------------------------------------------------

/// `out[r] = table[ids[r]]`; twin of `gather_cpu`. Ids must already be checked against `vocab`.
pub fn gather(table: &impl GpuRange<f32>, vocab: usize, dim: usize, ids: &impl GpuRange<i32>, out: &mut impl GpuRange<f32>) -> Result<()> {
    need("table", table, vocab * dim)?;
    need("out", out, ids.len() * dim)?;
    same_gpu(table, ids)?;
    if ids.is_empty() || dim == 0 {
        return Ok(());
    }
    let (pt, v, d, pi, n, po) = (table.ptr(), vocab as i32, dim as i32, ids.ptr(), ids.len() as i32, out.ptr());
    let work = if dim.is_multiple_of(4) { ids.len() * dim / 4 } else { ids.len() * dim };
    launch!(table.gpu(), k::embedding::embedding_gather, elems(work); pt, v, d, pi, n, po);
    Ok(())
}

/// How the embedding backward adds rows that share an id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScatterMode {
    /// atomicAdd: fastest; the rounding of repeated ids varies from run to run.
    Atomic,
    /// Positions sorted by id on the host, one warp per id adding in position order: bitwise
    /// identical to `scatter_add_cpu`, run after run.
    Deterministic,
}

/// Positions sorted stably by id, and where each distinct id's run starts (one extra entry at the
/// end): the plan for the deterministic scatter-add.
pub fn sorted_segments(ids: &[i32]) -> (Vec<i32>, Vec<i32>) {
    let mut order: Vec<i32> = (0..ids.len() as i32).collect();
    order.sort_by_key(|&p| ids[p as usize]);
    let mut starts = Vec::new();
    for (i, &p) in order.iter().enumerate() {
        if i == 0 || ids[p as usize] != ids[order[i - 1] as usize] {
            starts.push(i as i32);
        }
    }
    starts.push(ids.len() as i32);
    (order, starts)
}

/// `dtable[ids[r]] += dout[r]`; twin of `scatter_add_cpu`. `host_ids` (the same ids, on the host)
/// is needed for `Deterministic`.
pub fn scatter_add(
    dout: &impl GpuRange<f32>,
    vocab: usize,
    dim: usize,
    ids: &impl GpuRange<i32>,
    host_ids: Option<&[i32]>,
    dtable: &mut impl GpuRange<f32>,
    mode: ScatterMode,
) -> Result<()> {
    need("dtable", dtable, vocab * dim)?;
    need("dout", dout, ids.len() * dim)?;
    if ids.is_empty() || dim == 0 {
        return Ok(());
    }
    let gpu = dout.gpu().clone();
    let (pd, v, d, pi, n, pt) = (dout.ptr(), vocab as i32, dim as i32, ids.ptr(), ids.len() as i32, dtable.ptr());
    match mode {
        ScatterMode::Atomic => {
            launch!(gpu, k::embedding::embedding_scatter_add_atomic, elems(ids.len() * dim); pd, v, d, pi, n, pt);
        }
        ScatterMode::Deterministic => {
            let h = host_ids.ok_or_else(|| Error::Invalid("the deterministic scatter-add needs the ids on the host".into()))?;
            if h.len() != ids.len() {
                bail!(Shape, "{} host ids for {} device ids", h.len(), ids.len());
            }
            let (order, starts) = sorted_segments(h);
            let (o, st) = (gpu.upload(&order)?, gpu.upload(&starts)?);
            scatter_add_planned(dout, vocab, dim, ids, &o, &st, dtable)?;
        }
    }
    Ok(())
}

/// The deterministic scatter-add with its plan (`sorted_segments` of the same ids) already on the
/// device: a trainer that knows its ids ahead builds the plan off the compute path.
pub fn scatter_add_planned(
    dout: &impl GpuRange<f32>,
    vocab: usize,
    dim: usize,
    ids: &impl GpuRange<i32>,
    order: &impl GpuRange<i32>,
    starts: &impl GpuRange<i32>,
    dtable: &mut impl GpuRange<f32>,
) -> Result<()> {
    need("dtable", dtable, vocab * dim)?;
    need("dout", dout, ids.len() * dim)?;
    need("order", order, ids.len())?;
    if starts.is_empty() || ids.is_empty() || dim == 0 {
        return Ok(());
    }
    let nseg = (starts.len() - 1) as i32;
    let (pd, v, d, pi, po, ps, pt) = (dout.ptr(), vocab as i32, dim as i32, ids.ptr(), order.ptr(), starts.ptr(), dtable.ptr());
    let warps_per_block = 8usize;
    let blocks = (nseg as usize).div_ceil(warps_per_block).clamp(1, 132 * 16) as u32;
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (32 * warps_per_block as u32, 1, 1), shared_mem_bytes: 0 };
    launch!(dout.gpu(), k::embedding::embedding_scatter_add_sorted, cfg; pd, v, d, pi, po, ps, nseg, pt);
    Ok(())
}

// ---- LSTM cell ----------------------------------------------------------------------------------

/// Twin of `lstm::cell_forward_cpu`: gates `[B, 4H]` in place, writes c and h `[B, H]`; with
/// `h_bf16`, also h rounded to bf16 (the next step's matmul operand).
#[allow(clippy::too_many_arguments)]
pub fn lstm_cell_fwd(
    gates: &mut impl GpuRange<f32>,
    c_prev: &impl GpuRange<f32>,
    c: &mut impl GpuRange<f32>,
    h: &mut impl GpuRange<f32>,
    h_bf16: Option<&mut GpuBuf<bf16>>,
    batch: usize,
    hidden: usize,
) -> Result<()> {
    need("gates", gates, batch * 4 * hidden)?;
    need("c_prev", c_prev, batch * hidden)?;
    need("c", c, batch * hidden)?;
    need("h", h, batch * hidden)?;
    let phb = match h_bf16 {
        Some(x) => {
            need("h_bf16", x, batch * hidden)?;
            x.ptr()
        }
        None => 0u64,
    };
    let (pg, pcp, pc, ph, b, hd) = (gates.ptr(), c_prev.ptr(), c.ptr(), h.ptr(), batch as i32, hidden as i32);
    launch!(gates.gpu(), k::lstm::lstm_cell_fwd, elems(batch * hidden); pg, pcp, pc, ph, phb, b, hd);
    Ok(())
}

/// The fused cell backward; twin of `cell_backward_cpu`. With `dg_bf16`, also writes dgates
/// rounded to bf16 (the operand of dgates W_hh^T).
#[allow(clippy::too_many_arguments)]
pub fn lstm_cell_bwd(
    act: &impl GpuRange<f32>,
    c_prev: &impl GpuRange<f32>,
    c: &impl GpuRange<f32>,
    dh: &impl GpuRange<f32>,
    dc: &mut impl GpuRange<f32>,
    dgates: &mut impl GpuRange<f32>,
    dg_bf16: Option<&mut GpuBuf<bf16>>,
    batch: usize,
    hidden: usize,
) -> Result<()> {
    need("act", act, batch * 4 * hidden)?;
    need("dgates", dgates, batch * 4 * hidden)?;
    need("c_prev", c_prev, batch * hidden)?;
    need("c", c, batch * hidden)?;
    need("dh", dh, batch * hidden)?;
    need("dc", dc, batch * hidden)?;
    let pdgb = match dg_bf16 {
        Some(x) => {
            need("dgates_bf16", x, batch * 4 * hidden)?;
            x.ptr()
        }
        None => 0u64,
    };
    let (pa, pcp, pc, pdh, pdc, pdg, b, hd) = (act.ptr(), c_prev.ptr(), c.ptr(), dh.ptr(), dc.ptr(), dgates.ptr(), batch as i32, hidden as i32);
    launch!(act.gpu(), k::lstm::lstm_cell_bwd, elems(batch * hidden); pa, pcp, pc, pdh, pdc, pdg, pdgb, b, hd);
    Ok(())
}

// ---- softmax-KL ---------------------------------------------------------------------------------

/// The most teachers one softmax-KL launch averages (kernels/softmax_kl.cu's MAX_TEACHERS).
pub const MAX_TEACHERS: usize = 8;

#[repr(C)]
#[derive(Clone, Copy)]
struct TeacherPtrs([u64; MAX_TEACHERS]);
// SAFETY: a plain array of device addresses, laid out as the kernel's struct TeacherPtrs.
unsafe impl DeviceRepr for TeacherPtrs {}

/// The largest student row (bytes) the softmax-KL kernel caches in shared memory.
const SOFTMAX_KL_CACHE_MAX: usize = 200 * 1024;

/// Twin of `softmax_kl_cpu`: writes `grad [rows, cols]` and returns the loss parts (per-row values
/// from the device, summed in f64 on the host in row order).
pub fn softmax_kl(
    student: &impl GpuRange<f32>,
    teachers: &[&GpuBuf<f32>],
    labels: Option<&GpuBuf<i32>>,
    rows: usize,
    cols: usize,
    p: DistillParams,
    grad: &mut impl GpuRange<f32>,
) -> Result<DistillLoss> {
    if teachers.len() > MAX_TEACHERS {
        bail!(Invalid, "{} teachers; one softmax-KL launch averages at most {MAX_TEACHERS}", teachers.len());
    }
    if !(p.temperature > 0.0 && p.temperature.is_finite() && (0.0..=1.0).contains(&p.alpha)) {
        bail!(Invalid, "softmax-KL needs T > 0 and alpha in [0, 1], got T = {}, alpha = {}", p.temperature, p.alpha);
    }
    need("student", student, rows * cols)?;
    need("grad", grad, rows * cols)?;
    let mut tp = TeacherPtrs([0; MAX_TEACHERS]);
    for (i, t) in teachers.iter().enumerate() {
        need("teacher", *t, rows * cols)?;
        tp.0[i] = t.ptr();
    }
    if let Some(y) = labels {
        need("labels", y, rows)?;
    }
    if rows == 0 {
        return Ok(DistillLoss { total: 0.0, hard: 0.0, soft: 0.0 });
    }
    let gpu = student.gpu().clone();
    let hard = gpu.alloc::<f32>(rows)?;
    let soft = gpu.alloc::<f32>(rows)?;
    // Teacher-count class (registers grow with it), block size, and the student row cached in
    // shared memory when it fits (so pass 2 reads it from there instead of L2 or DRAM).
    let (kernel, max_threads): (Kernel, u32) = match teachers.len() {
        0 | 1 => (k::softmax_kl::softmax_kl_k1, 1024),
        2 => (k::softmax_kl::softmax_kl_k2, 1024),
        3 | 4 => (k::softmax_kl::softmax_kl_k4, 512),
        _ => (k::softmax_kl::softmax_kl_k8, 512),
    };
    let threads = if cols >= 16384 {
        max_threads
    } else if cols >= 2048 {
        512.min(max_threads)
    } else {
        128
    };
    let cache_bytes = cols * 4;
    let cache = cache_bytes <= SOFTMAX_KL_CACHE_MAX;
    let (name, f) = (kernel.name, gpu.function(kernel)?);
    if cache {
        f.set_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, cache_bytes as i32)?;
    }
    let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: if cache { cache_bytes as u32 } else { 0 } };
    let (ps, py, c, k, t, a, inv_n) =
        (student.ptr(), labels.map_or(0, |y| y.ptr()), cols as i32, teachers.len() as i32, p.temperature, p.alpha, 1.0 / rows as f32);
    let (pg, ph, pso, cs) = (grad.ptr(), hard.ptr(), soft.ptr(), cache as i32);
    let mut l = gpu.stream().launch_builder(&f);
    l.arg(&ps).arg(&tp).arg(&py).arg(&c).arg(&k).arg(&t).arg(&a).arg(&inv_n).arg(&pg).arg(&ph).arg(&pso).arg(&cs);
    unsafe { l.launch(cfg) }.map_err(|e| Error::Device(format!("launch of {name}: {e:?}")))?;
    sync_if_asked(&gpu, name)?;
    let (hv, sv) = (hard.download()?, soft.download()?);
    let n = rows as f64;
    let hard = hv.iter().map(|&x| x as f64).sum::<f64>() / n;
    let soft = sv.iter().map(|&x| x as f64).sum::<f64>() / n;
    let (t, a) = (p.temperature as f64, p.alpha as f64);
    Ok(DistillLoss { total: (1.0 - a) * hard + a * t * t * soft, hard, soft })
}

// ---- elementwise --------------------------------------------------------------------------------

fn unary_code(op: Unary) -> (i32, f32) {
    match op {
        Unary::Relu => (0, 0.0),
        Unary::Sigmoid => (1, 0.0),
        Unary::Tanh => (2, 0.0),
        Unary::Exp => (3, 0.0),
        Unary::Log => (4, 0.0),
        Unary::Scale(s) => (5, s),
    }
}

pub fn unary(op: Unary, x: &impl GpuRange<f32>, y: &mut impl GpuRange<f32>) -> Result<()> {
    need("y", y, x.len())?;
    let ((code, s), px, py, n) = (unary_code(op), x.ptr(), y.ptr(), x.len() as i64);
    launch!(x.gpu(), k::elementwise::unary_fwd, elems(x.len()); code, s, px, py, n);
    Ok(())
}

pub fn unary_backward(op: Unary, x: &impl GpuRange<f32>, y: &impl GpuRange<f32>, dy: &impl GpuRange<f32>, dx: &mut impl GpuRange<f32>) -> Result<()> {
    let n = x.len();
    need("y", y, n)?;
    need("dy", dy, n)?;
    need("dx", dx, n)?;
    let ((code, s), px, py, pdy, pdx, n64) = (unary_code(op), x.ptr(), y.ptr(), dy.ptr(), dx.ptr(), n as i64);
    launch!(x.gpu(), k::elementwise::unary_bwd, elems(n); code, s, px, py, pdy, pdx, n64);
    Ok(())
}

pub fn binary(op: Binary, a: &impl GpuRange<f32>, b: &impl GpuRange<f32>, out: &mut impl GpuRange<f32>) -> Result<()> {
    let n = a.len();
    need("b", b, n)?;
    need("out", out, n)?;
    let code: i32 = match op {
        Binary::Add => 0,
        Binary::Sub => 1,
        Binary::Mul => 2,
    };
    let (pa, pb, po, n64) = (a.ptr(), b.ptr(), out.ptr(), n as i64);
    launch!(a.gpu(), k::elementwise::binary_fwd, elems(n); code, pa, pb, po, n64);
    Ok(())
}

pub fn add_row_bias(x: &impl GpuRange<f32>, bias: &impl GpuRange<f32>, out: &mut impl GpuRange<f32>) -> Result<()> {
    let (n, d) = (x.len(), bias.len());
    if d == 0 || n % d != 0 {
        bail!(Shape, "{n} elements are not rows of a {d}-wide bias");
    }
    need("out", out, n)?;
    let (px, pb, po, n64, d32) = (x.ptr(), bias.ptr(), out.ptr(), n as i64, d as i32);
    launch!(x.gpu(), k::elementwise::add_row_bias, elems(n); px, pb, po, n64, d32);
    Ok(())
}

/// `a += alpha * b`.
pub fn axpy(alpha: f32, b: &impl GpuRange<f32>, a: &mut impl GpuRange<f32>) -> Result<()> {
    need("b", b, a.len())?;
    let (pb, pa, n) = (b.ptr(), a.ptr(), a.len() as i64);
    launch!(a.gpu(), k::elementwise::axpy, elems(a.len()); alpha, pb, pa, n);
    Ok(())
}

pub fn f32_to_bf16(x: &impl GpuRange<f32>, y: &mut impl GpuRange<bf16>) -> Result<()> {
    need("y", y, x.len())?;
    let (px, py, n) = (x.ptr(), y.ptr(), x.len() as i64);
    launch!(x.gpu(), k::elementwise::f32_to_bf16, elems(x.len()); px, py, n);
    Ok(())
}

pub fn bf16_to_f32(x: &impl GpuRange<bf16>, y: &mut impl GpuRange<f32>) -> Result<()> {
    need("y", y, x.len())?;
    let (px, py, n) = (x.ptr(), y.ptr(), x.len() as i64);
    launch!(x.gpu(), k::elementwise::bf16_to_f32, elems(x.len()); px, py, n);
    Ok(())
}

/// Twin of `dropout_cpu` (the same counter-based mask, bit for bit).
pub fn dropout(x: &impl GpuRange<f32>, p: f32, seed: u64, y: &mut impl GpuRange<f32>) -> Result<()> {
    if !(0.0..1.0).contains(&p) {
        bail!(Invalid, "dropout probability must be in [0, 1), got {p}");
    }
    need("y", y, x.len())?;
    let (px, py, n) = (x.ptr(), y.ptr(), x.len() as i64);
    launch!(x.gpu(), k::dropout::dropout_fwd, elems(x.len()); px, py, n, p, seed);
    Ok(())
}

// ---- reductions ---------------------------------------------------------------------------------

const SUM_BLOCKS: usize = 264;

fn sum_impl(x: &impl GpuRange<f32>, squares: i32) -> Result<f64> {
    let gpu = x.gpu().clone();
    let parts = gpu.alloc::<f64>(SUM_BLOCKS)?;
    let out = gpu.alloc::<f64>(1)?;
    let cfg = LaunchConfig { grid_dim: (SUM_BLOCKS as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let (px, n, pp, po, nb) = (x.ptr(), x.len() as i64, parts.ptr(), out.ptr(), SUM_BLOCKS as i32);
    launch!(gpu, k::reduce::sum_partials, cfg; px, n, squares, pp);
    let one = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    launch!(gpu, k::reduce::sum_finish, one; pp, nb, po);
    Ok(out.download()?[0])
}

/// Twin of `sum_cpu` (accumulates in f64; deterministic).
pub fn sum(x: &impl GpuRange<f32>) -> Result<f64> {
    sum_impl(x, 0)
}

/// Twin of `sum_squares_cpu`.
pub fn sum_squares(x: &impl GpuRange<f32>) -> Result<f64> {
    sum_impl(x, 1)
}

/// The sum of `sum_squares` over several buffers on one GPU (a global gradient norm), with one
/// copy back to the host instead of one per buffer: every buffer's block partials go to one array,
/// which one block sums in a fixed order (deterministic; f64 throughout).
pub fn sum_squares_many(xs: &[&dyn GpuRange<f32>]) -> Result<f64> {
    let Some(first) = xs.first() else { return Ok(0.0) };
    let gpu = first.gpu().clone();
    let parts = gpu.alloc::<f64>(SUM_BLOCKS * xs.len())?;
    let out = gpu.alloc::<f64>(1)?;
    let cfg = LaunchConfig { grid_dim: (SUM_BLOCKS as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    for (i, x) in xs.iter().enumerate() {
        if !Arc::ptr_eq(x.gpu(), &gpu) {
            bail!(Invalid, "sum_squares_many: buffers on different GPUs");
        }
        let (px, n, pp, sq) = (x.ptr(), x.len() as i64, parts.ptr_at(i * SUM_BLOCKS), 1i32);
        launch!(gpu, k::reduce::sum_partials, cfg; px, n, sq, pp);
    }
    let one = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let (pp, nb, po) = (parts.ptr(), (SUM_BLOCKS * xs.len()) as i32, out.ptr());
    launch!(gpu, k::reduce::sum_finish, one; pp, nb, po);
    Ok(out.download()?[0])
}

/// Twin of `sum_rows_cpu`: column sums of `x [rows, d]` into `out [d]`, `out = beta*out + sum`.
pub fn sum_rows(x: &impl GpuRange<f32>, rows: usize, d: usize, beta: f32, out: &mut impl GpuRange<f32>) -> Result<()> {
    need("x", x, rows * d)?;
    need("out", out, d)?;
    if d == 0 {
        return Ok(());
    }
    let gpu = x.gpu().clone();
    let chunk_rows = rows.div_ceil(64).max(16);
    let chunks = rows.div_ceil(chunk_rows).max(1);
    let parts = gpu.alloc::<f64>(chunks * d)?;
    let cfg = LaunchConfig { grid_dim: (d.div_ceil(128) as u32, chunks as u32, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
    let (px, r, d32, cr, pp, po, nc) = (x.ptr(), rows as i64, d as i32, chunk_rows as i64, parts.ptr(), out.ptr(), chunks as i32);
    launch!(gpu, k::reduce::sum_rows_partials, cfg; px, r, d32, cr, pp);
    launch!(gpu, k::reduce::sum_rows_finish, elems(d); pp, nc, d32, beta, po);
    Ok(())
}

// ---- optimizers ---------------------------------------------------------------------------------

/// The rows a row-sparse gradient covers, or None for a dense one; returns (rows ptr, elements).
fn sparse_args(w: &impl GpuRange<f32>, grad: &impl GpuRange<f32>, rows: Option<&GpuBuf<i32>>, dim: usize) -> Result<(u64, i64)> {
    match rows {
        None => {
            need("grad", grad, w.len())?;
            Ok((0, w.len() as i64))
        }
        Some(r) => {
            need("grad", grad, r.len() * dim)?;
            Ok((r.ptr(), (r.len() * dim) as i64))
        }
    }
}

/// Twin of `sgd_cpu`; with `rows`, a lazy row-sparse update (grad holds rows.len() x dim values).
#[allow(clippy::too_many_arguments)]
pub fn sgd(
    w: &mut impl GpuRange<f32>,
    grad: &impl GpuRange<f32>,
    vel: &mut impl GpuRange<f32>,
    rows: Option<&GpuBuf<i32>>,
    dim: usize,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    scale: f32,
) -> Result<()> {
    need("velocity", vel, w.len())?;
    let (pr, n) = sparse_args(w, grad, rows, dim)?;
    let (pw, pg, pv, d) = (w.ptr(), grad.ptr(), vel.ptr(), dim.max(1) as i32);
    launch!(w.gpu(), k::optim::sgd_update, elems(n as usize); pw, pg, pv, pr, n, d, lr, momentum, weight_decay, scale);
    Ok(())
}

/// Twin of `adagrad_cpu`.
#[allow(clippy::too_many_arguments)]
pub fn adagrad(
    w: &mut impl GpuRange<f32>,
    grad: &impl GpuRange<f32>,
    accum: &mut impl GpuRange<f32>,
    rows: Option<&GpuBuf<i32>>,
    dim: usize,
    lr: f32,
    eps: f32,
    scale: f32,
) -> Result<()> {
    need("accumulator", accum, w.len())?;
    let (pr, n) = sparse_args(w, grad, rows, dim)?;
    let (pw, pg, pa, d) = (w.ptr(), grad.ptr(), accum.ptr(), dim.max(1) as i32);
    launch!(w.gpu(), k::optim::adagrad_update, elems(n as usize); pw, pg, pa, pr, n, d, lr, eps, scale);
    Ok(())
}

/// Twin of `adam_cpu` (bias corrections computed on the host exactly as there).
#[allow(clippy::too_many_arguments)]
pub fn adam(
    w: &mut impl GpuRange<f32>,
    grad: &impl GpuRange<f32>,
    m: &mut impl GpuRange<f32>,
    v: &mut impl GpuRange<f32>,
    rows: Option<&GpuBuf<i32>>,
    dim: usize,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    step: u64,
    scale: f32,
) -> Result<()> {
    need("m", m, w.len())?;
    need("v", v, w.len())?;
    let (pr, n) = sparse_args(w, grad, rows, dim)?;
    let bc1 = 1.0 - beta1.powi(step as i32);
    let bc2 = 1.0 - beta2.powi(step as i32);
    let (pw, pg, pm, pv, d) = (w.ptr(), grad.ptr(), m.ptr(), v.ptr(), dim.max(1) as i32);
    launch!(w.gpu(), k::optim::adam_update, elems(n as usize); pw, pg, pm, pv, pr, n, d, lr, beta1, beta2, eps, weight_decay, bc1, bc2, scale);
    Ok(())
}

/// Keeps `Gpu` in scope for doc links.
#[allow(dead_code)]
fn _gpu(_: &Gpu) {}

// ---- losses and gradient bookkeeping -------------------------------------------------------------

/// Twin of `loss::bce_with_logits_cpu`: writes `grad` and returns the mean loss (per-element losses
/// summed in f64 by the deterministic reduction). Targets must already be checked to lie in [0, 1].
pub fn bce_logits(x: &impl GpuRange<f32>, y: &impl GpuRange<f32>, grad: &mut impl GpuRange<f32>) -> Result<f64> {
    let n = x.len();
    need("targets", y, n)?;
    need("grad", grad, n)?;
    if n == 0 {
        return Ok(0.0);
    }
    let gpu = x.gpu().clone();
    let loss = gpu.alloc::<f32>(n)?;
    let (px, py, pg, pl, n64, inv_n) = (x.ptr(), y.ptr(), grad.ptr(), loss.ptr(), n as i64, 1.0 / n as f32);
    launch!(gpu, k::elementwise::bce_logits, elems(n); px, py, pg, pl, n64, inv_n);
    Ok(sum(&loss)? / n as f64)
}

/// `t[rows[r], :] = 0`: clears the rows of a `[*, dim]` table that a row-sparse gradient touched.
pub fn zero_rows(t: &mut impl GpuRange<f32>, rows: &impl GpuRange<i32>, dim: usize) -> Result<()> {
    if rows.is_empty() || dim == 0 {
        return Ok(());
    }
    let (pt, pr, nr, d) = (t.ptr(), rows.ptr(), rows.len() as i64, dim as i32);
    launch!(t.gpu(), k::elementwise::zero_rows, elems(rows.len() * dim); pt, pr, nr, d);
    Ok(())
}
