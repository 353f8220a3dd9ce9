//! The CUDA launcher of `kernels/loss.cu`, with the contract of the CPU twin beside it (the twin's
//! doc is the kernel's spec). Launchers queue work on the device's compute stream and return;
//! `GpuBuf::download` or `Gpu::sync` waits and surfaces asynchronous faults. Arguments are checked
//! here (lengths, dtypes, ranges) so that a kernel never reads or writes past a buffer.

use crate::cuda::launch::{elems, launch, need};
use crate::cuda::{k, GpuRange};
use crate::ops::reduce::cuda::sum;
use crate::Result;

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

/// Twin of `loss::binary_divergence_cpu` (`kind` 0-3 as there): writes `grad` and returns the
/// mean value (per-element values summed in f64 by the deterministic reduction).
pub fn binary_divergence(x: &impl GpuRange<f32>, t: &impl GpuRange<f32>, kind: i32, grad: &mut impl GpuRange<f32>) -> Result<f64> {
    let n = x.len();
    need("teachers", t, n)?;
    need("grad", grad, n)?;
    if n == 0 {
        return Ok(0.0);
    }
    let gpu = x.gpu().clone();
    let loss = gpu.alloc::<f32>(n)?;
    let (px, pt, pg, pl, n64, inv_n) = (x.ptr(), t.ptr(), grad.ptr(), loss.ptr(), n as i64, 1.0 / n as f32);
    launch!(gpu, k::elementwise::binary_div, elems(n); px, pt, pg, pl, n64, inv_n, kind);
    Ok(sum(&loss)? / n as f64)
}
