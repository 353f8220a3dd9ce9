//! The README's "Using the crate" example: one training step of a small MLP, then a few more to
//! show the loss falling. Run with `cargo run --release --example quickstart`.

use codistill::nn::Mlp;
use codistill::optim::{Optimizer, OptimizerKind};
use codistill::{Graph, ParamStore, Rng, Tensor};

fn main() -> codistill::Result<()> {
    let mut rng = Rng::new(0);
    let mut params = ParamStore::new();
    let mlp = Mlp::new(&mut params, "mlp", &[4, 16, 1], &mut rng)?;
    let mut opt = Optimizer::new(OptimizerKind::adam());

    let x = Tensor::randn(&[32, 4], 1.0, &mut rng);
    let y = Tensor::full(&[32], 1.0);
    for step in 0..50 {
        let mut g = Graph::new();
        let xv = g.constant(x.clone());
        let logits = mlp.forward(&mut g, &params, xv)?;
        let logits = g.reshape(logits, &[32])?;
        let loss = g.bce_with_logits(logits, &y)?;
        if step % 10 == 0 {
            println!("step {step}: loss {:.4}", g.value(loss).item()?);
        }
        params.zero_grads()?;
        let grads = g.backward(loss)?;
        g.accumulate_grads(&grads, &mut params)?;
        drop(g); // the tape shares the weights' storage; drop it so the update is in place
        opt.step(&mut params, 1e-2, Some(5.0))?; // clip the global gradient norm at 5
    }
    Ok(())
}
