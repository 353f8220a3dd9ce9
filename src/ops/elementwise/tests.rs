//! Device-generic tests of the elementwise ops (compiled into `tests/ops.rs`, run once per device):
//! each op on random inputs of odd sizes, its output poisoned first, against float64.

use crate::common::dev::{check, poison, rng, up};
use codistill::ops::elementwise::{add_row_bias, axpy, binary, unary, unary_backward, Binary, Unary};
use codistill::{Device, Tensor};

/// The sizes: a single element, odd ones, and one the CPU's buffer pool keeps (so it is poisoned
/// on the CPU too).
const SIZES: &[usize] = &[1, 7, 1001, 300_007];

fn f(op: Unary, x: f64) -> f64 {
    match op {
        Unary::Relu => x.max(0.0),
        Unary::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Unary::Tanh => x.tanh(),
        Unary::Exp => x.exp(),
        Unary::Log => x.ln(),
        Unary::Scale(s) => s as f64 * x,
    }
}

fn df(op: Unary, x: f64) -> f64 {
    match op {
        Unary::Relu => (x > 0.0) as i32 as f64,
        Unary::Sigmoid => f(op, x) * (1.0 - f(op, x)),
        Unary::Tanh => 1.0 - x.tanh().powi(2),
        Unary::Exp => x.exp(),
        Unary::Log => 1.0 / x,
        Unary::Scale(s) => s as f64,
    }
}

pub fn unary_ops_and_their_derivatives_match_f64(dev: Device) {
    let mut r = rng("elementwise unary", dev);
    for &n in SIZES {
        let x = Tensor::randn(&[n], 2.0, &mut r);
        let pos = Tensor::uniform(&[n], 0.05, 4.0, &mut r);
        let dy = Tensor::randn(&[n], 1.0, &mut r);
        for op in [Unary::Relu, Unary::Sigmoid, Unary::Tanh, Unary::Exp, Unary::Log, Unary::Scale(-0.7)] {
            let xin = if op == Unary::Log { &pos } else { &x };
            let xv: Vec<f64> = xin.to_vec_f32().unwrap().iter().map(|&v| v as f64).collect();
            poison(dev, n);
            let y = unary(op, &up(xin, dev)).unwrap();
            check(&format!("{op:?} n={n}"), &y, dev, &xv.iter().map(|&v| f(op, v)).collect::<Vec<_>>(), 1e-6);
            poison(dev, n);
            let dx = unary_backward(op, &up(xin, dev), &y, &up(&dy, dev)).unwrap();
            let want: Vec<f64> = xv.iter().zip(dy.to_vec_f32().unwrap()).map(|(&v, g)| df(op, v) * g as f64).collect();
            check(&format!("{op:?}' n={n}"), &dx, dev, &want, 1e-5);
        }
    }
}

pub fn binary_ops_bias_and_axpy_match_f64(dev: Device) {
    let mut r = rng("elementwise binary", dev);
    for &n in SIZES {
        let (a, b) = (Tensor::randn(&[n], 1.0, &mut r), Tensor::randn(&[n], 1.0, &mut r));
        let (av, bv) = (a.to_vec_f32().unwrap(), b.to_vec_f32().unwrap());
        for (op, g) in [(Binary::Add, (|x, y| x + y) as fn(f64, f64) -> f64), (Binary::Sub, |x, y| x - y), (Binary::Mul, |x, y| x * y)] {
            poison(dev, n);
            let out = binary(op, &up(&a, dev), &up(&b, dev)).unwrap();
            check(&format!("{op:?} n={n}"), &out, dev, &av.iter().zip(&bv).map(|(&x, &y)| g(x as f64, y as f64)).collect::<Vec<_>>(), 1e-7);
        }
        let mut acc = up(&a, dev);
        axpy(-1.5, &up(&b, dev), &mut acc).unwrap();
        check(&format!("axpy n={n}"), &acc, dev, &av.iter().zip(&bv).map(|(&x, &y)| x as f64 - 1.5 * y as f64).collect::<Vec<_>>(), 1e-7);
    }
    for &(rows, d) in &[(1, 1), (13, 7), (300, 1001)] {
        let x = Tensor::randn(&[rows, d], 1.0, &mut r);
        let bias = Tensor::randn(&[d], 1.0, &mut r);
        let (xv, bv) = (x.to_vec_f32().unwrap(), bias.to_vec_f32().unwrap());
        poison(dev, rows * d);
        let out = add_row_bias(&up(&x, dev), &up(&bias, dev)).unwrap();
        check(&format!("add_row_bias {rows}x{d}"), &out, dev, &xv.iter().enumerate().map(|(i, &v)| v as f64 + bv[i % d] as f64).collect::<Vec<_>>(), 1e-7);
    }
    let e = binary(Binary::Add, &up(&Tensor::zeros(&[2, 3]), dev), &up(&Tensor::zeros(&[3, 2]), dev)).unwrap_err().to_string();
    assert!(e.contains("[2, 3]") && e.contains("[3, 2]"), "{e}");
    if dev != Device::Cpu {
        // Mixed devices are an error naming both.
        let e = binary(Binary::Add, &Tensor::zeros(&[2]), &up(&Tensor::zeros(&[2]), dev)).unwrap_err().to_string();
        assert!(e.contains("cpu") && e.contains(&dev.to_string()), "{e}");
    }
}
