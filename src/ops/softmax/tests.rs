//! Device-generic tests of the row softmax (compiled into `tests/ops.rs`, run once per device).

use crate::common::dev::{check, poison, rng, up};
use codistill::ops::softmax::{softmax_rows, softmax_rows_backward};
use codistill::{Device, Tensor};

pub fn rows_and_backward_match_f64(dev: Device) {
    let mut r = rng("softmax", dev);
    for &(rows, w, scale) in &[(1, 1, 1.0), (7, 13, 3.0), (333, 256, 1.0), (5, 1000, 40.0)] {
        let x = Tensor::randn(&[rows, w], scale, &mut r);
        let dy = Tensor::randn(&[rows, w], 1.0, &mut r);
        let (xv, gv) = (x.to_vec_f32().unwrap(), dy.to_vec_f32().unwrap());
        let mut want = vec![0f64; rows * w];
        let mut want_dx = vec![0f64; rows * w];
        for i in 0..rows {
            let row: Vec<f64> = xv[i * w..(i + 1) * w].iter().map(|&v| v as f64).collect();
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
            for j in 0..w {
                want[i * w + j] = (row[j] - m).exp() / s;
            }
            let dot: f64 = (0..w).map(|j| want[i * w + j] * gv[i * w + j] as f64).sum();
            for j in 0..w {
                want_dx[i * w + j] = want[i * w + j] * (gv[i * w + j] as f64 - dot);
            }
        }
        poison(dev, rows * w);
        let y = softmax_rows(&up(&x, dev)).unwrap();
        check(&format!("softmax {rows}x{w} (scale {scale})"), &y, dev, &want, 1e-6);
        poison(dev, rows * w);
        let yw = Tensor::from_f32(want.iter().map(|&v| v as f32).collect(), &[rows, w]).unwrap();
        let dx = softmax_rows_backward(&up(&yw, dev), &up(&dy, dev)).unwrap();
        check(&format!("softmax backward {rows}x{w}"), &dx, dev, &want_dx, 1e-5);
    }
    // A non-finite input is an error naming its row, not a NaN row.
    let bad = Tensor::from_f32(vec![0.0, 1.0, f32::NAN, 2.0], &[2, 2]).unwrap();
    let e = softmax_rows(&up(&bad, dev)).unwrap_err().to_string();
    assert!(e.contains("row 1"), "{e}");
}
