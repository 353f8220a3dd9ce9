//! The CUDA launcher of `kernels/softmax_kl.cu`, with the contract of the CPU twin beside it (the twin's
//! doc is the kernel's spec). Launchers queue work on the device's compute stream and return;
//! `GpuBuf::download` or `Gpu::sync` waits and surfaces asynchronous faults. Arguments are checked
//! here (lengths, dtypes, ranges) so that a kernel never reads or writes past a buffer.

use super::{DistillLoss, DistillParams, Divergence};
use crate::cuda::launch::{launch, need, sync_if_asked};
use crate::cuda::{k, GpuBuf, GpuRange, Kernel};
use crate::{bail, Error, Result};
use cudarc::driver::{sys, DeviceRepr, LaunchConfig, PushKernelArg};

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
    if p.divergence != Divergence::ForwardKl {
        // The other divergences: one generic kernel (kernels/softmax_kl.cu, softmax_div).
        let kind = match p.divergence {
            Divergence::ForwardKl => 0i32,
            Divergence::ReverseKl => 1,
            Divergence::JensenShannon => 2,
            Divergence::Mse => 3,
        };
        let threads = if cols >= 4096 { 512 } else { 128 };
        let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        let (ps, py, c, nk, t, a, inv_n) =
            (student.ptr(), labels.map_or(0, |y| y.ptr()), cols as i32, teachers.len() as i32, p.temperature, p.alpha, 1.0 / rows as f32);
        let (pg, ph, pso) = (grad.ptr(), hard.ptr(), soft.ptr());
        launch!(gpu, k::softmax_kl::softmax_div, cfg; ps, tp, py, c, nk, t, a, inv_n, kind, pg, ph, pso);
        return row_means(p, &hard, &soft, rows);
    }
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
    row_means(p, &hard, &soft, rows)
}

/// The loss parts from the per-row values, summed in f64 on the host in row order.
fn row_means(p: DistillParams, hard: &GpuBuf<f32>, soft: &GpuBuf<f32>, rows: usize) -> Result<DistillLoss> {
    let (hv, sv) = (hard.download()?, soft.download()?);
    let n = rows as f64;
    let hard = hv.iter().map(|&x| x as f64).sum::<f64>() / n;
    let soft = sv.iter().map(|&x| x as f64).sum::<f64>() / n;
    let a = p.alpha as f64;
    Ok(DistillLoss { total: (1.0 - a) * hard + a * p.divergence.weight(p.temperature as f64) * soft, hard, soft })
}

#[repr(C)]
#[derive(Clone, Copy)]
struct TeacherWeights([f32; MAX_TEACHERS]);
// SAFETY: plain floats, laid out as the kernel's struct TeacherWeights.
unsafe impl DeviceRepr for TeacherWeights {}

/// Twin of `mix::mix_teachers_cpu` for at most [`MAX_TEACHERS`] teachers, each `rows * cols`
/// (`cols` 1 with `how.binary`); `weights` normalised (one per teacher). Writes `out [rows * cols]`.
pub fn teacher_mix(
    teachers: &[&impl GpuRange<f32>],
    weights: &[f32],
    rows: usize,
    cols: usize,
    how: super::mix::TeacherMix,
    out: &mut impl GpuRange<f32>,
) -> Result<()> {
    if teachers.is_empty() || teachers.len() > MAX_TEACHERS || weights.len() != teachers.len() {
        bail!(Invalid, "teacher mix on the GPU: {} teachers and {} weights (1 to {MAX_TEACHERS} teachers, one weight each)", teachers.len(), weights.len());
    }
    if how.binary && cols != 1 {
        bail!(Invalid, "teacher mix of click logits: {cols} columns, expected 1");
    }
    if !(how.temperature > 0.0 && how.temperature.is_finite()) {
        bail!(Invalid, "teacher mix: temperature {} is not positive and finite", how.temperature);
    }
    need("out", out, rows * cols)?;
    let (mut tp, mut wt) = (TeacherPtrs([0; MAX_TEACHERS]), TeacherWeights([0.0; MAX_TEACHERS]));
    for (i, (t, &w)) in teachers.iter().zip(weights).enumerate() {
        need("teacher", *t, rows * cols)?;
        tp.0[i] = t.ptr();
        wt.0[i] = w;
    }
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let gpu = out.gpu().clone();
    let (nk, conf, po) = (teachers.len() as i32, how.confidence as i32, out.ptr());
    if how.binary {
        let n = rows as i32;
        launch!(gpu, k::softmax_kl::teacher_mix_binary, crate::cuda::launch::elems(rows); tp, wt, nk, n, conf, po);
    } else {
        let threads = if cols >= 4096 { 512 } else { 128 };
        let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        let (c, t, mode) = (cols as i32, how.temperature, how.logits as i32);
        launch!(gpu, k::softmax_kl::teacher_mix, cfg; tp, wt, nk, c, t, mode, conf, po);
    }
    Ok(())
}
