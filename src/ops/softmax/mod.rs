//! The softmax of each row, `y_rj = exp(x_rj - max_r) / sum_k exp(x_rk - max_r)` over the last
//! dimension, and its backward `dx_rj = y_rj (dy_rj - sum_k dy_rk y_rk)`. What a Gumbel-softmax
//! relaxes a categorical choice with (the click model's data-free generator picks each field's
//! category row through it). Computed on the host (a GPU tensor is copied there and back: correct,
//! not fast; no kernel is written for it yet), each row in f64.

mod tape;

use crate::tensor::{Device, Tensor};
use crate::{bail, Result};

/// The rows of `x` (its last dimension) as a `[rows, width]` view's sizes, or an error.
fn rows_of(x: &Tensor, what: &str) -> Result<(usize, usize)> {
    let width = match x.shape().last() {
        Some(&w) if w > 0 => w,
        _ => bail!(Shape, "{what}: softmax needs a last dimension of at least 1, got shape {:?}", x.shape()),
    };
    Ok((x.numel() / width, width))
}

fn host(x: &Tensor) -> Result<Vec<f32>> {
    x.to_vec_f32()
}

fn back_to(v: Vec<f32>, shape: &[usize], dev: Device) -> Result<Tensor> {
    Tensor::from_f32(v, shape)?.to_device(dev)
}

/// The softmax of each row of `x` (over its last dimension), same shape. A row holding a
/// non-finite value is an error naming it.
pub fn softmax_rows(x: &Tensor) -> Result<Tensor> {
    let (rows, w) = rows_of(x, "x")?;
    let xv = host(x)?;
    let mut out = vec![0f32; xv.len()];
    for r in 0..rows {
        let row = &xv[r * w..(r + 1) * w];
        if let Some(j) = row.iter().position(|v| !v.is_finite()) {
            bail!(Invalid, "softmax: row {r} holds {} at column {j}", row[j]);
        }
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let e: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
        let s: f64 = e.iter().sum();
        for (o, v) in out[r * w..(r + 1) * w].iter_mut().zip(&e) {
            *o = (v / s) as f32;
        }
    }
    back_to(out, x.shape(), x.device())
}

/// The gradient with respect to the softmax's input, from its output `y` and the output's
/// gradient `dy` (same shapes).
pub fn softmax_rows_backward(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    if y.shape() != dy.shape() {
        bail!(Shape, "softmax backward: y {:?} and dy {:?} differ", y.shape(), dy.shape());
    }
    let (rows, w) = rows_of(y, "y")?;
    let (yv, gv) = (host(y)?, host(dy)?);
    let mut out = vec![0f32; yv.len()];
    for r in 0..rows {
        let (yr, gr) = (&yv[r * w..(r + 1) * w], &gv[r * w..(r + 1) * w]);
        let dot: f64 = yr.iter().zip(gr).map(|(&a, &b)| a as f64 * b as f64).sum();
        for ((o, &a), &b) in out[r * w..(r + 1) * w].iter_mut().zip(yr).zip(gr) {
            *o = (a as f64 * (b as f64 - dot)) as f32;
        }
    }
    back_to(out, y.shape(), y.device())
}
