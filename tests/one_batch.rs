//! Each trainer's loss on its first batch against the loss's f64 formula, computed here from the
//! same initial weights and batch: the plain task loss (which checks that this file rebuilds the
//! trainer's first step), label smoothing, and distillation from a fixed teacher. A trainer that
//! mixed its targets or weighted its terms otherwise than documented logs another first loss.

#![allow(clippy::field_reassign_with_default)] // configs are built field by field, as a user would

mod common;
use codistill::autograd::Graph;
use codistill::config::Paths;
use codistill::data::lm::TokenLanes;
use codistill::nn::LstmState;
use codistill::train::criteo::{self, CriteoConfig, CtrModel};
use codistill::train::lm::{self, LmConfig, LmModel};
use codistill::train::DeviceChoice;
use codistill::{ParamStore, Rng, Tensor};
use std::path::Path;

fn tmp(name: &str) -> common::Scratch {
    common::Scratch::new("ob", name)
}

/// The first logged training loss of a run (its step 1 with `log_every` 1).
fn first_loss(out: &Path) -> f64 {
    common::train_field(&out.join("metrics.jsonl"), "loss")[0].parse().unwrap()
}

fn close(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() <= 2e-5 * want.abs().max(1.0), "{what}: the trainer's first loss is {got}, the f64 formula gives {want}");
}

/// Rows of `[rows, v]` f32 values as f64 log-softmax rows at temperature `t`.
fn log_softmax(z: &[f32], v: usize, t: f64) -> Vec<Vec<f64>> {
    z.chunks(v)
        .map(|row| {
            let r: Vec<f64> = row.iter().map(|&x| x as f64 / t).collect();
            let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + r.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            r.iter().map(|x| x - lse).collect()
        })
        .collect()
}

fn small_lm(d: &Path) -> LmConfig {
    use codistill::data::synthetic::{write_markov_corpus, MarkovSource};
    write_markov_corpus(&d.join("data"), &MarkovSource::new(30, 1, 3, 4), [6_000, 1_000, 1_000], 4).unwrap();
    let mut c = LmConfig::default();
    (c.data, c.cache, c.device, c.min_count) = (Some(d.join("data")), d.join("cache"), DeviceChoice::Cpu, 1);
    (c.emb_dim, c.hidden, c.layers, c.dropout, c.batch, c.bptt) = (8, 16, 1, 0.0, 4, 10);
    (c.steps, c.eval_every, c.log_every, c.checkpoint_every, c.burn_in) = (1, 1, 1, 1, 0);
    c
}

/// Logits of `model` on the first training window from a zero state, and its labels.
fn lm_first_window(c: &LmConfig, model: &LmModel, store: &ParamStore, tokens: &[u32]) -> (Vec<f32>, Vec<i32>) {
    let lanes = TokenLanes::new(tokens, c.batch, c.bptt).unwrap();
    let (x, y) = lanes.window(0).unwrap();
    let mut g = Graph::no_grad();
    let state = LstmState::zeros(model.lstm.num_layers(), c.batch, model.lstm.hidden);
    let (logits, _) = model.forward(&mut g, store, &x, &state, c.bptt, None).unwrap();
    (g.value(logits).to_vec_f32().unwrap(), y.i32s().unwrap().to_vec())
}

#[test]
fn language_model_first_losses_match_their_formulas() {
    let d = tmp("lm");
    let mut c = small_lm(&d);
    c.out = d.join("plain");
    lm::train(&c).unwrap();
    // The vocabulary and tokens as the run saw them; the initial weights as a single model's.
    let vocab = lm::load_checkpoint(&c.out.join("checkpoint.safetensors")).unwrap().vocab;
    let tokens = vocab.encode_file(&d.join("data/train.txt")).unwrap();
    let v = vocab.len();
    let mut store = ParamStore::new();
    let model = LmModel::new(&mut store, &c, v, &mut Rng::new(c.seed)).unwrap();
    let (z, y) = lm_first_window(&c, &model, &store, &tokens);
    let lq = log_softmax(&z, v, 1.0);
    let n = y.len() as f64;
    let ce: f64 = lq.iter().zip(&y).map(|(r, &t)| -r[t as usize]).sum::<f64>() / n;
    close(first_loss(&c.out), ce, "cross-entropy");

    // Label smoothing e: (1 - e) CE + e KL(uniform || q), the distillation from a uniform teacher.
    let e = 0.2;
    (c.label_smoothing, c.out) = (e as f32, d.join("smooth"));
    lm::train(&c).unwrap();
    let u = 1.0 / v as f64;
    let kl_u: f64 = lq.iter().map(|r| r.iter().map(|lqj| u * (u.ln() - lqj)).sum::<f64>()).sum::<f64>() / n;
    close(first_loss(&c.out), (1.0 - e) * ce + e * kl_u, "label smoothing");

    // A fixed teacher at temperature T with weight a: (1 - a) CE + a T^2 KL(p_T || q_T).
    let teacher = d.join("plain/checkpoint.safetensors");
    let t = lm::load_checkpoint(&teacher).unwrap();
    let (tz, _) = lm_first_window(&c, &t.model, &t.store, &tokens);
    let (a, temp) = (0.7, 2.0);
    (c.label_smoothing, c.alpha, c.temperature, c.out) = (0.0, a as f32, temp as f32, d.join("kd"));
    c.teacher = Paths(vec![teacher]);
    lm::train(&c).unwrap();
    let (lp, lqt) = (log_softmax(&tz, v, temp), log_softmax(&z, v, temp));
    let kl: f64 = lp.iter().zip(&lqt).map(|(p, q)| p.iter().zip(q).map(|(lpj, lqj)| lpj.exp() * (lpj - lqj)).sum::<f64>()).sum::<f64>() / n;
    close(first_loss(&c.out), (1.0 - a) * ce + a * temp * temp * kl, "distillation from a fixed teacher, convex mix");
    // The paper's form, the default: CE + lambda T^2 KL(p_T || q_T).
    let lambda = 0.6;
    (c.alpha, c.distill_lambda, c.out) = (0.0, lambda as f32, d.join("kd-paper"));
    lm::train(&c).unwrap();
    close(first_loss(&c.out), ce + lambda * temp * temp * kl, "distillation from a fixed teacher, the paper's form");
    // --distill-loss: reverse KL and Jensen-Shannon at T with T^2, the logit match without.
    use codistill::ops::softmax_kl::Divergence;
    let rkl: f64 = lp.iter().zip(&lqt).map(|(p, q)| p.iter().zip(q).map(|(lpj, lqj)| lqj.exp() * (lqj - lpj)).sum::<f64>()).sum::<f64>() / n;
    let js: f64 = lp
        .iter()
        .zip(&lqt)
        .map(|(p, q)| {
            p.iter()
                .zip(q)
                .map(|(lpj, lqj)| {
                    let m = ((lpj.exp() + lqj.exp()) / 2.0).ln();
                    0.5 * lpj.exp() * (lpj - m) + 0.5 * lqj.exp() * (lqj - m)
                })
                .sum::<f64>()
        })
        .sum::<f64>()
        / n;
    let mse: f64 = z.iter().zip(&tz).map(|(&s, &t)| (s as f64 - t as f64).powi(2)).sum::<f64>() / (2.0 * v as f64 * n);
    for (div, soft, w) in [(Divergence::ReverseKl, rkl, temp * temp), (Divergence::JensenShannon, js, temp * temp), (Divergence::Mse, mse, 1.0)] {
        (c.distill_loss, c.out) = (div, d.join(format!("kd-{div}")));
        lm::train(&c).unwrap();
        close(first_loss(&c.out), ce + lambda * w * soft, &format!("--distill-loss {div}"));
    }
    c.distill_loss = Divergence::ForwardKl;
    // The deprecated distill_weight keeps its meaning: the convex mix.
    (c.distill_lambda, c.distill_weight, c.out) = (1.0, Some(a as f32), d.join("kd-old"));
    lm::train(&c).unwrap();
    close(first_loss(&c.out), (1.0 - a) * ce + a * temp * temp * kl, "the deprecated distill_weight");
}

fn small_ctr(d: &Path) -> CriteoConfig {
    let mut c = CriteoConfig::default();
    (c.cache, c.device) = (d.join("cache"), DeviceChoice::Cpu);
    (c.synthetic_scale, c.synthetic_rows, c.buckets, c.mlp) = (0.002, 1_500, 512, "16".into());
    // One batch of every training row: its mean loss does not depend on the shuffled order.
    (c.batch, c.epochs, c.log_every, c.burn_in) = (100_000, 1, 1, 0);
    c
}

/// Binary cross-entropy of a logit to a soft target, in f64.
fn bce(z: f64, t: f64) -> f64 {
    z.max(0.0) - z * t + (-z.abs()).exp().ln_1p()
}

#[test]
fn click_model_first_losses_match_their_formulas() {
    let d = tmp("ctr");
    let mut c = small_ctr(&d);
    c.out = d.join("plain");
    criteo::train(&c).unwrap();
    let data = criteo::prepare_data(&c).unwrap();
    let rows: Vec<usize> = data.train_rows.clone().collect();
    let (ids, dense, labels) = data.train.batch(&rows).unwrap();
    // The single model's initial weights, with its output bias at the smoothed click rate.
    let mut store = ParamStore::new();
    let model = CtrModel::new(&mut store, &c, &mut Rng::new(c.seed).fork(0)).unwrap();
    let clicks: f64 = rows.iter().map(|&i| data.train.label(i) as f64).sum();
    let rate = ((clicks + 1.0) / (rows.len() as f64 + 2.0)).clamp(1e-6, 1.0 - 1e-6);
    store.set(&format!("ctr.mlp.{}.bias", criteo::parse_widths(&c.mlp).unwrap().len()), Tensor::full(&[1], (rate / (1.0 - rate)).ln() as f32)).unwrap();
    let logits = |m: &CtrModel, s: &ParamStore| {
        let mut g = Graph::no_grad();
        let l = m.forward(&mut g, s, &ids, &dense).unwrap();
        g.value(l).to_vec_f32().unwrap().iter().map(|&x| x as f64).collect::<Vec<f64>>()
    };
    let z = logits(&model, &store);
    let y: Vec<f64> = labels.f32s().unwrap().iter().map(|&v| v as f64).collect();
    let mean = |t: &dyn Fn(usize) -> f64| z.iter().enumerate().map(|(i, &zi)| bce(zi, t(i))).sum::<f64>() / z.len() as f64;
    close(first_loss(&c.out), mean(&|i| y[i]), "binary cross-entropy");

    // Label smoothing e: the target (1 - e) y + e / 2.
    let e = 0.2;
    (c.label_smoothing, c.out) = (e as f32, d.join("smooth"));
    criteo::train(&c).unwrap();
    close(first_loss(&c.out), mean(&|i| (1.0 - e) * y[i] + e / 2.0), "label smoothing");

    // A fixed teacher with weight w: the target (1 - w) y + w sigmoid(teacher logit).
    let teacher = d.join("plain/checkpoint.safetensors");
    let (_, tm, ts) = criteo::load_checkpoint(&teacher).unwrap();
    let p: Vec<f64> = logits(&tm, &ts).iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect();
    let w = 0.7;
    (c.label_smoothing, c.alpha, c.out) = (0.0, w as f32, d.join("kd"));
    c.teacher = Paths(vec![teacher]);
    criteo::train(&c).unwrap();
    close(first_loss(&c.out), mean(&|i| (1.0 - w) * y[i] + w * p[i]), "distillation from a fixed teacher, convex mix");
    // The paper's form, the default: BCE(z, y) + lambda BCE(z, p).
    let lambda = 0.6;
    (c.alpha, c.distill_lambda, c.out) = (0.0, lambda as f32, d.join("kd-paper"));
    criteo::train(&c).unwrap();
    let paper = z.iter().enumerate().map(|(i, &zi)| bce(zi, y[i]) + lambda * bce(zi, p[i])).sum::<f64>() / z.len() as f64;
    close(first_loss(&c.out), paper, "distillation from a fixed teacher, the paper's form");
    // --distill-loss: BCE(z, y) + lambda D(p, sigmoid(z)), by the definitions on probabilities.
    use codistill::ops::softmax_kl::Divergence;
    let tz = logits(&tm, &ts);
    let kl = |a: f64, b: f64| a * (a / b).ln() + (1.0 - a) * ((1.0 - a) / (1.0 - b)).ln();
    for div in [Divergence::ReverseKl, Divergence::JensenShannon, Divergence::Mse] {
        (c.distill_loss, c.out) = (div, d.join(format!("kd-{div}")));
        criteo::train(&c).unwrap();
        let soft = |i: usize| {
            let q = 1.0 / (1.0 + (-z[i]).exp());
            match div {
                Divergence::ReverseKl => kl(q, p[i]),
                Divergence::JensenShannon => 0.5 * kl(p[i], (p[i] + q) / 2.0) + 0.5 * kl(q, (p[i] + q) / 2.0),
                _ => 0.5 * (z[i] - tz[i]).powi(2),
            }
        };
        let want = z.iter().enumerate().map(|(i, &zi)| bce(zi, y[i]) + lambda * soft(i)).sum::<f64>() / z.len() as f64;
        close(first_loss(&c.out), want, &format!("--distill-loss {div}"));
    }
}
