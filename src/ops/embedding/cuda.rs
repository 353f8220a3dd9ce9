//! The CUDA launcher of `kernels/embedding.cu`, with the contract of the CPU twin beside it (the twin's
//! doc is the kernel's spec). Launchers queue work on the device's compute stream and return;
//! `GpuBuf::download` or `Gpu::sync` waits and surfaces asynchronous faults. Arguments are checked
//! here (lengths, dtypes, ranges) so that a kernel never reads or writes past a buffer.

use crate::cuda::launch::{elems, launch, need, same_gpu};
use crate::cuda::{k, GpuRange};
use crate::{bail, Error, Result};
use cudarc::driver::LaunchConfig;

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
