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
//! call (`ops::matmul::packed`), not repacked at each of the T steps.

pub mod cuda;
pub mod persistent;
mod tape;

use super::matmul::bf16gemm::Bf16B;
use super::matmul::gemm_host;
use super::matmul::packed::PackedB;
use super::reduce::sum_rows_cpu;
use crate::backend::Backend;
use crate::ops::math::{fast_sigmoid, fast_tanh};
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

/// The recurrent weight packed once for a window's per-step products, in the CPU precision and
/// thread count `be` asks.
enum StepWeight<'w> {
    F32(PackedB<'w>),
    Bf16(Bf16B),
}

impl<'w> StepWeight<'w> {
    fn new(be: &Backend, w: &'w [f32], k: usize, n: usize, trans: bool) -> StepWeight<'w> {
        if be.cpu_bf16 {
            StepWeight::Bf16(Bf16B::new_on(be.cpu_threads(), w, k, n, trans))
        } else {
            StepWeight::F32(PackedB::new(w, k, n, trans).with_threads(be.cpu_threads()))
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
#[allow(clippy::too_many_arguments)]
pub fn layer_forward(be: &Backend, x: &Tensor, h0: &Tensor, c0: &Tensor, w_ih: &Tensor, w_hh: &Tensor, b: &Tensor, steps: usize) -> Result<LstmOutput> {
    let LstmDims { steps: t_len, batch, input, hidden } = lstm_dims(x, h0, c0, w_ih, w_hh, b, steps)?;
    let dev = super::same_device(&[("x", x), ("h0", h0), ("c0", c0), ("w_ih", w_ih), ("w_hh", w_hh), ("bias", b)])?;
    if dev != Device::Cpu {
        return cuda::forward(be, x, h0, c0, w_ih, w_hh, b, LstmDims { steps: t_len, batch, input, hidden });
    }
    let (bh, g4) = (batch * hidden, 4 * hidden);
    let rows = t_len * batch;
    let (whh, bias) = (w_hh.f32s()?, b.f32s()?);
    // Input projection for all steps at once, bias folded in.
    let mut act = vec![0f32; rows * g4];
    for row in act.chunks_exact_mut(g4) {
        row.copy_from_slice(bias);
    }
    gemm_host(be, rows, g4, input, 1.0, x.f32s()?, false, w_ih.f32s()?, false, 1.0, &mut act);
    let mut y = vec![0f32; rows * hidden];
    let mut c_all = vec![0f32; (t_len + 1) * bh];
    c_all[..bh].copy_from_slice(c0.f32s()?);
    let h0v = h0.f32s()?;
    // W_hh packed once for the window's per-step products (ops::matmul::packed, or ops::matmul::bf16gemm).
    let whh_p = StepWeight::new(be, whh, hidden, g4, false);
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
        return cuda::backward(be, x, h0, w_ih, w_hh, out, dy, dh_last, dc_last);
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
    let whh_t = StepWeight::new(be, whh, g4, hidden, true);
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
    gemm_host(be, hidden, g4, rows, 1.0, &h_prev, true, &dgates, false, 0.0, &mut dw_hh);
    let mut dw_ih = vec![0f32; input * g4];
    gemm_host(be, input, g4, rows, 1.0, x.f32s()?, true, &dgates, false, 0.0, &mut dw_ih);
    let mut dx = vec![0f32; rows * input];
    gemm_host(be, rows, input, g4, 1.0, &dgates, false, w_ih.f32s()?, true, 0.0, &mut dx);
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

#[cfg(test)]
mod tests {

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
        let out = layer_forward(&crate::Backend::default(), &x, &h0, &c0, &w_ih, &w_hh, &b, 1).unwrap();
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
        let e = layer_forward(&crate::Backend::default(), &x, &h, &h, &Tensor::zeros(&[3, 16]), &Tensor::zeros(&[4, 16]), &Tensor::zeros(&[16]), 3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("7 rows") && e.contains("batch 2"), "{e}");
    }
}
