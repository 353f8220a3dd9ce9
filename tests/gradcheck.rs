//! Finite-difference gradient checks for every differentiable op and module.
//!
//! Method: the op's output is projected onto a fixed random tensor R, `L = sum(out * R)`, with the
//! projection done in f64 on the host. The analytic gradient of L (the tape's backward) is compared
//! with central differences `(L(x + eps) - L(x - eps)) / 2 eps` on every element of every input (or
//! a random 48 of them for large inputs). Inputs are f32, so the bound is stated per op:
//! `|analytic - numeric| <= atol + rtol * max(|analytic|, |numeric|)`, by default eps = 1e-2,
//! rtol = 1e-2, atol = 2e-4 (f32 rounding of L over 2 eps is ~1e-5; the O(eps^2) truncation ~1e-4).
//! A wrong backward rule misses these bounds by orders of magnitude.
//!
//! One body per device (tests/common/harness.rs): each check runs as `<name>::cpu` and
//! `<name>::cuda`. The analytic gradient comes from the device under test (on the GPU with fp32
//! products, the exact backend); the central differences are always taken on the CPU with the
//! projection in f64, the reference. Without a GPU the CUDA legs are reported as ignored.

#[allow(dead_code)]
mod common;

use codistill::cuda::MatmulPrecision;
use codistill::nn::{Embedding, Linear, Lstm, LstmState, Mlp};
use codistill::ops::elementwise::{Binary, Unary};
use codistill::ops::softmax_kl::Divergence;
use codistill::{Backend, Device, DistillParams, Graph, ParamStore, Result, Rng, Tensor, Var};

struct Bounds {
    eps: f32,
    rtol: f64,
    atol: f64,
}

const DEFAULT: Bounds = Bounds { eps: 1e-2, rtol: 1e-2, atol: 2e-4 };

fn project(out: &Tensor, r: &[f32]) -> f64 {
    out.f32s().unwrap().iter().zip(r).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// `t` on the device the store `s` lives on: how a check's constant inputs follow its parameters.
fn on(t: &Tensor, s: &ParamStore) -> Tensor {
    t.to_device(s.device()).unwrap()
}

fn gradcheck(dev: Device, what: &str, store: ParamStore, build: impl Fn(&mut Graph, &ParamStore) -> Result<Var>, b: Bounds) {
    let mut rng = Rng::new(0xC0FFEE);
    let what = format!("{what} on {dev}");
    // Analytic, on the device under test: backward of sum(out * R).
    let mut analytic = store.clone();
    analytic.to_device(dev).unwrap();
    analytic.zero_grads().unwrap();
    let mut g = Graph::new().with_backend(Backend { matmul: MatmulPrecision::F32, ..Backend::default() });
    let out = build(&mut g, &analytic).unwrap();
    let r = Tensor::randn(g.value(out).shape(), 1.0, &mut rng);
    let rv = g.constant(r.to_device(dev).unwrap());
    let prod = g.mul(out, rv).unwrap();
    let loss = g.sum(prod).unwrap();
    let grads = g.backward(loss).unwrap();
    g.accumulate_grads(&grads, &mut analytic).unwrap();

    let eval = |s: &ParamStore| -> f64 {
        let mut g = Graph::no_grad();
        let out = build(&mut g, s).unwrap();
        project(g.value(out), r.f32s().unwrap())
    };
    let mut checked = 0;
    for name in store.names() {
        let value = store.get(&name).unwrap().clone();
        let n = value.numel();
        let idx: Vec<usize> = if n <= 48 { (0..n).collect() } else { (0..48).map(|_| rng.below(n)).collect() };
        let ana = analytic.param(&name).unwrap().grad.to_vec_f32().unwrap();
        for i in idx {
            let mut s = store.clone();
            let mut v = value.clone();
            v.f32s_mut().unwrap()[i] += b.eps;
            s.set(&name, v.clone()).unwrap();
            let up = eval(&s);
            v.f32s_mut().unwrap()[i] -= 2.0 * b.eps;
            s.set(&name, v).unwrap();
            let down = eval(&s);
            let num = (up - down) / (2.0 * b.eps as f64);
            let a = ana[i] as f64;
            let tol = b.atol + b.rtol * a.abs().max(num.abs());
            assert!((a - num).abs() <= tol, "{what}: d/d {name}[{i}]: analytic {a:.6e} vs numeric {num:.6e} (tol {tol:.1e})");
            checked += 1;
        }
    }
    assert!(checked > 0, "{what}: nothing was checked");
}

fn store_of(inputs: &[(&str, Tensor)]) -> ParamStore {
    let mut s = ParamStore::new();
    for (n, t) in inputs {
        s.insert(n, t.clone()).unwrap();
    }
    s
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, 1.0, &mut Rng::new(seed))
}

/// Values kept at least `gap` away from zero, for ops with a kink or a pole there.
fn away_from_zero(shape: &[usize], seed: u64, gap: f32) -> Tensor {
    let v = randn(shape, seed).f32s().unwrap().iter().map(|&x| if x.abs() < gap { x.signum() * gap + x } else { x }).collect();
    Tensor::from_f32(v, shape).unwrap()
}

fn matmul_gradients(dev: Device) {
    let s = store_of(&[("a", randn(&[5, 7], 1)), ("b", randn(&[7, 3], 2))]);
    gradcheck(
        dev,
        "matmul",
        s,
        |g, s| {
            let (a, b) = (g.param(s, "a")?, g.param(s, "b")?);
            g.matmul(a, b)
        },
        DEFAULT,
    );
}

fn add_bias_gradients(dev: Device) {
    let s = store_of(&[("x", randn(&[4, 5], 3)), ("b", randn(&[5], 4))]);
    gradcheck(
        dev,
        "add_bias",
        s,
        |g, s| {
            let (x, b) = (g.param(s, "x")?, g.param(s, "b")?);
            g.add_bias(x, b)
        },
        DEFAULT,
    );
}

fn binary_op_gradients(dev: Device) {
    for op in [Binary::Add, Binary::Sub, Binary::Mul] {
        let s = store_of(&[("a", randn(&[3, 4], 5)), ("b", randn(&[3, 4], 6))]);
        gradcheck(
            dev,
            &format!("{op:?}"),
            s,
            move |g, s| {
                let (a, b) = (g.param(s, "a")?, g.param(s, "b")?);
                g.binary(op, a, b)
            },
            DEFAULT,
        );
    }
}

fn unary_op_gradients(dev: Device) {
    for op in [Unary::Relu, Unary::Sigmoid, Unary::Tanh, Unary::Exp, Unary::Scale(-1.7)] {
        // ReLU's kink at 0 is kept 0.05 away, beyond the 0.01 step.
        let s = store_of(&[("x", away_from_zero(&[3, 5], 7, 0.05))]);
        gradcheck(
            dev,
            &format!("{op:?}"),
            s,
            move |g, s| {
                let x = g.param(s, "x")?;
                g.unary(op, x)
            },
            DEFAULT,
        );
    }
    let pos = Tensor::uniform(&[3, 5], 0.5, 3.0, &mut Rng::new(8));
    gradcheck(
        dev,
        "Log",
        store_of(&[("x", pos)]),
        |g, s| {
            let x = g.param(s, "x")?;
            g.unary(Unary::Log, x)
        },
        DEFAULT,
    );
}

fn dropout_reshape_sum_mean_gradients(dev: Device) {
    let s = store_of(&[("x", randn(&[6, 5], 9))]);
    gradcheck(
        dev,
        "dropout",
        s.clone(),
        |g, s| {
            let x = g.param(s, "x")?;
            g.dropout(x, 0.4, 77)
        },
        DEFAULT,
    );
    gradcheck(
        dev,
        "reshape",
        s.clone(),
        |g, s| {
            let x = g.param(s, "x")?;
            g.reshape(x, &[3, 10])
        },
        DEFAULT,
    );
    gradcheck(
        dev,
        "sum",
        s.clone(),
        |g, s| {
            let x = g.param(s, "x")?;
            g.sum(x)
        },
        DEFAULT,
    );
    gradcheck(
        dev,
        "mean",
        s,
        |g, s| {
            let x = g.param(s, "x")?;
            g.mean(x)
        },
        DEFAULT,
    );
}

fn embedding_gradient_with_repeated_ids(dev: Device) {
    let ids = Tensor::from_i32(vec![3, 0, 3, 6, 1, 3], &[6]).unwrap();
    let s = store_of(&[("table", randn(&[7, 4], 10))]);
    gradcheck(
        dev,
        "embedding",
        s,
        move |g, s| {
            let t = g.param(s, "table")?;
            g.embedding(t, &on(&ids, s))
        },
        DEFAULT,
    );
}

fn lstm_layer_gradients_through_time(dev: Device) {
    // T = 4 steps, B = 3, In = 5, H = 6 (odd sizes); gradients reach x, the initial state and all weights.
    let (t, b, i, h) = (4, 3, 5, 6);
    let s = store_of(&[
        ("x", randn(&[t * b, i], 11)),
        ("h0", randn(&[b, h], 12)),
        ("c0", randn(&[b, h], 13)),
        ("w_ih", Tensor::randn(&[i, 4 * h], 0.5, &mut Rng::new(14))),
        ("w_hh", Tensor::randn(&[h, 4 * h], 0.5, &mut Rng::new(15))),
        ("bias", randn(&[4 * h], 16)),
    ]);
    gradcheck(
        dev,
        "lstm",
        s,
        move |g, s| {
            let v: Vec<Var> = ["x", "h0", "c0", "w_ih", "w_hh", "bias"].iter().map(|n| g.param(s, n)).collect::<Result<_>>()?;
            let (y, _, _) = g.lstm(v[0], v[1], v[2], v[3], v[4], v[5], t)?;
            Ok(y)
        },
        DEFAULT,
    );
}

fn softmax_xent_gradient(dev: Device) {
    let y = Tensor::from_i32(vec![0, 4, 2, 6, 6], &[5]).unwrap();
    let s = store_of(&[("logits", Tensor::randn(&[5, 7], 2.0, &mut Rng::new(17)))]);
    gradcheck(
        dev,
        "softmax_xent",
        s,
        move |g, s| {
            let l = g.param(s, "logits")?;
            g.softmax_xent(l, &on(&y, s))
        },
        DEFAULT,
    );
}

fn softmax_kl_gradient_with_two_teachers_every_divergence(dev: Device) {
    let y = Tensor::from_i32(vec![1, 3, 0, 5], &[4]).unwrap();
    let teachers = vec![Tensor::randn(&[4, 6], 2.0, &mut Rng::new(18)), Tensor::randn(&[4, 6], 2.0, &mut Rng::new(19))];
    for divergence in [Divergence::ForwardKl, Divergence::ReverseKl, Divergence::JensenShannon, Divergence::Mse] {
        for (temperature, alpha) in [(1.0, 0.5), (2.0, 1.0), (4.0, 0.3)] {
            let (y, teachers) = (y.clone(), teachers.clone());
            let s = store_of(&[("student", Tensor::randn(&[4, 6], 2.0, &mut Rng::new(20)))]);
            gradcheck(
                dev,
                &format!("softmax_kl {divergence} T={temperature} alpha={alpha}"),
                s,
                move |g, s| {
                    let st = g.param(s, "student")?;
                    let teachers: Vec<Tensor> = teachers.iter().map(|t| on(t, s)).collect();
                    Ok(g.softmax_kl(st, &teachers, Some(&on(&y, s)), DistillParams { temperature, alpha, divergence })?.0)
                },
                DEFAULT,
            );
        }
    }
}

fn bce_with_soft_targets_gradient(dev: Device) {
    let y = Tensor::from_f32(vec![0.0, 1.0, 0.3, 0.9, 0.5, 1.0], &[6]).unwrap();
    let s = store_of(&[("logits", Tensor::randn(&[6], 2.0, &mut Rng::new(21)))]);
    gradcheck(
        dev,
        "bce",
        s,
        move |g, s| {
            let l = g.param(s, "logits")?;
            g.bce_with_logits(l, &on(&y, s))
        },
        DEFAULT,
    );
}

fn binary_divergence_gradients(dev: Device) {
    for div in [Divergence::ForwardKl, Divergence::ReverseKl, Divergence::JensenShannon, Divergence::Mse] {
        let t = if div == Divergence::Mse { Tensor::randn(&[7], 2.0, &mut Rng::new(31)) } else { Tensor::uniform(&[7], 0.05, 0.95, &mut Rng::new(31)) };
        let s = store_of(&[("logits", Tensor::randn(&[7], 2.0, &mut Rng::new(30)))]);
        gradcheck(
            dev,
            &format!("binary_divergence {div}"),
            s,
            move |g, s| {
                let l = g.param(s, "logits")?;
                g.binary_divergence(l, &on(&t, s), div)
            },
            DEFAULT,
        );
    }
}

fn softmax_gradients(dev: Device) {
    // Odd widths, a width of one (a constant output), and large logits.
    for (rows, w, scale) in [(3, 7, 1.0), (4, 1, 1.0), (2, 5, 6.0)] {
        let s = store_of(&[("x", Tensor::randn(&[rows, w], scale, &mut Rng::new(42)))]);
        gradcheck(
            dev,
            &format!("softmax {rows}x{w}"),
            s,
            |g, s| {
                let x = g.param(s, "x")?;
                g.softmax(x)
            },
            Bounds { eps: 1e-3, rtol: 2e-2, atol: 5e-4 },
        );
    }
}

fn covariance_gap_gradients(dev: Device) {
    let t = Tensor::randn(&[4, 4], 0.5, &mut Rng::new(43));
    let s = store_of(&[("h", Tensor::randn(&[7, 4], 1.0, &mut Rng::new(44)))]);
    gradcheck(
        dev,
        "covariance_gap",
        s,
        move |g, s| {
            let h = g.param(s, "h")?;
            g.covariance_gap(h, &on(&t, s))
        },
        Bounds { eps: 1e-3, rtol: 2e-2, atol: 5e-4 },
    );
}

fn hidden_state_loss_gradients(dev: Device) {
    use codistill::ops::relation::HiddenLoss;
    // Odd sizes; the relations with a teacher of another width.
    for (kind, dt) in
        [(HiddenLoss::Mse, 5), (HiddenLoss::Cosine, 5), (HiddenLoss::Sp, 3), (HiddenLoss::RkdDistance, 7), (HiddenLoss::RkdAngle, 9), (HiddenLoss::Rkd, 11)]
    {
        let t = Tensor::randn(&[6, dt], 1.0, &mut Rng::new(40));
        let s = store_of(&[("h", Tensor::randn(&[6, 5], 1.0, &mut Rng::new(41)))]);
        gradcheck(
            dev,
            &format!("hidden_loss {kind}"),
            s,
            move |g, s| {
                let h = g.param(s, "h")?;
                g.hidden_loss(kind, h, &on(&t, s))
            },
            Bounds { eps: 1e-3, rtol: 2e-2, atol: 5e-4 },
        );
    }
    // More rows than the angle term takes (ANGLE_ROWS): its gradient reaches the rows it took.
    let t = Tensor::randn(&[70, 4], 1.0, &mut Rng::new(42));
    let s = store_of(&[("h", Tensor::randn(&[70, 3], 1.0, &mut Rng::new(43)))]);
    gradcheck(
        dev,
        "hidden_loss rkd-angle, 70 rows",
        s,
        move |g, s| {
            let h = g.param(s, "h")?;
            g.hidden_loss(codistill::ops::relation::HiddenLoss::RkdAngle, h, &on(&t, s))
        },
        Bounds { eps: 1e-3, rtol: 2e-2, atol: 5e-4 },
    );
}

fn linear_and_mlp_module_gradients(dev: Device) {
    let mut rng = Rng::new(22);
    let mut s = ParamStore::new();
    let lin = Linear::new(&mut s, "lin", 5, 3, true, &mut rng).unwrap();
    let x = randn(&[4, 5], 23);
    let xc = x.clone();
    gradcheck(
        dev,
        "Linear",
        s,
        move |g, s| {
            let xv = g.constant(on(&xc, s));
            lin.forward(g, s, xv)
        },
        DEFAULT,
    );

    let mut s = ParamStore::new();
    let mlp = Mlp::new(&mut s, "mlp", &[5, 8, 6, 2], &mut rng).unwrap();
    gradcheck(
        dev,
        "Mlp",
        s,
        move |g, s| {
            let xv = g.constant(on(&x, s));
            mlp.forward(g, s, xv)
        },
        Bounds { eps: 1e-3, rtol: 2e-2, atol: 5e-4 },
    ); // ReLU kinks: a smaller step crosses fewer
}

fn embedding_and_two_layer_lstm_module_gradients(dev: Device) {
    let mut rng = Rng::new(24);
    let mut s = ParamStore::new();
    let (t, b, vocab, dim, hidden) = (3, 2, 9, 4, 5);
    let emb = Embedding::new(&mut s, "emb", vocab, dim, 0.5, &mut rng).unwrap();
    let lstm = Lstm::new(&mut s, "lstm", dim, hidden, 2, &mut rng).unwrap();
    let ids = Tensor::from_i32((0..(t * b) as i32).map(|i| (i * 5) % vocab as i32).collect(), &[t * b]).unwrap();
    let state = LstmState { h: vec![randn(&[b, hidden], 25), randn(&[b, hidden], 26)], c: vec![randn(&[b, hidden], 27), randn(&[b, hidden], 28)] };
    gradcheck(
        dev,
        "Embedding + 2-layer Lstm with dropout",
        s,
        move |g, s| {
            let x = emb.forward(g, s, &on(&ids, s))?;
            let state = LstmState { h: state.h.iter().map(|t| on(t, s)).collect(), c: state.c.iter().map(|t| on(t, s)).collect() };
            Ok(lstm.forward(g, s, x, &state, t, Some((0.3, 5)))?.0)
        },
        DEFAULT,
    );
}

fn main() {
    common::harness::run_on_devices(
        "gradcheck",
        &[
            ("matmul_gradients", matmul_gradients),
            ("add_bias_gradients", add_bias_gradients),
            ("binary_op_gradients", binary_op_gradients),
            ("unary_op_gradients", unary_op_gradients),
            ("dropout_reshape_sum_mean_gradients", dropout_reshape_sum_mean_gradients),
            ("embedding_gradient_with_repeated_ids", embedding_gradient_with_repeated_ids),
            ("lstm_layer_gradients_through_time", lstm_layer_gradients_through_time),
            ("softmax_xent_gradient", softmax_xent_gradient),
            ("softmax_kl_gradient_with_two_teachers_every_divergence", softmax_kl_gradient_with_two_teachers_every_divergence),
            ("bce_with_soft_targets_gradient", bce_with_soft_targets_gradient),
            ("binary_divergence_gradients", binary_divergence_gradients),
            ("hidden_state_loss_gradients", hidden_state_loss_gradients),
            ("softmax_gradients", softmax_gradients),
            ("covariance_gap_gradients", covariance_gap_gradients),
            ("linear_and_mlp_module_gradients", linear_and_mlp_module_gradients),
            ("embedding_and_two_layer_lstm_module_gradients", embedding_and_two_layer_lstm_module_gradients),
        ],
    )
}
