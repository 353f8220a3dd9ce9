//! What every launcher in `ops/<op>/cuda.rs` shares: the launch macro (function lookup, arguments,
//! the optional sync that names a faulting kernel) and the argument checks.

use super::{Gpu, GpuRange};
use crate::{bail, Error, Result};
use cudarc::driver::LaunchConfig;
use std::sync::Arc;

macro_rules! launch {
    ($gpu:expr, $kernel:expr, $cfg:expr; $($arg:ident),* $(,)?) => {{
        let kernel: $crate::cuda::Kernel = $kernel;
        let f = $gpu.function(kernel)?;
        let mut b = $gpu.stream().launch_builder(&f);
        $( cudarc::driver::PushKernelArg::arg(&mut b, &$arg); )*
        // SAFETY: each launcher checks its buffers' lengths against the sizes the kernel uses.
        unsafe { b.launch($cfg) }.map_err(|e| $crate::Error::Device(format!("launch of {}: {e:?}", kernel.name)))?;
        $crate::cuda::launch::sync_if_asked(&$gpu, kernel.name)?;
    }};
}
pub(crate) use launch;

/// With `CODISTILL_SYNC_EACH_LAUNCH` set, waits for the kernel just queued, so that a fault is
/// reported with its name.
pub(crate) fn sync_if_asked(gpu: &Gpu, name: &str) -> Result<()> {
    if std::env::var_os("CODISTILL_SYNC_EACH_LAUNCH").is_some() {
        gpu.sync().map_err(|e| Error::Device(format!("kernel {name} failed: {e}")))?;
    }
    Ok(())
}

const THREADS: u32 = 256;

/// A grid-stride launch over n elements.
pub(crate) fn elems(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, 132 * 16) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

pub(crate) fn need<T: Copy>(what: &str, b: &impl GpuRange<T>, n: usize) -> Result<()> {
    if b.len() < n {
        bail!(Shape, "{what} holds {} elements on the device, the kernel needs {n}", b.len());
    }
    Ok(())
}

pub(crate) fn same_gpu<A: Copy, B: Copy>(a: &impl GpuRange<A>, b: &impl GpuRange<B>) -> Result<()> {
    if !Arc::ptr_eq(a.gpu(), b.gpu()) {
        bail!(Device, "buffers on cuda:{} and cuda:{}", a.gpu().ordinal(), b.gpu().ordinal());
    }
    Ok(())
}
