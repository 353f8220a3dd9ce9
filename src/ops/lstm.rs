//! LSTM, one layer over a whole sequence, as one op.
//!
//! Layout: time-major rows, row `t * B + b`. Weights `w_ih [In, 4H]`, `w_hh [H, 4H]`, bias
//! `[4H]`; the 4H gate columns are ordered i, f, g, o (input, forget, cell candidate, output).
//!
//! ```text
//! gates_t = x_t W_ih + h_{t-1} W_hh + b           (x W_ih for all t is one matmul up front)
//! i, f, o = sigmoid(.)   g = tanh(.)
//! c_t = f * c_{t-1} + i * g        h_t = o * tanh(c_t)
//! ```
//!
//! The pointwise part is `cell_forward_cpu` / `cell_backward_cpu`, the twins of the fused kernels
//! in `kernels/lstm.cu`. Forward keeps the activated gates and every c_t; backward runs through
//! time inside the op and finishes with three large matmuls for the weight and input gradients.
//! On the CPU the per-step products use `W_hh` (forward) and `W_hh^T` (backward) packed once per
//! call (`ops::packed`), not repacked at each of the T steps.

use super::bf16gemm::Bf16B;
use super::matmul::gemm_host;
use super::packed::PackedB;
use super::reduce::sum_rows_cpu;
use super::softmax_kl::exp_f32;
use crate::tensor::{Device, Tensor};
use crate::{bail, Result};

/// Fused cell forward for one step. `gates [B, 4H]` holds the pre-activations on entry and the
/// activations (i, f, g, o) on exit; writes `c [B, H]` and `h [B, H]`.
pub fn cell_forward_cpu(gates: &mut [f32], c_prev: &[f32], c: &mut [f32], h: &mut [f32], hidden: usize) {
    for (b, gr) in gates.chunks_exact_mut(4 * hidden).enumerate() {
        let (gi, rest) = gr.split_at_mut(hidden);
        let (gf, rest) = rest.split_at_mut(hidden);
        let (gg, go) = rest.split_at_mut(hidden);
        let span = b * hidden..(b + 1) * hidden;
        let (cp, cr, hr) = (&c_prev[span.clone()], &mut c[span.clone()], &mut h[span]);
        for j in 0..hidden {
            let i = fast_sigmoid(gi[j]);
            let f = fast_sigmoid(gf[j]);
            let g = fast_tanh(gg[j]);
            let o = fast_sigmoid(go[j]);
            (gi[j], gf[j], gg[j], go[j]) = (i, f, g, o);
            let cv = f * cp[j] + i * g;
            cr[j] = cv;
            hr[j] = o * fast_tanh(cv);
        }
    }
}

/// `1 / (1 + e^-x)` through the vectorisable [`exp_f32`] (within 3e-7 relative; exactly 1 from
/// x = 88 up, about 6e-39 from x = -87 down where the true value is smaller still).
#[inline(always)]
fn fast_sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-x))
}

/// `tanh` as Cephes' `tanhf`: an odd polynomial below |x| = 0.625 (so small arguments keep their
/// relative precision), `1 - 2 / (e^2|x| + 1)` above; both computed and one selected, so loops
/// vectorise. Within a few ulp of libm's.
#[inline(always)]
fn fast_tanh(x: f32) -> f32 {
    let a = x.abs();
    let z = x * x;
    let small = ((((-5.704_988_7e-3 * z + 2.063_909e-2) * z - 5.373_971_6e-2) * z + 0.133_314_42) * z - 0.333_332_8) * z * x + x;
    let large = (1.0 - 2.0 / (exp_f32(2.0 * a) + 1.0)).copysign(x);
    if a < 0.625 {
        small
    } else {
        large
    }
}

/// Fused cell backward for one step. Given the activations, `c_{t-1}`, `c_t`, the gradient `dh`
/// reaching h_t and `dc` reaching c_t from step t+1, writes the pre-activation gradients
/// `dgates [B, 4H]` and overwrites `dc` with the gradient reaching c_{t-1}.
pub fn cell_backward_cpu(act: &[f32], c_prev: &[f32], c: &[f32], dh: &[f32], dc: &mut [f32], dgates: &mut [f32], hidden: usize) {
    for (b, (ar, dr)) in act.chunks_exact(4 * hidden).zip(dgates.chunks_exact_mut(4 * hidden)).enumerate() {
        for j in 0..hidden {
            let k = b * hidden + j;
            let (i, f, g, o) = (ar[j], ar[hidden + j], ar[2 * hidden + j], ar[3 * hidden + j]);
            let tc = fast_tanh(c[k]);
            let dct = dc[k] + dh[k] * o * (1.0 - tc * tc);
            dr[j] = dct * g * i * (1.0 - i);
            dr[hidden + j] = dct * c_prev[k] * f * (1.0 - f);
            dr[2 * hidden + j] = dct * i * (1.0 - g * g);
            dr[3 * hidden + j] = dh[k] * tc * o * (1.0 - o);
            dc[k] = dct * f;
        }
    }
}

/// What backward needs from forward (on the layer's device).
#[derive(Clone, Debug)]
pub struct LstmCache {
    /// Activated gates for every step, `[T*B, 4H]`.
    pub act: Tensor,
    /// c_0 .. c_T, `[(T+1)*B, H]`.
    pub c_all: Tensor,
}

/// Outputs of one layer over a sequence.
#[derive(Clone, Debug)]
pub struct LstmOutput {
    /// h_1 .. h_T, `[T*B, H]`.
    pub y: Tensor,
    pub h_last: Tensor,
    pub c_last: Tensor,
    pub cache: LstmCache,
}

/// Gradients of one layer.
#[derive(Clone, Debug)]
pub struct LstmGrads {
    pub dx: Tensor,
    pub dh0: Tensor,
    pub dc0: Tensor,
    pub dw_ih: Tensor,
    pub dw_hh: Tensor,
    pub db: Tensor,
}

/// Shapes of a layer call: (T, B, In, H), checked against every argument.
pub struct LstmDims {
    pub steps: usize,
    pub batch: usize,
    pub input: usize,
    pub hidden: usize,
}

pub fn lstm_dims(x: &Tensor, h0: &Tensor, c0: &Tensor, w_ih: &Tensor, w_hh: &Tensor, b: &Tensor, steps: usize) -> Result<LstmDims> {
    let (rows, input) = x.expect_2d("lstm input")?;
    let (batch, hidden) = h0.expect_2d("lstm h0")?;
    if steps == 0 || rows != steps * batch {
        bail!(Shape, "lstm input has {rows} rows; {steps} steps of batch {batch} (from h0 {:?}) need {}", h0.shape(), steps * batch);
    }
    c0.expect_shape("lstm c0", &[batch, hidden])?;
    w_ih.expect_shape("lstm w_ih", &[input, 4 * hidden])?;
    w_hh.expect_shape("lstm w_hh", &[hidden, 4 * hidden])?;
    b.expect_shape("lstm bias", &[4 * hidden])?;
    Ok(LstmDims { steps, batch, input, hidden })
}

/// The recurrent weight packed once for a window's per-step products, in the process's CPU
/// precision ([`crate::set_cpu_bf16`]).
enum StepWeight<'w> {
    F32(PackedB<'w>),
    Bf16(Bf16B),
}

impl<'w> StepWeight<'w> {
    fn new(w: &'w [f32], k: usize, n: usize, trans: bool) -> StepWeight<'w> {
        if crate::cpu_bf16() {
            StepWeight::Bf16(Bf16B::new(w, k, n, trans))
        } else {
            StepWeight::F32(PackedB::new(w, k, n, trans))
        }
    }

    /// `C = A @ W + beta * C` for `A [m, k]`.
    fn gemm(&self, m: usize, a: &[f32], beta: f32, c: &mut [f32]) {
        match self {
            StepWeight::F32(p) => p.gemm(m, a, beta, c),
            StepWeight::Bf16(p) => p.gemm(m, 1.0, a, false, beta, c),
        }
    }
}

/// One layer forward over `steps` time steps.
pub fn layer_forward(x: &Tensor, h0: &Tensor, c0: &Tensor, w_ih: &Tensor, w_hh: &Tensor, b: &Tensor, steps: usize) -> Result<LstmOutput> {
    let LstmDims { steps: t_len, batch, input, hidden } = lstm_dims(x, h0, c0, w_ih, w_hh, b, steps)?;
    let dev = super::same_device(&[("x", x), ("h0", h0), ("c0", c0), ("w_ih", w_ih), ("w_hh", w_hh), ("bias", b)])?;
    if dev != Device::Cpu {
        return cuda_layer::forward(x, h0, c0, w_ih, w_hh, b, LstmDims { steps: t_len, batch, input, hidden });
    }
    let (bh, g4) = (batch * hidden, 4 * hidden);
    let rows = t_len * batch;
    let (whh, bias) = (w_hh.f32s()?, b.f32s()?);
    // Input projection for all steps at once, bias folded in.
    let mut act = vec![0f32; rows * g4];
    for row in act.chunks_exact_mut(g4) {
        row.copy_from_slice(bias);
    }
    gemm_host(rows, g4, input, 1.0, x.f32s()?, false, w_ih.f32s()?, false, 1.0, &mut act);
    let mut y = vec![0f32; rows * hidden];
    let mut c_all = vec![0f32; (t_len + 1) * bh];
    c_all[..bh].copy_from_slice(c0.f32s()?);
    let h0v = h0.f32s()?;
    // W_hh packed once for the window's per-step products (ops::packed, or ops::bf16gemm).
    let whh_p = StepWeight::new(whh, hidden, g4, false);
    for t in 0..t_len {
        let gates = &mut act[t * batch * g4..(t + 1) * batch * g4];
        let (y_prev, y_rest) = y.split_at_mut(t * bh);
        let h_prev = if t == 0 { h0v } else { &y_prev[(t - 1) * bh..] };
        whh_p.gemm(batch, &h_prev[..bh], 1.0, gates);
        let (c_prev, c_rest) = c_all.split_at_mut((t + 1) * bh);
        cell_forward_cpu(gates, &c_prev[t * bh..], &mut c_rest[..bh], &mut y_rest[..bh], hidden);
    }
    let h_last = Tensor::from_f32(y[(t_len - 1) * bh..].to_vec(), &[batch, hidden])?;
    let c_last = Tensor::from_f32(c_all[t_len * bh..].to_vec(), &[batch, hidden])?;
    let cache = LstmCache { act: Tensor::from_f32(act, &[rows, g4])?, c_all: Tensor::from_f32(c_all, &[(t_len + 1) * batch, hidden])? };
    Ok(LstmOutput { y: Tensor::from_f32(y, &[rows, hidden])?, h_last, c_last, cache })
}

/// One layer backward through time. `dy [T*B, H]` is the gradient of every output; `dh_last` and
/// `dc_last` (optional) reach the final state from outside the window.
#[allow(clippy::too_many_arguments)]
pub fn layer_backward(
    x: &Tensor,
    h0: &Tensor,
    w_ih: &Tensor,
    w_hh: &Tensor,
    out: &LstmOutput,
    dy: &Tensor,
    dh_last: Option<&Tensor>,
    dc_last: Option<&Tensor>,
) -> Result<LstmGrads> {
    let (rows, input) = x.expect_2d("lstm input")?;
    let (batch, hidden) = h0.expect_2d("lstm h0")?;
    let t_len = rows / batch;
    dy.expect_shape("lstm output gradient", &[rows, hidden])?;
    w_ih.expect_shape("lstm w_ih", &[input, 4 * hidden])?;
    w_hh.expect_shape("lstm w_hh", &[hidden, 4 * hidden])?;
    out.y.expect_shape("lstm output", &[rows, hidden])?;
    out.cache.act.expect_shape("lstm cached gates", &[rows, 4 * hidden])?;
    out.cache.c_all.expect_shape("lstm cached cells", &[rows + batch, hidden])?;
    let mut all = vec![("x", x), ("h0", h0), ("w_ih", w_ih), ("w_hh", w_hh), ("y", &out.y), ("dy", dy)];
    all.extend(dh_last.map(|t| ("dh_last", t)));
    all.extend(dc_last.map(|t| ("dc_last", t)));
    if super::same_device(&all)? != Device::Cpu {
        return cuda_layer::backward(x, h0, w_ih, w_hh, out, dy, dh_last, dc_last);
    }
    let (bh, g4) = (batch * hidden, 4 * hidden);
    let mut dh = match dh_last {
        Some(t) => {
            t.expect_shape("lstm final h gradient", &[batch, hidden])?;
            t.f32s()?.to_vec()
        }
        None => vec![0f32; bh],
    };
    let mut dc = match dc_last {
        Some(t) => {
            t.expect_shape("lstm final c gradient", &[batch, hidden])?;
            t.f32s()?.to_vec()
        }
        None => vec![0f32; bh],
    };
    let (dyv, whh, yv) = (dy.f32s()?, w_hh.f32s()?, out.y.f32s()?);
    let (act, c_all) = (out.cache.act.f32s()?, out.cache.c_all.f32s()?);
    let mut dgates = vec![0f32; rows * g4];
    // W_hh^T packed once for the per-step products dh_{t-1} = dgates_t W_hh^T.
    let whh_t = StepWeight::new(whh, g4, hidden, true);
    for t in (0..t_len).rev() {
        for (d, &g) in dh.iter_mut().zip(&dyv[t * bh..(t + 1) * bh]) {
            *d += g;
        }
        let dg = &mut dgates[t * batch * g4..(t + 1) * batch * g4];
        cell_backward_cpu(
            &act[t * batch * g4..(t + 1) * batch * g4],
            &c_all[t * bh..(t + 1) * bh],
            &c_all[(t + 1) * bh..(t + 2) * bh],
            &dh,
            &mut dc,
            dg,
            hidden,
        );
        // dh_{t-1} = dgates_t W_hh^T (overwrites: the old dh has been consumed)
        whh_t.gemm(batch, dg, 0.0, &mut dh);
    }
    // h_0 .. h_{T-1}, the left operands of the recurrent matmuls
    let mut h_prev = Vec::with_capacity(rows * hidden);
    h_prev.extend_from_slice(h0.f32s()?);
    h_prev.extend_from_slice(&yv[..(t_len - 1) * bh]);
    let mut dw_hh = vec![0f32; hidden * g4];
    gemm_host(hidden, g4, rows, 1.0, &h_prev, true, &dgates, false, 0.0, &mut dw_hh);
    let mut dw_ih = vec![0f32; input * g4];
    gemm_host(input, g4, rows, 1.0, x.f32s()?, true, &dgates, false, 0.0, &mut dw_ih);
    let mut dx = vec![0f32; rows * input];
    gemm_host(rows, input, g4, 1.0, &dgates, false, w_ih.f32s()?, true, 0.0, &mut dx);
    let mut db = vec![0f32; g4];
    sum_rows_cpu(&dgates, g4, 0.0, &mut db);
    Ok(LstmGrads {
        dx: Tensor::from_f32(dx, &[rows, input])?,
        dh0: Tensor::from_f32(dh, &[batch, hidden])?,
        dc0: Tensor::from_f32(dc, &[batch, hidden])?,
        dw_ih: Tensor::from_f32(dw_ih, &[input, g4])?,
        dw_hh: Tensor::from_f32(dw_hh, &[hidden, g4])?,
        db: Tensor::from_f32(db, &[g4])?,
    })
}

/// The layer on the GPU: the same algorithm as the CPU twins above, with the pointwise steps in
/// the fused cell kernels and the products on `cuda::kernels::gemm_*` in the process's matmul
/// precision (bf16 operands are rounded once per layer call for the weights and the inputs, and
/// once per time step for the recurrent operand).
mod cuda_layer {
    use super::{LstmCache, LstmDims, LstmGrads, LstmOutput};
    use crate::cuda::kernels as k;
    use crate::cuda::{copy, matmul_precision, GpuBuf, GpuRange, MatmulPrecision, Slice};
    use crate::tensor::Tensor;
    use crate::Result;
    use half::bf16;

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
        k::f32_to_bf16(x, &mut r)?;
        Ok(Some(r))
    }

    fn opnd<'a>(x: &'a GpuBuf<f32>, r: &'a Option<GpuBuf<bf16>>) -> Result<Opnd<'a>> {
        Ok(match r {
            Some(b) => Opnd::Bf16(whole(b)?),
            None => Opnd::F32(whole(x)?),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn mm(m: usize, n: usize, kk: usize, a: &Opnd, ta: bool, b: &Opnd, tb: bool, beta: f32, c: &mut impl GpuRange<f32>) -> Result<()> {
        match (a, b) {
            (Opnd::F32(a), Opnd::F32(b)) => k::gemm_f32(m, n, kk, 1.0, a, ta, b, tb, beta, c),
            (Opnd::Bf16(a), Opnd::Bf16(b)) => k::gemm_bf16(m, n, kk, 1.0, a, ta, b, tb, beta, c),
            _ => Err(crate::Error::Invalid("lstm: matmul operands in two precisions".into())),
        }
    }

    /// `gates += h @ W_hh` for one step: in bf16 mode on `hb`, h already rounded (by the previous
    /// step's cell kernel, or before the first step).
    fn recurrent(
        batch: usize,
        hidden: usize,
        h: &Slice<f32>,
        hb: &Option<GpuBuf<bf16>>,
        whh: &GpuBuf<f32>,
        whh_r: &Option<GpuBuf<bf16>>,
        gates: &mut Slice<f32>,
    ) -> Result<()> {
        match (hb, whh_r) {
            (Some(hb), Some(w)) => k::gemm_bf16(batch, 4 * hidden, hidden, 1.0, hb, false, w, false, 1.0, gates),
            _ => k::gemm_f32(batch, 4 * hidden, hidden, 1.0, h, false, whh, false, 1.0, gates),
        }
    }

    pub(super) fn forward(x: &Tensor, h0: &Tensor, c0: &Tensor, w_ih: &Tensor, w_hh: &Tensor, b: &Tensor, d: LstmDims) -> Result<LstmOutput> {
        let LstmDims { steps: t_len, batch, input, hidden } = d;
        let (bh, g4, rows) = (batch * hidden, 4 * hidden, t_len * batch);
        let (xb, wih, whh) = (x.cuda_f32()?, w_ih.cuda_f32()?, w_hh.cuda_f32()?);
        let gpu = xb.gpu().clone();
        let bf = matmul_precision() == MatmulPrecision::Bf16;
        let (x_r, wih_r, whh_r) = (rounded(xb, bf)?, rounded(wih, bf)?, rounded(whh, bf)?);
        // Input projection for all steps at once, then the bias added in place.
        let mut act = gpu.alloc::<f32>(rows * g4)?;
        mm(rows, g4, input, &opnd(xb, &x_r)?, false, &opnd(wih, &wih_r)?, false, 0.0, &mut act)?;
        {
            // In place: each element is read, then written, by one thread.
            let (a_in, mut a_out) = (whole(&act)?, whole(&act)?);
            k::add_row_bias(&a_in, b.cuda_f32()?, &mut a_out)?;
        }
        let y = gpu.alloc::<f32>(rows * hidden)?;
        let c_all = gpu.alloc::<f32>((t_len + 1) * bh)?;
        copy(c0.cuda_f32()?, &mut c_all.slice(0, bh)?)?;
        let h0b = h0.cuda_f32()?;
        // In bf16 mode, hb holds h_{t-1} rounded: h_0 rounded here, then each step's cell kernel
        // writes its h_t there as well, after the step's product has read h_{t-1} (stream order).
        let mut hb = rounded(h0b, bf)?;
        for t in 0..t_len {
            let mut gates = act.slice(t * batch * g4, batch * g4)?;
            let h_prev = if t == 0 { whole(h0b)? } else { y.slice((t - 1) * bh, bh)? };
            recurrent(batch, hidden, &h_prev, &hb, whh, &whh_r, &mut gates)?;
            let c_prev = c_all.slice(t * bh, bh)?;
            let (mut c_t, mut h_t) = (c_all.slice((t + 1) * bh, bh)?, y.slice(t * bh, bh)?);
            k::lstm_cell_fwd(&mut gates, &c_prev, &mut c_t, &mut h_t, hb.as_mut(), batch, hidden)?;
        }
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
        let bf = matmul_precision() == MatmulPrecision::Bf16;
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
        let dgates = gpu.alloc::<f32>(rows * g4)?;
        let mut dgb = if bf { Some(gpu.alloc::<bf16>(batch * g4)?) } else { None };
        for t in (0..t_len).rev() {
            k::axpy(1.0, &dyb.slice(t * bh, bh)?, &mut dh)?;
            let mut dg = dgates.slice(t * batch * g4, batch * g4)?;
            let a_t = act.slice(t * batch * g4, batch * g4)?;
            let (c_prev, c_t) = (c_all.slice(t * bh, bh)?, c_all.slice((t + 1) * bh, bh)?);
            k::lstm_cell_bwd(&a_t, &c_prev, &c_t, &dh, &mut dc, &mut dg, dgb.as_mut(), batch, hidden)?;
            // dh_{t-1} = dgates_t W_hh^T (overwrites: the old dh has been consumed); in bf16 mode
            // on dgates_t as the cell kernel rounded it
            match (&dgb, &whh_r) {
                (Some(gb), Some(w)) => k::gemm_bf16(batch, hidden, g4, 1.0, gb, false, w, true, 0.0, &mut dh)?,
                _ => k::gemm_f32(batch, hidden, g4, 1.0, &dg, false, whh, true, 0.0, &mut dh)?,
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
        mm(hidden, g4, rows, &opnd(&h_prev, &hp_r)?, true, &dgo, false, 0.0, &mut dw_hh)?;
        let mut dw_ih = gpu.alloc::<f32>(input * g4)?;
        mm(input, g4, rows, &opnd(xb, &x_r)?, true, &dgo, false, 0.0, &mut dw_ih)?;
        let mut dx = gpu.alloc::<f32>(rows * input)?;
        mm(rows, input, g4, &dgo, false, &opnd(wih, &wih_r)?, true, 0.0, &mut dx)?;
        let mut db = gpu.alloc::<f32>(g4)?;
        k::sum_rows(&dgates, rows, g4, 0.0, &mut db)?;
        Ok(LstmGrads {
            dx: Tensor::from_gpu_f32(dx, &[rows, input])?,
            dh0: Tensor::from_gpu_f32(dh, &[batch, hidden])?,
            dc0: Tensor::from_gpu_f32(dc, &[batch, hidden])?,
            dw_ih: Tensor::from_gpu_f32(dw_ih, &[input, g4])?,
            dw_hh: Tensor::from_gpu_f32(dw_hh, &[hidden, g4])?,
            db: Tensor::from_gpu_f32(db, &[g4])?,
        })
    }
}

#[cfg(test)]
mod tests {

    /// The vectorised activations against f64 over the gate range and beyond, relative error
    /// (absolute below 1e-30, where the sigmoid's tail is clamped).
    #[test]
    fn fast_activations_match_f64() {
        let (mut ws, mut wt) = (0f64, 0f64);
        for i in -200_000..=200_000 {
            let x = i as f32 * 1e-4 * 3.0; // [-60, 60], finest near 0
            let x = if i % 2 == 0 { x } else { x * 1e-3 };
            let s = 1.0 / (1.0 + (-(x as f64)).exp());
            let t = (x as f64).tanh();
            ws = ws.max(((fast_sigmoid(x) as f64 - s) / s.max(1e-30)).abs().min((fast_sigmoid(x) as f64 - s).abs() * 1e30));
            wt = wt.max(if t == 0.0 { (fast_tanh(x) as f64).abs() } else { ((fast_tanh(x) as f64 - t) / t).abs() });
        }
        assert!(ws < 1e-6, "sigmoid worst relative error {ws:e}");
        assert!(wt < 1e-6, "tanh worst relative error {wt:e}");
        assert_eq!((fast_tanh(1e4), fast_tanh(-1e4), fast_sigmoid(1e4)), (1.0, -1.0, 1.0));
        assert!(fast_sigmoid(-1e4) < 1e-37);
    }

    use super::*;
    use crate::Rng;

    #[test]
    fn single_step_matches_hand_computation() {
        // B = 1, H = 1, In = 1: every number can be followed by hand.
        let x = Tensor::from_f32(vec![0.5], &[1, 1]).unwrap();
        let h0 = Tensor::from_f32(vec![0.1], &[1, 1]).unwrap();
        let c0 = Tensor::from_f32(vec![-0.2], &[1, 1]).unwrap();
        let w_ih = Tensor::from_f32(vec![1.0, -1.0, 0.5, 2.0], &[1, 4]).unwrap();
        let w_hh = Tensor::from_f32(vec![0.3, 0.2, -0.4, 0.1], &[1, 4]).unwrap();
        let b = Tensor::from_f32(vec![0.0, 1.0, 0.0, -0.5], &[4]).unwrap();
        let out = layer_forward(&x, &h0, &c0, &w_ih, &w_hh, &b, 1).unwrap();
        let s = |v: f64| 1.0 / (1.0 + (-v).exp());
        let (i, f) = (s(0.5 + 0.03), s(-0.5 + 0.02 + 1.0));
        let g = (0.25f64 - 0.04).tanh();
        let o = s(1.0 + 0.01 - 0.5);
        let c = f * -0.2 + i * g;
        let h = o * c.tanh();
        assert!((out.c_last.item().unwrap() as f64 - c).abs() < 1e-6);
        assert!((out.h_last.item().unwrap() as f64 - h).abs() < 1e-6);
    }

    #[test]
    fn wrong_row_count_names_steps_and_batch() {
        let mut rng = Rng::new(0);
        let x = Tensor::randn(&[7, 3], 1.0, &mut rng);
        let h = Tensor::zeros(&[2, 4]);
        let e = layer_forward(&x, &h, &h, &Tensor::zeros(&[3, 16]), &Tensor::zeros(&[4, 16]), &Tensor::zeros(&[16]), 3).unwrap_err().to_string();
        assert!(e.contains("7 rows") && e.contains("batch 2"), "{e}");
    }
}
