//! The CUDA launcher of `kernels/dropout.cu`, with the contract of the CPU twin beside it (the twin's
//! doc is the kernel's spec). Launchers queue work on the device's compute stream and return;
//! `GpuBuf::download` or `Gpu::sync` waits and surfaces asynchronous faults. Arguments are checked
//! here (lengths, dtypes, ranges) so that a kernel never reads or writes past a buffer.

use crate::cuda::launch::{elems, launch, need};
use crate::cuda::{k, GpuRange};
use crate::{bail, Result};

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
