//! Weight quantization for quantized distillation (Polino et al. 2018): symmetric, one scale per
//! output channel, `q = round(w / s)` clamped to `[-m, m]` (`m` = 127 for 8 bits, 7 for 4 bits),
//! `s = max |w| / m` over the channel. Training runs the forward pass on the quantized weights
//! (`q * s`, fake quantization) and applies the gradient they receive to the full-precision shadow
//! weights the optimizer keeps: the straight-through estimator. A weights-only checkpoint of a
//! quantized run stores `q` as I8 and `s` as F32 (`<name>.scale`), and loading it gives back the
//! quantized model's weights `q * s` (see `crate::checkpoint`); `ParamStore::quantized_copy` is the fake-quantized store.
//!
//! Which weights: every matrix of the model (LSTM, linear and embedding tables); not biases, not a
//! feature-hint map or a discriminator. Output channels: a matrix `[in, out]`'s columns; an embedding table's rows
//! (one vector per id). Computed on the host (a GPU store is copied: correct, not fast).
//!
//! [`int8`]: the integer product that evaluates such a model with int8 activations (`--products int8`).

use crate::tensor::{Device, Tensor};
use crate::{bail, Result};

pub mod int8;
pub use int8::{Products, QuantMatrix};

/// The weight precision of a quantized run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Quant {
    /// Full precision (f32): no quantization.
    #[default]
    None,
    Int8,
    Int4,
}

crate::named_choices!(Quant, "the weight precision", { None => "none", Int8 => "int8", Int4 => "int4" });

impl Quant {
    /// Bits per weight (None at full precision).
    pub fn bits(self) -> Option<u32> {
        match self {
            Quant::None => None,
            Quant::Int8 => Some(8),
            Quant::Int4 => Some(4),
        }
    }

    /// Of a bit width.
    pub fn of_bits(bits: u32) -> Result<Quant> {
        match bits {
            8 => Ok(Quant::Int8),
            4 => Ok(Quant::Int4),
            _ => bail!(Invalid, "quantized weights have 8 or 4 bits, got {bits}"),
        }
    }
}

/// The largest level of `bits`-bit symmetric quantization.
pub fn levels(bits: u32) -> i32 {
    (1 << (bits - 1)) - 1
}

/// Whether parameter `name` of shape `shape` is quantized, and whether its channels are rows.
pub fn quantized_param(name: &str, shape: &[usize]) -> Option<bool> {
    let weight = name.ends_with(".weight") || name.ends_with(".w_ih") || name.ends_with(".w_hh");
    if shape.len() != 2 || !weight || name.contains(".hint") || name.contains(".adv.") || name.starts_with("optim/") {
        return None;
    }
    Some(name.contains("embedding"))
}

/// `w [rows, cols]` quantized per channel (rows when `per_row`, else columns): the levels and the
/// scales (one per channel). A channel of zeros has scale 1.
pub fn quantize(w: &[f32], rows: usize, cols: usize, bits: u32, per_row: bool) -> (Vec<i8>, Vec<f32>) {
    let m = levels(bits) as f32;
    let channels = if per_row { rows } else { cols };
    let mut max = vec![0f32; channels];
    for r in 0..rows {
        for c in 0..cols {
            let ch = if per_row { r } else { c };
            max[ch] = max[ch].max(w[r * cols + c].abs());
        }
    }
    let scales: Vec<f32> = max.iter().map(|&a| if a > 0.0 { a / m } else { 1.0 }).collect();
    let mut q = vec![0i8; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            let s = scales[if per_row { r } else { c }];
            q[r * cols + c] = (w[r * cols + c] / s).round().clamp(-m, m) as i8;
        }
    }
    (q, scales)
}

/// Levels and scales back to weights, `q * s`.
pub fn dequantize(q: &[i8], scales: &[f32], rows: usize, cols: usize, per_row: bool) -> Vec<f32> {
    (0..rows * cols).map(|i| q[i] as f32 * scales[if per_row { i / cols } else { i % cols }]).collect()
}

/// `t` with its values quantized and back (fake quantization), on its device.
pub fn fake_quant(t: &Tensor, bits: u32, per_row: bool) -> Result<Tensor> {
    let (rows, cols) = t.expect_2d("a quantized weight")?;
    let host = t.to_device(Device::Cpu)?;
    let (q, s) = quantize(host.f32s()?, rows, cols, bits, per_row);
    Tensor::from_f32(dequantize(&q, &s, rows, cols, per_row), &[rows, cols])?.to_device(t.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    #[test]
    fn levels_and_scales_round_trip_within_half_a_step() {
        let (rows, cols) = (7, 5);
        let w = Tensor::randn(&[rows, cols], 1.0, &mut Rng::new(4)).to_vec_f32().unwrap();
        for bits in [8, 4] {
            for per_row in [false, true] {
                let (q, s) = quantize(&w, rows, cols, bits, per_row);
                let m = levels(bits);
                assert!(q.iter().all(|&v| (v as i32).abs() <= m));
                let back = dequantize(&q, &s, rows, cols, per_row);
                for i in 0..rows * cols {
                    let sc = s[if per_row { i / cols } else { i % cols }];
                    assert!((back[i] - w[i]).abs() <= 0.5 * sc + 1e-7, "bits {bits} per_row {per_row} element {i}");
                }
                // The largest weight of each channel is a full level.
                assert!(q.iter().any(|&v| (v as i32).abs() == m));
            }
        }
        // A channel of zeros stays zero.
        let (q, s) = quantize(&[0.0, 1.0, 0.0, -2.0], 2, 2, 8, false);
        assert_eq!((q[0], q[2], s[0]), (0, 0, 1.0));
        assert!("int2".parse::<Quant>().unwrap_err().contains("none, int8 or int4"));
    }
}
