//! Codistillation written against the crate's pieces, as a program embedding the engine would:
//! two click models, each on its own half of the data, after a burn-in each learns from the
//! other's stale checkpoint (exchanged every `EXCHANGE` steps through `InProcess`), then both are
//! compared with a pair trained independently. `cargo run --release --example codistill_loop`
//! (CI runs it). The trainers (`codistill::train::{lm, criteo}`) do the same at scale.

use codistill::distill::end_step;
use codistill::distill::exchange::{Exchange, InProcess};
use codistill::nn::Mlp;
use codistill::optim::{Optimizer, OptimizerKind};
use codistill::tasks::ctr::score::{churn, log_loss};
use codistill::{Graph, ParamStore, Rng, Tensor};

const DIM: usize = 8;
const BATCH: usize = 64;
const STEPS: u64 = 600;
const BURN_IN: u64 = 100;
const EXCHANGE: u64 = 25;

/// Rows of features and 0/1 labels from a fixed logistic model with an interaction term.
fn data(n: usize, rng: &mut Rng) -> (Vec<f32>, Vec<f32>) {
    let x = rng.normal_vec(n * DIM, 1.0);
    let y = x
        .chunks(DIM)
        .map(|r| {
            let z = 1.5 * r[0] - r[1] + 0.8 * r[2] * r[3] + 0.5 * r[4];
            (rng.uniform() < 1.0 / (1.0 + (-z as f64).exp())) as u8 as f32
        })
        .collect();
    (x, y)
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// Probabilities of an MLP on rows `x`.
fn predict(mlp: &Mlp, p: &ParamStore, x: &[f32]) -> codistill::Result<Vec<f32>> {
    let mut g = Graph::no_grad();
    let xv = g.constant(Tensor::from_f32(x.to_vec(), &[x.len() / DIM, DIM])?);
    let l = mlp.forward(&mut g, p, xv)?;
    Ok(g.value(l).f32s()?.iter().map(|&v| sigmoid(v)).collect())
}

/// Two models on disjoint halves; `weight` 0 trains them independently. Returns their
/// validation predictions.
fn run(weight: f32, seed: u64, train: &(Vec<f32>, Vec<f32>), valid: &[f32]) -> codistill::Result<Vec<Vec<f32>>> {
    let mut rng = Rng::new(seed);
    let half = train.1.len() / 2;
    let mut models = Vec::new();
    for _ in 0..2 {
        let mut p = ParamStore::new();
        let mlp = Mlp::new(&mut p, "mlp", &[DIM, 32, 1], &mut rng)?;
        models.push((mlp, p, Optimizer::new(OptimizerKind::adam())));
    }
    let mut exchange = InProcess::new(2);
    for step in 0..STEPS {
        for (i, (mlp, params, opt)) in models.iter_mut().enumerate() {
            let rows: Vec<usize> = (0..BATCH).map(|_| i * half + rng.below(half)).collect();
            let x: Vec<f32> = rows.iter().flat_map(|&r| train.0[r * DIM..(r + 1) * DIM].to_vec()).collect();
            let mut y: Vec<f32> = rows.iter().map(|&r| train.1[r]).collect();
            // After the burn-in, the target mixes the label with the peer's stale prediction.
            if weight > 0.0 && step >= BURN_IN {
                if let Some(teacher) = exchange.latest(1 - i) {
                    let t = predict(mlp, &teacher.params, &x)?;
                    y.iter_mut().zip(t).for_each(|(y, t)| *y = (1.0 - weight) * *y + weight * t);
                }
            }
            let mut g = Graph::new();
            let xv = g.constant(Tensor::from_f32(x, &[BATCH, DIM])?);
            let logits = mlp.forward(&mut g, params, xv)?;
            let logits = g.reshape(logits, &[BATCH])?;
            let loss = g.bce_with_logits(logits, &Tensor::from_f32(y, &[BATCH])?)?;
            params.zero_grads()?;
            let grads = g.backward(loss)?;
            g.accumulate_grads(&grads, params)?;
            drop(g);
            exchange.settle(i)?; // a publish may still be copying these weights in the background
            opt.step(params, 3e-3, Some(5.0))?;
        }
        // Swap in what was published at an earlier step; publish every EXCHANGE steps.
        let publish = (step + 1) % EXCHANGE == 0;
        end_step(&mut exchange, step + 1, publish, models.iter().enumerate().map(|(i, (_, p, _))| (i, p)))?;
    }
    models.iter().map(|(mlp, p, _)| predict(mlp, p, valid)).collect()
}

fn main() -> codistill::Result<()> {
    let mut rng = Rng::new(7);
    let train = data(20_000, &mut rng);
    let (vx, vy) = data(5_000, &mut rng);
    for (name, weight) in [("independent", 0.0), ("codistilled", 0.5)] {
        let a = run(weight, 1, &train, &vx)?;
        let b = run(weight, 2, &train, &vx)?;
        let ens: Vec<f32> = a[0].iter().zip(&a[1]).map(|(p, q)| 0.5 * (p + q)).collect();
        println!(
            "{name:<12} log-loss {:.4} / {:.4}, ensemble {:.4}; churn within the pair {:.4}, between seeds {:.4}",
            log_loss(&a[0], &vy),
            log_loss(&a[1], &vy),
            log_loss(&ens, &vy),
            churn(&a[0], &a[1])?,
            churn(&a[0], &b[0])?
        );
    }
    Ok(())
}
