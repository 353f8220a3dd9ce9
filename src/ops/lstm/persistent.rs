//! The persistent LSTM layer on the GPU (Persistent RNNs, Diamos et al. 2016; issue 28): one
//! cooperative launch per layer and window, forward and backward, in place of the step layer's
//! `2 T` launches (a product and a cell kernel per time step). Block `b` owns the hidden units
//! `b U .. b U + U - 1` and keeps its slice of `W_hh` (bf16) in shared memory for every step:
//! forward, the `4 U` gate columns of its units (`H x 4U`); backward, the `U` rows of its units
//! (`U x 4H`). Per step the block multiplies every block's rounded recurrent operand (written the
//! step before) by its slice on the tensor cores (`mma.sync`), runs the fused cell on its units, and
//! the grid meets at a barrier. The arithmetic is the step layer's in bf16 mode (operands rounded
//! to bf16, fp32 accumulation, the same cell), so its CPU twin is the step layer's; only the order
//! of each product's sum differs. The kernels: `kernels/lstm.cu`, `lstm_persistent_fwd` and
//! `lstm_persistent_bwd`.
//!
//! Where it runs ([`plan`]): bf16 products, `H` with an even divisor `U <= 16` such that `H / U`
//! blocks fit on the GPU at once (a cooperative launch; the driver refuses a grid that does not)
//! with their shared memory. The input projection, the bias and the weight gradients stay the step
//! layer's large products. Not the default (`CODISTILL_LSTM=persistent`, [`crate::backend::LstmKernel`])
//! before it has passed its gate on a GPU (`tests/gpu.rs`, `lstm_persistent_*`). Without a GPU,
//! `tools/emulate_persistent_lstm.py` (run in CI) emulates the kernels' loops lane by lane and
//! fragment by fragment against a float64 LSTM: their index arithmetic, not their memory ordering.

use crate::cuda::{f32_to_bf16, k, Gpu, GpuBuf, GpuRange};
use crate::{bail, Error, Result};
use cudarc::driver::{sys, LaunchConfig, PushKernelArg};
use half::bf16;

const THREADS: u32 = 256;
const WARPS: usize = 8;
/// Units per block at most: the forward's `4 U` gate columns are at most 8 tiles of 8 per warp.
const MAX_UNITS: usize = 16;

/// How a layer of one shape runs persistently: `units` hidden units per block, `blocks` blocks,
/// the k-splits of each product over the warps and the shared memory of each kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub units: usize,
    pub blocks: usize,
    pub ks: usize,
    pub smem_fwd: u32,
    pub smem_bwd: u32,
}

/// Shared memory of the kernels for `units` per block: the `W_hh` slice (bf16, rows padded as the
/// kernels lay them out) and the partial sums (fp32).
fn smem(batch: usize, hidden: usize, units: usize, ks: usize) -> (usize, usize) {
    let fwd = 4 * units * (hidden.div_ceil(16) * 16 + 8) * 2 + ks * batch * 4 * units * 4;
    let u8 = units.div_ceil(8) * 8;
    let bwd = u8 * ((4 * hidden).div_ceil(16) * 16 + 8) * 2 + ks * batch * u8 * 4;
    (fwd, bwd)
}

/// The plan for a layer of `hidden` units over `batch` rows on `gpu`, or why it does not fit: the
/// fewest units per block (the most blocks) whose grid the GPU holds at once.
pub fn plan(gpu: &Gpu, batch: usize, hidden: usize) -> std::result::Result<Plan, String> {
    if batch == 0 || hidden == 0 {
        return Err("an empty layer".into());
    }
    let ks = (WARPS / batch.div_ceil(16)).max(1);
    let optin = gpu.context().attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN).map_err(|e| format!("{e:?}"))? as usize;
    let sms = gpu.sm_count();
    let (fwd_f, bwd_f) =
        (gpu.function(k::lstm::lstm_persistent_fwd).map_err(|e| e.to_string())?, gpu.function(k::lstm::lstm_persistent_bwd).map_err(|e| e.to_string())?);
    let mut why = format!("hidden size {hidden} has no even divisor up to {MAX_UNITS} units per block");
    for units in (2..=MAX_UNITS.min(hidden)).step_by(2).filter(|u| hidden.is_multiple_of(*u)) {
        let blocks = hidden / units;
        let (f, b) = smem(batch, hidden, units, ks);
        if f.max(b) > optin {
            why = format!("{units} units per block need {} bytes of shared memory, over the {optin} a block may have", f.max(b));
            continue;
        }
        let mut fits = true;
        for (func, bytes) in [(&fwd_f, f), (&bwd_f, b)] {
            func.set_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes as i32).map_err(|e| format!("{e:?}"))?;
            let per_sm = func.occupancy_max_active_blocks_per_multiprocessor(THREADS, bytes, None).map_err(|e| format!("{e:?}"))? as usize;
            if blocks > per_sm * sms {
                why = format!("{blocks} blocks of {units} units are more than the {} the GPU holds at once ({sms} multiprocessors x {per_sm})", per_sm * sms);
                fits = false;
            }
        }
        if fits {
            return Ok(Plan { units, blocks, ks, smem_fwd: f as u32, smem_bwd: b as u32 });
        }
    }
    Err(why)
}

/// Where the backend asks for the persistent layer: its plan, or None with the reason said once
/// per shape on stderr (the step layer then runs). `bf16`: the layer's products run in bf16 (the
/// persistent kernels have no f32 products). Each (GPU, batch, hidden, bf16) is planned once per
/// process (the plan's driver queries would otherwise run on every layer call, forward and back).
pub(super) fn plan_if_asked(lstm: crate::backend::LstmKernel, bf16: bool, gpu: &Gpu, batch: usize, hidden: usize) -> Option<Plan> {
    type Plans = std::collections::BTreeMap<(usize, usize, usize, bool), Option<Plan>>;
    static PLANS: std::sync::Mutex<Plans> = std::sync::Mutex::new(Plans::new());
    if lstm != crate::backend::LstmKernel::Persistent {
        return None;
    }
    let key = (gpu.ordinal(), batch, hidden, bf16);
    let mut plans = PLANS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&p) = plans.get(&key) {
        return p;
    }
    let found = if bf16 { plan(gpu, batch, hidden) } else { Err("its products are bf16, and this run's are f32 (--matmul-f32)".to_string()) };
    let p = found.map_err(|why| eprintln!("lstm: the persistent layer does not run at batch {batch}, hidden {hidden} ({why}); the step layer runs")).ok();
    plans.insert(key, p);
    p
}

/// A kernel of a plan, its shared memory set, and its launch configuration (one block of 256
/// threads per `units` hidden units).
fn kernel_of(gpu: &Gpu, kernel: crate::cuda::Kernel, p: &Plan, smem: u32) -> Result<(cudarc::driver::CudaFunction, LaunchConfig)> {
    let f = gpu.function(kernel)?;
    f.set_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32)?;
    Ok((f, LaunchConfig { grid_dim: (p.blocks as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: smem }))
}

/// The error of a refused cooperative launch (a grid the GPU cannot hold at once, among others).
fn refused(kernel: crate::cuda::Kernel, p: &Plan, e: cudarc::driver::DriverError) -> Error {
    Error::Device(format!("cooperative launch of {} ({} blocks of {} units): {e:?}", kernel.name, p.blocks, p.units))
}

fn need<T: Copy>(what: &str, b: &impl GpuRange<T>, n: usize) -> Result<()> {
    crate::cuda::launch::need(what, b, n)
}

/// The forward recurrence of a layer (`steps` x `batch` x `hidden`) on plan `p`: `act [T, B, 4H]`
/// holds `x W_ih + b` on entry and the gate activations on exit; `whh` is `W_hh [H, 4H]` rounded
/// to bf16; `c_all [T + 1, B, H]` holds `c_0` in its first `B H`; writes `y [T, B, H]`.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    p: &Plan,
    steps: usize,
    batch: usize,
    hidden: usize,
    act: &mut GpuBuf<f32>,
    whh: &GpuBuf<bf16>,
    h0: &impl GpuRange<f32>,
    c_all: &mut GpuBuf<f32>,
    y: &mut GpuBuf<f32>,
) -> Result<()> {
    let (bh, g4) = (batch * hidden, 4 * hidden);
    if p.blocks * p.units != hidden {
        bail!(Invalid, "persistent lstm: a plan of {} x {} units for a hidden size of {hidden}", p.blocks, p.units);
    }
    need("act", act, steps * batch * g4)?;
    need("w_hh", whh, hidden * g4)?;
    need("h0", h0, bh)?;
    need("c_all", c_all, (steps + 1) * bh)?;
    need("y", y, steps * bh)?;
    if steps == 0 {
        return Ok(());
    }
    let gpu = act.gpu().clone();
    // h_0 rounded into the first half of the double buffer; the barrier counter from zero.
    let hb = gpu.alloc::<bf16>(2 * bh)?;
    f32_to_bf16(h0, &mut hb.slice(0, bh)?)?;
    let mut counter = gpu.alloc::<u32>(1)?;
    counter.memset(0)?;
    let (pa, pw, pc, py, phb, pcnt) = (act.ptr(), whh.ptr(), c_all.ptr(), y.ptr(), hb.ptr(), counter.ptr());
    let (t, b, h, u, ks) = (steps as i32, batch as i32, hidden as i32, p.units as i32, p.ks as i32);
    let kernel = k::lstm::lstm_persistent_fwd;
    let (f, cfg) = kernel_of(&gpu, kernel, p, p.smem_fwd)?;
    let mut l = gpu.stream().launch_builder(&f);
    l.arg(&pa).arg(&pw).arg(&pc).arg(&py).arg(&phb).arg(&pcnt).arg(&t).arg(&b).arg(&h).arg(&u).arg(&ks);
    // SAFETY: every buffer's length is checked above against the sizes the kernel uses.
    unsafe { l.launch_cooperative(cfg) }.map_err(|e| refused(kernel, p, e))?;
    crate::cuda::launch::sync_if_asked(&gpu, kernel.name)
}

/// The backward recurrence on plan `p`: from the forward's `act` and `c_all` and the outputs'
/// gradient `dy [T, B, H]`, writes `dgates [T, B, 4H]`; `dh` and `dc` `[B, H]` hold the gradients
/// reaching `h_T` and `c_T` on entry and those reaching `h_0` and `c_0` on exit.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    p: &Plan,
    steps: usize,
    batch: usize,
    hidden: usize,
    act: &impl GpuRange<f32>,
    c_all: &impl GpuRange<f32>,
    dy: &impl GpuRange<f32>,
    whh: &GpuBuf<bf16>,
    dh: &mut GpuBuf<f32>,
    dc: &mut GpuBuf<f32>,
    dgates: &mut GpuBuf<f32>,
) -> Result<()> {
    let (bh, g4) = (batch * hidden, 4 * hidden);
    if p.blocks * p.units != hidden {
        bail!(Invalid, "persistent lstm: a plan of {} x {} units for a hidden size of {hidden}", p.blocks, p.units);
    }
    need("act", act, steps * batch * g4)?;
    need("c_all", c_all, (steps + 1) * bh)?;
    need("dy", dy, steps * bh)?;
    need("w_hh", whh, hidden * g4)?;
    need("dh", dh, bh)?;
    need("dc", dc, bh)?;
    need("dgates", dgates, steps * batch * g4)?;
    if steps == 0 {
        return Ok(());
    }
    let gpu = dh.gpu().clone();
    let dgb = gpu.alloc::<bf16>(2 * batch * g4)?;
    let mut counter = gpu.alloc::<u32>(1)?;
    counter.memset(0)?;
    let (pa, pc, pdy, pw, pdh, pdc, pdg, pdgb, pcnt) =
        (act.ptr(), c_all.ptr(), dy.ptr(), whh.ptr(), dh.ptr(), dc.ptr(), dgates.ptr(), dgb.ptr(), counter.ptr());
    let (t, b, h, u, ks) = (steps as i32, batch as i32, hidden as i32, p.units as i32, p.ks as i32);
    let kernel = k::lstm::lstm_persistent_bwd;
    let (f, cfg) = kernel_of(&gpu, kernel, p, p.smem_bwd)?;
    let mut l = gpu.stream().launch_builder(&f);
    l.arg(&pa).arg(&pc).arg(&pdy).arg(&pw).arg(&pdh).arg(&pdc).arg(&pdg).arg(&pdgb).arg(&pcnt).arg(&t).arg(&b).arg(&h).arg(&u).arg(&ks);
    // SAFETY: every buffer's length is checked above against the sizes the kernel uses.
    unsafe { l.launch_cooperative(cfg) }.map_err(|e| refused(kernel, p, e))?;
    crate::cuda::launch::sync_if_asked(&gpu, kernel.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_memory_of_the_trainers_shape() {
        // The 1024-unit layer at batch 64 on 8 units per block (128 blocks): the forward's
        // slice 32 x (1024 + 8) bf16 and 2 k-splits of 64 x 32 partial sums; the backward's 8 rows
        // of 4096 + 8 and 2 x 64 x 8.
        assert_eq!(smem(64, 1024, 8, 2), (32 * 1032 * 2 + 2 * 64 * 32 * 4, 8 * 4104 * 2 + 2 * 64 * 8 * 4));
        // Units round up to a tile of 8 rows in the backward.
        assert_eq!(smem(5, 96, 2, 8).1, 8 * (384 + 8) * 2 + 8 * 5 * 8 * 4);
    }
}
