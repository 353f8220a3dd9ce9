//! The CUDA launcher of `kernels/lstm.cu`, with the contract of the CPU twin beside it (the twin's
//! doc is the kernel's spec). Launchers queue work on the device's compute stream and return;
//! `GpuBuf::download` or `Gpu::sync` waits and surfaces asynchronous faults. Arguments are checked
//! here (lengths, dtypes, ranges) so that a kernel never reads or writes past a buffer.

use super::persistent;
use super::{LstmCache, LstmDims, LstmGrads, LstmOutput};
use crate::backend::Backend;
use crate::cuda::f32_to_bf16;
use crate::cuda::launch::{elems, launch, need};
use crate::cuda::{copy, Gemm, MatmulPrecision, Slice};
use crate::cuda::{k, GpuBuf, GpuRange};
use crate::ops::elementwise::cuda::{add_row_bias, axpy};
use crate::ops::matmul::cuda::{gemm_bf16_with, gemm_f32};
use crate::ops::reduce::cuda::sum_rows;
use crate::tensor::Tensor;
use crate::Result;
use half::bf16;

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

// The layer on the GPU: the same algorithm as the CPU twins above, with the pointwise steps in
// the fused cell kernels and the products on `matmul::cuda::gemm_*` in the process's matmul
// precision (bf16 operands are rounded once per layer call for the weights and the inputs, and
// once per time step for the recurrent operand).

/// A matmul operand: f32, or its bf16 rounding when products run in bf16.
enum Opnd<'a> {
    F32(Slice<'a, f32>),
    Bf16(Slice<'a, bf16>),
}

fn whole<T: Copy>(b: &GpuBuf<T>) -> Result<Slice<'_, T>> {
    b.slice(0, b.len())
}

/// The bf16 rounding of `x` when products run in bf16, else None.
fn rounded(x: &impl GpuRange<f32>, bf: bool) -> Result<Option<GpuBuf<bf16>>> {
    if !bf {
        return Ok(None);
    }
    let mut r = x.gpu().alloc::<bf16>(x.len())?;
    f32_to_bf16(x, &mut r)?;
    Ok(Some(r))
}

fn opnd<'a>(x: &'a GpuBuf<f32>, r: &'a Option<GpuBuf<bf16>>) -> Result<Opnd<'a>> {
    Ok(match r {
        Some(b) => Opnd::Bf16(whole(b)?),
        None => Opnd::F32(whole(x)?),
    })
}

#[allow(clippy::too_many_arguments)]
fn mm(g: Gemm, m: usize, n: usize, kk: usize, a: &Opnd, ta: bool, b: &Opnd, tb: bool, beta: f32, c: &mut impl GpuRange<f32>) -> Result<()> {
    match (a, b) {
        (Opnd::F32(a), Opnd::F32(b)) => gemm_f32(m, n, kk, 1.0, a, ta, b, tb, beta, c),
        (Opnd::Bf16(a), Opnd::Bf16(b)) => gemm_bf16_with(g, m, n, kk, 1.0, a, ta, b, tb, beta, c),
        _ => Err(crate::Error::Invalid("lstm: matmul operands in two precisions".into())),
    }
}

/// `gates += h @ W_hh` for one step: in bf16 mode on `hb`, h already rounded (by the previous
/// step's cell kernel, or before the first step).
#[allow(clippy::too_many_arguments)]
fn recurrent(
    g: Gemm,
    batch: usize,
    hidden: usize,
    h: &Slice<f32>,
    hb: &Option<GpuBuf<bf16>>,
    whh: &GpuBuf<f32>,
    whh_r: &Option<GpuBuf<bf16>>,
    gates: &mut Slice<f32>,
) -> Result<()> {
    match (hb, whh_r) {
        (Some(hb), Some(w)) => gemm_bf16_with(g, batch, 4 * hidden, hidden, 1.0, hb, false, w, false, 1.0, gates),
        _ => gemm_f32(batch, 4 * hidden, hidden, 1.0, h, false, whh, false, 1.0, gates),
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn forward(be: &Backend, x: &Tensor, h0: &Tensor, c0: &Tensor, w_ih: &Tensor, w_hh: &Tensor, b: &Tensor, d: LstmDims) -> Result<LstmOutput> {
    let LstmDims { steps: t_len, batch, input, hidden } = d;
    let (bh, g4, rows) = (batch * hidden, 4 * hidden, t_len * batch);
    let (xb, wih, whh) = (x.cuda_f32()?, w_ih.cuda_f32()?, w_hh.cuda_f32()?);
    let gpu = xb.gpu().clone();
    let bf = be.matmul == MatmulPrecision::Bf16;
    let (x_r, wih_r, whh_r) = (rounded(xb, bf)?, rounded(wih, bf)?, rounded(whh, bf)?);
    // Input projection for all steps at once, then the bias added in place.
    let mut act = gpu.alloc::<f32>(rows * g4)?;
    mm(be.gemm, rows, g4, input, &opnd(xb, &x_r)?, false, &opnd(wih, &wih_r)?, false, 0.0, &mut act)?;
    {
        // In place: each element is read, then written, by one thread.
        let (a_in, mut a_out) = (whole(&act)?, whole(&act)?);
        add_row_bias(&a_in, b.cuda_f32()?, &mut a_out)?;
    }
    let mut y = gpu.alloc::<f32>(rows * hidden)?;
    let mut c_all = gpu.alloc::<f32>((t_len + 1) * bh)?;
    copy(c0.cuda_f32()?, &mut c_all.slice(0, bh)?)?;
    let h0b = h0.cuda_f32()?;
    // The persistent layer where asked and where it fits (bf16 products only).
    if let (Some(p), Some(w)) = (persistent::plan_if_asked(be.lstm, bf, &gpu, batch, hidden), &whh_r) {
        persistent::forward(&p, t_len, batch, hidden, &mut act, w, h0b, &mut c_all, &mut y)?;
        return finish_forward(y, act, c_all, d);
    }
    // In bf16 mode, hb holds h_{t-1} rounded: h_0 rounded here, then each step's cell kernel
    // writes its h_t there as well, after the step's product has read h_{t-1} (stream order).
    let mut hb = rounded(h0b, bf)?;
    for t in 0..t_len {
        let mut gates = act.slice(t * batch * g4, batch * g4)?;
        let h_prev = if t == 0 { whole(h0b)? } else { y.slice((t - 1) * bh, bh)? };
        recurrent(be.gemm, batch, hidden, &h_prev, &hb, whh, &whh_r, &mut gates)?;
        let c_prev = c_all.slice(t * bh, bh)?;
        let (mut c_t, mut h_t) = (c_all.slice((t + 1) * bh, bh)?, y.slice(t * bh, bh)?);
        lstm_cell_fwd(&mut gates, &c_prev, &mut c_t, &mut h_t, hb.as_mut(), batch, hidden)?;
    }
    finish_forward(y, act, c_all, d)
}

/// The layer's outputs from its buffers: the last h and c copied out, the cache kept.
fn finish_forward(y: GpuBuf<f32>, act: GpuBuf<f32>, c_all: GpuBuf<f32>, d: LstmDims) -> Result<LstmOutput> {
    let LstmDims { steps: t_len, batch, hidden, .. } = d;
    let (bh, g4, rows) = (batch * hidden, 4 * hidden, t_len * batch);
    let gpu = y.gpu().clone();
    let mut h_last = gpu.alloc::<f32>(bh)?;
    copy(&y.slice((t_len - 1) * bh, bh)?, &mut h_last)?;
    let mut c_last = gpu.alloc::<f32>(bh)?;
    copy(&c_all.slice(t_len * bh, bh)?, &mut c_last)?;
    Ok(LstmOutput {
        y: Tensor::from_gpu_f32(y, &[rows, hidden])?,
        h_last: Tensor::from_gpu_f32(h_last, &[batch, hidden])?,
        c_last: Tensor::from_gpu_f32(c_last, &[batch, hidden])?,
        cache: LstmCache { act: Tensor::from_gpu_f32(act, &[rows, g4])?, c_all: Tensor::from_gpu_f32(c_all, &[(t_len + 1) * batch, hidden])? },
    })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    be: &Backend,
    x: &Tensor,
    h0: &Tensor,
    w_ih: &Tensor,
    w_hh: &Tensor,
    out: &LstmOutput,
    dy: &Tensor,
    dh_last: Option<&Tensor>,
    dc_last: Option<&Tensor>,
) -> Result<LstmGrads> {
    let (rows, input) = (x.dim(0), x.dim(1));
    let (batch, hidden) = (h0.dim(0), h0.dim(1));
    let t_len = rows / batch;
    let (bh, g4) = (batch * hidden, 4 * hidden);
    let (xb, wih, whh, dyb) = (x.cuda_f32()?, w_ih.cuda_f32()?, w_hh.cuda_f32()?, dy.cuda_f32()?);
    let (act, c_all, y) = (out.cache.act.cuda_f32()?, out.cache.c_all.cuda_f32()?, out.y.cuda_f32()?);
    let gpu = xb.gpu().clone();
    let bf = be.matmul == MatmulPrecision::Bf16;
    let state = |t: Option<&Tensor>| -> Result<GpuBuf<f32>> {
        match t {
            Some(t) => {
                t.expect_shape("lstm final state gradient", &[batch, hidden])?;
                t.cuda_f32()?.try_clone()
            }
            None => gpu.full(bh, 0.0),
        }
    };
    let (mut dh, mut dc) = (state(dh_last)?, state(dc_last)?);
    let whh_r = rounded(whh, bf)?;
    let mut dgates = gpu.alloc::<f32>(rows * g4)?;
    let plan = persistent::plan_if_asked(be.lstm, bf, &gpu, batch, hidden);
    if let (Some(p), Some(w)) = (plan, &whh_r) {
        persistent::backward(&p, t_len, batch, hidden, act, c_all, dyb, w, &mut dh, &mut dc, &mut dgates)?;
    }
    let mut dgb = if bf && plan.is_none() { Some(gpu.alloc::<bf16>(batch * g4)?) } else { None };
    for t in (0..t_len).rev().filter(|_| plan.is_none()) {
        axpy(1.0, &dyb.slice(t * bh, bh)?, &mut dh)?;
        let mut dg = dgates.slice(t * batch * g4, batch * g4)?;
        let a_t = act.slice(t * batch * g4, batch * g4)?;
        let (c_prev, c_t) = (c_all.slice(t * bh, bh)?, c_all.slice((t + 1) * bh, bh)?);
        lstm_cell_bwd(&a_t, &c_prev, &c_t, &dh, &mut dc, &mut dg, dgb.as_mut(), batch, hidden)?;
        // dh_{t-1} = dgates_t W_hh^T (overwrites: the old dh has been consumed); in bf16 mode
        // on dgates_t as the cell kernel rounded it
        match (&dgb, &whh_r) {
            (Some(gb), Some(w)) => gemm_bf16_with(be.gemm, batch, hidden, g4, 1.0, gb, false, w, true, 0.0, &mut dh)?,
            _ => gemm_f32(batch, hidden, g4, 1.0, &dg, false, whh, true, 0.0, &mut dh)?,
        }
    }
    // h_0 .. h_{T-1}, the left operands of the recurrent weight gradient
    let h_prev = gpu.alloc::<f32>(rows * hidden)?;
    copy(h0.cuda_f32()?, &mut h_prev.slice(0, bh)?)?;
    if t_len > 1 {
        copy(&y.slice(0, (t_len - 1) * bh)?, &mut h_prev.slice(bh, (t_len - 1) * bh)?)?;
    }
    let (dg_r, hp_r, x_r, wih_r) = (rounded(&dgates, bf)?, rounded(&h_prev, bf)?, rounded(xb, bf)?, rounded(wih, bf)?);
    let dgo = opnd(&dgates, &dg_r)?;
    let mut dw_hh = gpu.alloc::<f32>(hidden * g4)?;
    mm(be.gemm, hidden, g4, rows, &opnd(&h_prev, &hp_r)?, true, &dgo, false, 0.0, &mut dw_hh)?;
    let mut dw_ih = gpu.alloc::<f32>(input * g4)?;
    mm(be.gemm, input, g4, rows, &opnd(xb, &x_r)?, true, &dgo, false, 0.0, &mut dw_ih)?;
    let mut dx = gpu.alloc::<f32>(rows * input)?;
    mm(be.gemm, rows, input, g4, &dgo, false, &opnd(wih, &wih_r)?, true, 0.0, &mut dx)?;
    let mut db = gpu.alloc::<f32>(g4)?;
    sum_rows(&dgates, rows, g4, 0.0, &mut db)?;
    Ok(LstmGrads {
        dx: Tensor::from_gpu_f32(dx, &[rows, input])?,
        dh0: Tensor::from_gpu_f32(dh, &[batch, hidden])?,
        dc0: Tensor::from_gpu_f32(dc, &[batch, hidden])?,
        dw_ih: Tensor::from_gpu_f32(dw_ih, &[input, g4])?,
        dw_hh: Tensor::from_gpu_f32(dw_hh, &[hidden, g4])?,
        db: Tensor::from_gpu_f32(db, &[g4])?,
    })
}
