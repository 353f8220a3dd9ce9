//! The int8 product that evaluates a quantized model with integer arithmetic (W8A8): the weights'
//! levels (8- or 4-bit, one scale per output channel, as [`quantize`] makes and a
//! quantized checkpoint stores) times the activations quantized to int8 on the fly, one symmetric
//! scale per row (`s_x = max |x_row| / 127`), summed exactly in i32 and scaled once:
//!
//! `y[i, j] = s_x[i] * s_w[j] * sum_k q_x[i, k] * q_w[k, j]`
//!
//! The sum is exact (each term at most 127 * 127, so i32 holds any row of fewer than 133,000
//! inputs; longer rows are refused), so the only error against the f32 product of the quantized
//! weights is the activations' rounding, at most `s_x / 2 * sum_k |w[k, j]|` per output. CPU only
//! (no int8 kernel on the GPU yet); rows split over `threads` (the backend's CPU threads).

use super::{levels, quantize};
use crate::{bail, Result};

/// Which arithmetic evaluates a quantized model's products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Products {
    /// f32: the weights' levels times their scales, in f32 (weight-only quantization).
    #[default]
    F32,
    /// int8 activations times the weights' levels, summed in i32 (see the module).
    Int8,
}

crate::named_choices!(Products, "the products' arithmetic", { F32 => "f32", Int8 => "int8" });

/// The largest input width whose i32 sum cannot overflow: `127 * 127 * k < 2^31`.
pub const MAX_INPUTS: usize = (i32::MAX / (127 * 127)) as usize;

/// A weight matrix `[k, n]` (inputs by outputs) as levels and per-output scales, stored output by
/// output (`levels[j * k..(j + 1) * k]` is output j's column) for contiguous dot products.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantMatrix {
    pub inputs: usize,
    pub outputs: usize,
    pub bits: u32,
    levels: Vec<i8>,
    scales: Vec<f32>,
}

impl QuantMatrix {
    /// Quantize `w [inputs, outputs]` per output column at `bits` (8 or 4). For the weights of a
    /// checkpoint quantized at `bits`, whose every value is a level times its column's scale, this
    /// gives back the stored levels (tested against a checkpoint).
    pub fn of(w: &[f32], inputs: usize, outputs: usize, bits: u32) -> Result<QuantMatrix> {
        if bits != 8 && bits != 4 {
            bail!(Invalid, "an int8 product takes 8- or 4-bit weights, got {bits}");
        }
        if w.len() != inputs * outputs || inputs == 0 || outputs == 0 {
            bail!(Invalid, "QuantMatrix::of: {} values for a [{inputs}, {outputs}] matrix", w.len());
        }
        if inputs > MAX_INPUTS {
            bail!(Invalid, "an int8 product sums at most {MAX_INPUTS} inputs in i32, got {inputs}");
        }
        let (q, scales) = quantize(w, inputs, outputs, bits, false);
        let mut levels = vec![0i8; inputs * outputs];
        for k in 0..inputs {
            for j in 0..outputs {
                levels[j * inputs + k] = q[k * outputs + j];
            }
        }
        Ok(QuantMatrix { inputs, outputs, bits, levels, scales })
    }

    /// The levels of output j (its column), and its scale.
    pub fn column(&self, j: usize) -> (&[i8], f32) {
        (&self.levels[j * self.inputs..(j + 1) * self.inputs], self.scales[j])
    }

    /// `x [rows, inputs]` times the matrix, in int8 with i32 sums: `[rows, outputs]`, the rows
    /// split over `threads` (the result does not depend on it).
    pub fn product(&self, x: &[f32], rows: usize, threads: usize) -> Result<Vec<f32>> {
        let k = self.inputs;
        if x.len() != rows * k {
            bail!(Invalid, "int8 product: {} activations for {rows} rows of {k}", x.len());
        }
        if let Some(bad) = x.iter().find(|v| !v.is_finite()) {
            bail!(Invalid, "int8 product: a non-finite activation ({bad}) cannot be quantized");
        }
        let mut y = vec![0f32; rows * self.outputs];
        crate::par::blocks(&mut y, self.outputs, threads, 64, |first, ys| {
            let mut qx = vec![0i8; k];
            for (out, row) in ys.chunks_mut(self.outputs).zip(x[first * k..].chunks(k)) {
                let sx = quantize_row(row, &mut qx);
                for (j, o) in out.iter_mut().enumerate() {
                    let (col, sw) = self.column(j);
                    *o = dot_i8(&qx, col) as f32 * (sx * sw);
                }
            }
        });
        Ok(y)
    }
}

/// One row of activations to int8 levels (symmetric, `max |x| / 127`; a row of zeros: scale 1),
/// written into `q`; returns the scale.
pub fn quantize_row(x: &[f32], q: &mut [i8]) -> f32 {
    let m = levels(8) as f32;
    let max = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let s = if max > 0.0 { max / m } else { 1.0 };
    for (q, v) in q.iter_mut().zip(x) {
        *q = (v / s).round().clamp(-m, m) as i8;
    }
    s
}

/// The exact integer dot product (widened to i32 lane by lane, which vectorises).
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    /// Against f64 on fresh random inputs and odd sizes: the integer sum exactly (the product of
    /// the dequantized operands in f64, to f32 rounding), and the f32 product of the quantized
    /// weights within the activations' rounding bound.
    #[test]
    fn int8_product_is_exact_in_its_levels_and_near_the_f32_product() {
        let mut rng = Rng::new(11);
        for (rows, k, n, bits) in [(1, 1, 1, 8), (3, 17, 5, 8), (33, 130, 7, 4), (5, 1000, 3, 8), (2, 9, 64, 4)] {
            let w: Vec<f32> = (0..k * n).map(|_| rng.normal() as f32).collect();
            let mut x: Vec<f32> = (0..rows * k).map(|_| (rng.normal() * 3.0) as f32).collect();
            x[..k.min(3)].iter_mut().for_each(|v| *v = 0.0); // a row with zeros in it
            let m = QuantMatrix::of(&w, k, n, bits).unwrap();
            let y = m.product(&x, rows, 3).unwrap();
            assert_eq!(y, m.product(&x, rows, 1).unwrap(), "the thread count changed the result");
            let (q, s) = quantize(&w, k, n, bits, false);
            let mut qx = vec![0i8; k];
            for i in 0..rows {
                let sx = quantize_row(&x[i * k..(i + 1) * k], &mut qx);
                for j in 0..n {
                    let exact: f64 = (0..k).map(|t| qx[t] as f64 * sx as f64 * q[t * n + j] as f64 * s[j] as f64).sum();
                    let got = y[i * n + j] as f64;
                    let scale: f64 = (0..k).map(|t| (qx[t] as f64 * sx as f64 * q[t * n + j] as f64 * s[j] as f64).abs()).sum::<f64>() + 1e-30;
                    assert!((got - exact).abs() <= 1e-6 * scale, "[{rows}x{k}x{n}] ({i},{j}): {got} against {exact}");
                    let f32prod: f64 = (0..k).map(|t| x[i * k + t] as f64 * q[t * n + j] as f64 * s[j] as f64).sum();
                    let bound: f64 = 0.5 * sx as f64 * (0..k).map(|t| (q[t * n + j] as f64 * s[j] as f64).abs()).sum::<f64>();
                    assert!((got - f32prod).abs() <= bound * (1.0 + 1e-5) + 1e-6 * scale, "({i},{j}): {got} against {f32prod}, bound {bound}");
                }
            }
        }
    }

    #[test]
    fn stored_levels_come_back_and_bad_input_is_refused() {
        let mut rng = Rng::new(2);
        let (k, n) = (23, 6);
        let w: Vec<f32> = (0..k * n).map(|_| rng.normal() as f32).collect();
        for bits in [8, 4] {
            let (q, s) = quantize(&w, k, n, bits, false);
            let deq = super::super::dequantize(&q, &s, k, n, false);
            let m = QuantMatrix::of(&deq, k, n, bits).unwrap();
            for j in 0..n {
                let (col, sw) = m.column(j);
                assert!((sw - s[j]).abs() <= 1e-6 * s[j], "scale {j}");
                assert!(col.iter().enumerate().all(|(t, &l)| l == q[t * n + j]), "levels of column {j} at {bits} bits");
            }
        }
        assert!(QuantMatrix::of(&w, k, n, 2).unwrap_err().to_string().contains("8- or 4-bit"));
        let m = QuantMatrix::of(&w, k, n, 8).unwrap();
        assert!(m.product(&[f32::NAN; 23], 1, 2).unwrap_err().to_string().contains("non-finite"));
        assert!(m.product(&[0.0; 22], 1, 2).is_err());
        assert_eq!(m.product(&[0.0; 23], 1, 2).unwrap(), vec![0.0; n]);
    }
}
