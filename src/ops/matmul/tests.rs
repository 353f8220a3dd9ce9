//! Device-generic tests of the matrix product (compiled into `tests/ops.rs`, run once per device):
//! every orientation, odd and trainer-sized shapes, each backend the device has (fp32 within 1e-5
//! of float64, bf16 operands within 1e-2), the output poisoned first; and accumulation into C.

use crate::common::dev::{backends, check, poison, rng, up};
use codistill::ops::matmul::{matmul, matmul_into};
use codistill::{Device, Tensor};

/// `alpha * op(A) op(B) + beta * C` in f64.
#[allow(clippy::too_many_arguments)]
fn reference(m: usize, n: usize, k: usize, a: &[f32], ta: bool, b: &[f32], tb: bool, alpha: f64, beta: f64, c: &[f32]) -> Vec<f64> {
    let mut out = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f64;
            for p in 0..k {
                let av = if ta { a[p * m + i] } else { a[i * k + p] } as f64;
                let bv = if tb { b[j * k + p] } else { b[p * n + j] } as f64;
                s += av * bv;
            }
            out[i * n + j] = alpha * s + if beta == 0.0 { 0.0 } else { beta * c[i * n + j] as f64 };
        }
    }
    out
}

pub fn every_orientation_matches_f64_on_every_backend(dev: Device) {
    let mut r = rng("matmul", dev);
    for &(m, n, k) in &[(1, 1, 1), (7, 13, 5), (64, 64, 64), (127, 129, 65), (20, 2600, 650), (96, 520, 300)] {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let a = Tensor::randn(&if ta { [k, m] } else { [m, k] }, 1.0, &mut r);
            let b = Tensor::randn(&if tb { [n, k] } else { [k, n] }, 1.0, &mut r);
            let (av, bv) = (a.to_vec_f32().unwrap(), b.to_vec_f32().unwrap());
            let want = reference(m, n, k, &av, ta, &bv, tb, 1.0, 0.0, &[]);
            for (name, be, tol) in backends(dev) {
                poison(dev, m * n);
                let c = matmul(&be, &up(&a, dev), ta, &up(&b, dev), tb).unwrap();
                check(&format!("matmul {m}x{n}x{k} ta={ta} tb={tb} {name}"), &c, dev, &want, tol);
            }
        }
    }
}

pub fn accumulation_into_c_matches_f64(dev: Device) {
    let mut r = rng("matmul_into", dev);
    let (m, n, k) = (33, 47, 29);
    let a = Tensor::randn(&[m, k], 1.0, &mut r);
    let b = Tensor::randn(&[k, n], 1.0, &mut r);
    let c0 = Tensor::randn(&[m, n], 1.0, &mut r);
    let want = reference(m, n, k, &a.to_vec_f32().unwrap(), false, &b.to_vec_f32().unwrap(), false, 0.5, -2.0, &c0.to_vec_f32().unwrap());
    for (name, be, tol) in backends(dev) {
        let mut c = up(&c0, dev).deep_copy().unwrap();
        matmul_into(&be, &up(&a, dev), false, &up(&b, dev), false, 0.5, -2.0, &mut c).unwrap();
        check(&format!("matmul_into {name}"), &c, dev, &want, tol);
    }
    let e = matmul(&Default::default(), &up(&a, dev), false, &up(&a, dev), false).unwrap_err().to_string();
    assert!(e.contains(&format!("[{m}, {k}]")), "{e}");
}
