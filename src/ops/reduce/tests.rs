//! Device-generic tests of the reductions (compiled into `tests/ops.rs`, run once per device).

use crate::common::dev::{check, poison, rng, up};
use codistill::ops::reduce::{sum, sum_rows, sum_squares, sum_squares_many};
use codistill::{Device, Tensor};

pub fn sums_match_f64(dev: Device) {
    let mut r = rng("reduce", dev);
    for &(rows, d) in &[(1, 1), (7, 13), (1000, 3), (3, 100_003), (517, 640)] {
        let x = Tensor::randn(&[rows, d], 1.0, &mut r);
        let xv: Vec<f64> = x.to_vec_f32().unwrap().iter().map(|&v| v as f64).collect();
        let xd = up(&x, dev);
        let s = sum(&xd).unwrap().item().unwrap() as f64;
        let want: f64 = xv.iter().sum();
        assert!((s - want).abs() <= 1e-5 * (1.0 + xv.iter().map(|v| v.abs()).sum::<f64>()), "sum {rows}x{d} on {dev}: {s} vs {want}");
        let sq = sum_squares(&xd).unwrap();
        let wsq: f64 = xv.iter().map(|v| v * v).sum();
        assert!((sq - wsq).abs() <= 1e-6 * wsq, "sum_squares {rows}x{d} on {dev}: {sq} vs {wsq}");
        let many = sum_squares_many(&[&xd, &xd]).unwrap();
        assert!((many - 2.0 * wsq).abs() <= 1e-6 * wsq, "sum_squares_many on {dev}: {many} vs {}", 2.0 * wsq);
        poison(dev, d);
        let cols = sum_rows(&xd).unwrap();
        let wc: Vec<f64> = (0..d).map(|j| (0..rows).map(|i| xv[i * d + j]).sum()).collect();
        check(&format!("sum_rows {rows}x{d}"), &cols, dev, &wc, 1e-6);
    }
}
