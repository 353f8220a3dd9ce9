//! Embedding lookup. Forward gathers rows of a table `[V, D]` by ids `[N]` into `[N, D]`; backward
//! scatter-adds `dout [N, D]` into `dtable [V, D]`. Ids out of range are an error, never a read
//! past the table. The CPU twin adds in id order, so it is deterministic; the GPU kernel's
//! deterministic mode reproduces that order.

pub mod cuda;
mod tape;

use crate::backend::Backend;
use crate::tensor::{Device, Tensor};
use crate::{bail, Result};

fn check_ids(ids: &[i32], vocab: usize) -> Result<()> {
    if let Some((pos, &id)) = ids.iter().enumerate().find(|(_, &id)| id < 0 || id as usize >= vocab) {
        bail!(Invalid, "embedding id {id} at position {pos} is outside the table's {vocab} rows");
    }
    Ok(())
}

/// CPU twin of the gather. `out` is `[ids.len(), dim]`.
pub fn gather_cpu(table: &[f32], dim: usize, ids: &[i32], out: &mut [f32]) {
    for (row, &id) in out.chunks_exact_mut(dim).zip(ids) {
        let src = id as usize * dim;
        row.copy_from_slice(&table[src..src + dim]);
    }
}

/// CPU twin of the backward: `dtable[ids[i]] += dout[i]`, in order of i.
pub fn scatter_add_cpu(dout: &[f32], dim: usize, ids: &[i32], dtable: &mut [f32]) {
    for (row, &id) in dout.chunks_exact(dim).zip(ids) {
        let dst = &mut dtable[id as usize * dim..(id as usize + 1) * dim];
        for (d, s) in dst.iter_mut().zip(row) {
            *d += s;
        }
    }
}

/// Rows of `table [V, D]` for `ids` (any shape, i32): returns `[ids.numel(), D]`.
pub fn gather(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (v, d) = table.expect_2d("embedding table")?;
    let idv = ids.host_i32s()?;
    check_ids(&idv, v)?;
    match super::same_device(&[("table", table), ("ids", ids)])? {
        Device::Cpu => {
            let mut out = vec![0f32; idv.len() * d];
            gather_cpu(table.f32s()?, d, &idv, &mut out);
            Tensor::from_f32(out, &[idv.len(), d])
        }
        Device::Cuda(_) => {
            let tb = table.cuda_f32()?;
            let mut out = tb.gpu().alloc::<f32>(idv.len() * d)?;
            cuda::gather(tb, v, d, ids.cuda_i32()?, &mut out)?;
            Tensor::from_gpu_f32(out, &[idv.len(), d])
        }
    }
}

/// `dtable[ids[i]] += dout[i]` in place.
pub fn scatter_add(be: &Backend, dout: &Tensor, ids: &Tensor, dtable: &mut Tensor) -> Result<()> {
    let (v, d) = dtable.expect_2d("embedding gradient")?;
    let idv = ids.host_i32s()?;
    dout.expect_shape("embedding output gradient", &[idv.len(), d])?;
    check_ids(&idv, v)?;
    match super::same_device(&[("dout", dout), ("ids", ids), ("dtable", dtable)])? {
        Device::Cpu => {
            scatter_add_cpu(dout.f32s()?, d, &idv, dtable.f32s_mut()?);
            Ok(())
        }
        Device::Cuda(_) => {
            let mode = if be.deterministic { cuda::ScatterMode::Deterministic } else { cuda::ScatterMode::Atomic };
            cuda::scatter_add(dout.cuda_f32()?, v, d, ids.cuda_i32()?, Some(&idv), dtable.cuda_f32_mut()?, mode)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_then_scatter_with_repeated_ids() {
        let table = Tensor::from_f32((0..12).map(|x| x as f32).collect(), &[4, 3]).unwrap();
        let ids = Tensor::from_i32(vec![2, 0, 2], &[3]).unwrap();
        let out = gather(&table, &ids).unwrap();
        assert_eq!(out.f32s().unwrap(), &[6., 7., 8., 0., 1., 2., 6., 7., 8.]);
        let mut dt = Tensor::zeros(&[4, 3]);
        scatter_add(&crate::Backend::default(), &Tensor::full(&[3, 3], 1.0), &ids, &mut dt).unwrap();
        assert_eq!(dt.f32s().unwrap(), &[1., 1., 1., 0., 0., 0., 2., 2., 2., 0., 0., 0.]);
    }

    #[test]
    fn out_of_range_id_is_an_error_naming_it() {
        let table = Tensor::zeros(&[4, 3]);
        let ids = Tensor::from_i32(vec![1, 4], &[2]).unwrap();
        let e = gather(&table, &ids).unwrap_err().to_string();
        assert!(e.contains("id 4") && e.contains("4 rows"), "{e}");
        let neg = Tensor::from_i32(vec![-1], &[1]).unwrap();
        assert!(gather(&table, &neg).is_err());
    }
}
