//! Offline distillation through the trainer's library API, as a program embedding the engine
//! would: train a wide teacher language model on the built-in synthetic corpus, then a narrow
//! student four ways: on the labels alone, distilled from the teacher on the same text, the same
//! with a feature hint (the teacher's hidden states), and data-free (on text sampled from the
//! teacher, never reading the training file). Prints the
//! validation losses against the corpus's entropy floor, and a line of the teacher's text.
//! `cargo run --release --example distill_lm` (CI runs it; about half a minute on two cores).

use codistill::config::Paths;
use codistill::train::lm::{self, LmConfig};
use codistill::train::sample::{render, Sampler};
use codistill::train::DeviceChoice;

fn main() -> codistill::Result<()> {
    let dir = std::env::temp_dir().join(format!("codistill-distill-example-{}", std::process::id()));
    let mut base = LmConfig::default();
    (base.cache, base.device) = (dir.join("cache"), DeviceChoice::Cpu);
    (base.synthetic_vocab, base.synthetic_tokens) = (200, 100_000);
    (base.layers, base.dropout, base.batch, base.bptt, base.eval_every, base.log_every) = (1, 0.0, 16, 20, 100_000, 100_000);

    // The teacher: wide, trained on the corpus's labels.
    let mut teacher = base.clone();
    (teacher.emb_dim, teacher.hidden, teacher.steps, teacher.checkpoint_every, teacher.out) = (64, 128, 600, 600, dir.join("teacher"));
    let t = lm::train(&teacher)?;
    let ckpt = dir.join("teacher/best.safetensors");
    // Where the synthetic corpus's validation file is (written into the cache on first use).
    let valid = lm::prepare_data(&base)?.valid.map(|v| v.path);

    // Students: narrow, the same steps each.
    let student = |name: &str, weight: f32, hint: f32, data_free: bool| -> codistill::Result<f64> {
        let mut s = base.clone();
        (s.emb_dim, s.hidden, s.steps, s.checkpoint_every, s.out) = (16, 16, 600, 600, dir.join(name));
        (s.burn_in, s.alpha, s.hint_weight, s.data_free) = (0, weight, hint, data_free);
        if weight > 0.0 {
            s.teacher = Paths(vec![ckpt.clone()]);
        }
        if data_free {
            // No training text: the student reads only the validation file, to be scored.
            s.valid = valid.clone();
        }
        Ok(lm::train(&s)?.best_valid.unwrap_or(f64::NAN))
    };
    let alone = student("alone", 0.0, 0.0, false)?;
    let taught = student("taught", 1.0, 0.0, false)?;
    let hinted = student("hinted", 1.0, 10.0, false)?;
    let free = student("data-free", 1.0, 0.0, true)?;

    let floor = t.floors.map(|f| f.valid).unwrap_or(f64::NAN);
    println!("validation loss, nats/token (the corpus's entropy floor: {floor:.4})");
    let rows = [
        ("teacher (64/128 wide)", t.best_valid.unwrap_or(f64::NAN)),
        ("student (16 wide), labels only", alone),
        ("student distilled, weight 1", taught),
        ("the same with a hint, weight 10", hinted),
        ("student distilled, data-free", free),
    ];
    for (name, loss) in rows {
        println!("  {name:<32} {loss:.4}");
    }

    // A line of the teacher's own text.
    let model = [lm::load_checkpoint(&ckpt)?];
    let mut sampler = Sampler::new(&model, 1, 1.0, 7, codistill::tensor::Device::Cpu)?;
    let tokens = sampler.tokens(20)?.remove(0);
    println!("the teacher writes: {}", render(sampler.vocab(), &tokens).replace('\n', " / "));
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
