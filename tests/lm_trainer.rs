//! The language-model trainer: bad input gives errors that name the file and the problem, and a
//! resumed run ends exactly where an uninterrupted one does.

#![allow(clippy::field_reassign_with_default)] // configs are built field by field, as a user would

mod common;
use codistill::checkpoint::Checkpoint;
use codistill::data::synthetic::{write_markov_corpus, MarkovSource};
use codistill::train::lm::{self, LmConfig};
use std::path::Path;

fn tmp(name: &str) -> common::Scratch {
    common::Scratch::new("lmt", name)
}

/// A small corpus directory and a config that trains a small model on it quickly.
fn small_run(dir: &Path, seed: u64) -> LmConfig {
    let data = dir.join("data");
    write_markov_corpus(&data, &MarkovSource::new(30, 1, 3, seed), [12_000, 2_000, 2_000], seed).unwrap();
    let mut c = LmConfig::default();
    c.data = Some(data);
    c.cache = dir.join("cache");
    c.out = dir.join("out");
    c.min_count = 1;
    (c.emb_dim, c.hidden, c.layers, c.batch, c.bptt) = (8, 16, 2, 4, 10);
    (c.steps, c.eval_every, c.log_every, c.checkpoint_every) = (40, 20, 10, 20);
    c.device = codistill::train::DeviceChoice::Cpu;
    c
}

fn err(r: codistill::Result<impl std::fmt::Debug>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn resumed_run_ends_exactly_where_an_uninterrupted_run_does() {
    let d = tmp("resume");
    let mut full = small_run(&d, 1);
    full.out = d.join("full");
    let a = lm::train(&full).unwrap();

    let mut first = full.clone();
    first.out = d.join("split");
    first.steps = 20;
    lm::train(&first).unwrap();
    // As a run killed after its checkpoint leaves it: events past the checkpoint's step, and a
    // line torn in the middle. The resume cuts them.
    let metrics_path = d.join("split/metrics.jsonl");
    let mut m = std::fs::read_to_string(&metrics_path).unwrap();
    m.push_str("{\"event\":\"train\",\"step\":30,\"loss\":9.0}\n{\"event\":\"tra");
    std::fs::write(&metrics_path, m).unwrap();
    let mut second = first.clone();
    second.steps = 40;
    second.resume = Some(d.join("split/checkpoint.safetensors"));
    let b = lm::train(&second).unwrap();
    for line in std::fs::read_to_string(&metrics_path).unwrap().lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("not one JSON object: {line:?}: {e}"));
    }
    assert!(!std::fs::read_to_string(&metrics_path).unwrap().contains("\"loss\":9.0"), "the killed run's event past the checkpoint was kept");

    assert_eq!(a.steps, 40);
    assert_eq!(b.steps, 40);
    // The second run really continued (an ignored resume would retrain from step 0 and match too).
    let metrics = std::fs::read_to_string(d.join("split/metrics.jsonl")).unwrap();
    let logged: Vec<&str> = metrics.lines().filter(|l| l.contains("\"event\":\"train\"")).map(|l| l.split(',').nth(1).unwrap()).collect();
    assert_eq!(logged, ["\"step\":10", "\"step\":20", "\"step\":30", "\"step\":40"], "{metrics}");
    assert_eq!(a.best_valid, b.best_valid, "validation losses differ");
    assert_eq!(a.test, b.test, "test losses differ");
    let ca = Checkpoint::load(&d.join("full/checkpoint.safetensors")).unwrap();
    let cb = Checkpoint::load(&d.join("split/checkpoint.safetensors")).unwrap();
    assert_eq!(ca.tensors.keys().collect::<Vec<_>>(), cb.tensors.keys().collect::<Vec<_>>());
    for (name, t) in &ca.tensors {
        assert_eq!(t, &cb.tensors[name], "tensor {name} differs after resume");
    }
    // Resuming the finished run changes nothing and says so.
    let before = (std::fs::read(&metrics_path).unwrap(), std::fs::read(d.join("split/checkpoint.safetensors")).unwrap());
    let e = err(lm::train(&second));
    assert!(e.contains("nothing is left to train") && e.contains("step 40"), "{e}");
    assert_eq!((std::fs::read(&metrics_path).unwrap(), std::fs::read(d.join("split/checkpoint.safetensors")).unwrap()), before);
    // Resuming on other training data (the same words, so the same vocabulary, in another order)
    // is refused with the difference named.
    let train = d.join("data/train.txt");
    let text = std::fs::read_to_string(&train).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.reverse();
    std::fs::write(&train, lines.join("\n") + "\n").unwrap();
    (second.steps, second.out) = (60, d.join("other"));
    let e = err(lm::train(&second));
    assert!(e.contains("other training data") && e.contains("train.txt"), "{e}");
}

/// The `lr` of every train event in `metrics.jsonl`.
fn logged_lrs(metrics: &Path) -> Vec<f64> {
    common::train_field(metrics, "lr").iter().map(|v| v.parse().unwrap()).collect()
}

/// Sum of squares of every dense weight (the LSTM and the output layer) of a checkpoint.
fn dense_sq_norm(ckpt: &Path) -> f64 {
    let c = Checkpoint::load(ckpt).unwrap();
    c.tensors
        .iter()
        .filter(|(k, _)| k.starts_with("lm.lstm") || k.starts_with("lm.out"))
        .map(|(_, t)| t.f32s().unwrap().iter().map(|&x| (x as f64).powi(2)).sum::<f64>())
        .sum()
}

#[test]
fn warmup_cosine_and_weight_decay_shape_the_run() {
    let d = tmp("sched");
    let mut c = small_run(&d, 3);
    (c.steps, c.eval_every, c.log_every, c.checkpoint_every, c.lr) = (100, 100, 10, 100, 0.01);
    (c.warmup, c.cosine, c.lr_min, c.out) = (25, true, 1e-4, d.join("plain"));
    let plain = lm::train(&c).unwrap().best_valid.unwrap();
    let lrs = logged_lrs(&d.join("plain/metrics.jsonl"));
    assert_eq!(lrs.len(), 10, "{lrs:?}");
    // Rising through the warm-up (steps 10, 20), the peak just after it, then falling to lr_min.
    assert!(lrs[0] < lrs[1] && lrs[1] < lrs[2], "no warm-up: {lrs:?}");
    assert!(lrs[2..].windows(2).all(|w| w[1] < w[0]), "the cosine does not fall: {lrs:?}");
    assert!(lrs[2] > 0.009 && lrs[9] < 2e-4, "the cosine does not span lr to lr_min: {lrs:?}");
    // AdamW: the same run with decoupled weight decay ends with smaller dense weights.
    (c.weight_decay, c.out) = (1.0, d.join("decay"));
    let decayed = lm::train(&c).unwrap().best_valid.unwrap();
    let (a, b) = (dense_sq_norm(&d.join("plain/checkpoint.safetensors")), dense_sq_norm(&d.join("decay/checkpoint.safetensors")));
    eprintln!("validation {plain} / {decayed}; dense squared norm {a} / {b}");
    assert!(b < 0.8 * a, "weight decay did not shrink the weights: {a} -> {b}");
    // Two decays at once, and weight decay for adagrad, are refused.
    (c.lr_decay_every, c.out) = (10, d.join("x"));
    assert!(err(lm::train(&c)).contains("choose one"));
    (c.lr_decay_every, c.cosine, c.optimizer) = (0, false, codistill::train::OptimizerChoice::Adagrad);
    assert!(err(lm::train(&c)).contains("adagrad has none"));
}

#[test]
fn training_learns_the_small_corpus() {
    let d = tmp("learns");
    let mut c = small_run(&d, 2);
    c.steps = 300;
    c.eval_every = 300;
    c.lr = 0.01;
    let s = lm::train(&c).unwrap();
    let v = s.best_valid.unwrap();
    let unigram_ln_vocab = (32f64).ln();
    assert!(v < 0.75 * unigram_ln_vocab, "validation loss {v} did not fall well below log V = {unigram_ln_vocab}");
    let result = std::fs::read_to_string(c.out.join("result.json")).unwrap();
    assert!(result.contains("\"test_ppl\"") && result.contains("\"best_valid_ppl\""), "{result}");
    let metrics = std::fs::read_to_string(c.out.join("metrics.jsonl")).unwrap();
    assert!(metrics.lines().any(|l| l.contains("\"event\":\"valid\"")), "{metrics}");
    // lm eval on the checkpoint agrees with the run's own test figure
    let r = lm::eval_checkpoint(&c.out.join("best.safetensors"), None, &c.cache, 0, 1).unwrap();
    assert!((r.loss - s.test.unwrap()).abs() < 1e-9, "eval {} vs train's test {:?}", r.loss, s.test);
    // One stream: every token of the test file after the first is scored; the rate of <unk> is
    // reported (none here: every word of the corpus is in the vocabulary).
    assert_eq!((r.tokens, r.lanes, r.oov_rate), (r.file_tokens - 1, 1, Some(0.0)));
    // Churn (mean |p_a(t) - p_b(t)| over the scored tokens): none against itself, some against a
    // model of another seed on the same text.
    let best = c.out.join("best.safetensors");
    assert_eq!(lm::churn_checkpoints(&best, &best, None, &c.cache, 0, 1).unwrap(), 0.0);
    let other = LmConfig { seed: 3, out: d.join("other"), ..c.clone() };
    lm::train(&other).unwrap();
    let ch = lm::churn_checkpoints(&best, &other.out.join("best.safetensors"), None, &c.cache, 0, 1).unwrap();
    assert!(ch.is_finite() && ch > 0.0 && ch < 1.0, "churn {ch}");
}

/// A corpus where memory is the whole game: each line is `K<k> F1 F2 F3 F4 F5 C<k>` with the key
/// k uniform over `keys`, so the copy `C<k>` is fixed by a token six positions before it and by
/// nothing nearer. Per token (8 a line with `<eos>`) the entropy rate is `ln(keys) / 8`; a model
/// that sees only the previous token (order 1) pays `ln(keys)` at the key and again at the copy,
/// `2 ln(keys) / 8`.
fn write_copy_corpus(dir: &Path, keys: usize, lines: [usize; 3], seed: u64) -> (f64, f64) {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = codistill::Rng::new(seed);
    for (name, n) in ["train.txt", "valid.txt", "test.txt"].iter().zip(lines) {
        let text: String = (0..n)
            .map(|_| {
                let k = rng.below(keys);
                format!("K{k} F1 F2 F3 F4 F5 C{k}\n")
            })
            .collect();
        std::fs::write(dir.join(name), text).unwrap();
    }
    let h = (keys as f64).ln();
    (h / 8.0, 2.0 * h / 8.0)
}

/// Recurrence and the state carried between windows, tested where they are needed: on the copy
/// corpus with `bptt` 10, six of ten keys lie in the window before their copy, so a trainer that
/// did not carry its LSTM state into the next window could not predict them (its training loss
/// stays above the bar), and an evaluation in windows of 3 (every copy at least one window after
/// its key) is below the bar only if evaluation carries the state too. The bar lies between the
/// true entropy rate and what the best order-1 model can reach.
#[test]
fn the_lstm_state_carries_a_dependency_across_windows() {
    let d = tmp("carry");
    let (rate, order1) = write_copy_corpus(&d.join("data"), 8, [12_000, 1_500, 1_500], 11);
    let mut c = LmConfig::default();
    (c.data, c.cache, c.out, c.min_count, c.device) = (Some(d.join("data")), d.join("cache"), d.join("out"), 1, codistill::train::DeviceChoice::Cpu);
    // Width 32 sat on the order-1 floor for 3,000 steps; 64 learns the copy in about 1,500 (2,000 for a margin).
    (c.emb_dim, c.hidden, c.layers, c.dropout, c.batch, c.bptt) = (16, 64, 1, 0.0, 16, 10);
    (c.steps, c.eval_every, c.log_every, c.checkpoint_every, c.lr) = (2000, 2000, 100, 2000, 0.01);
    let s = lm::train(&c).unwrap();
    let bar = rate + 0.35 * (order1 - rate);
    let train_loss: f64 = common::train_field(&c.out.join("metrics.jsonl"), "loss").last().unwrap().parse().unwrap();
    let valid = s.best_valid.unwrap();
    let loaded = lm::load_checkpoint(&c.out.join("best.safetensors")).unwrap();
    let tokens = loaded.vocab.encode_file(&d.join("data/valid.txt")).unwrap();
    let (short, n) = lm::evaluate(&codistill::Backend::default(), &loaded.model, &loaded.store, &tokens, 8, 3, 0).unwrap();
    eprintln!("entropy rate {rate:.4}, order-1 floor {order1:.4}, bar {bar:.4}: train {train_loss:.4}, valid {valid:.4}, valid in windows of 3 {short:.4} ({n} tokens)");
    assert!(train_loss < bar, "training loss {train_loss:.4} is not below {bar:.4}: the state is not carried between training windows");
    assert!(valid < bar, "validation loss {valid:.4} is not below {bar:.4}");
    assert!(short < bar, "validation in windows of 3 scores {short:.4}, not below {bar:.4}: evaluation does not carry the state");
}

#[test]
fn empty_corpus_is_an_error_naming_the_file() {
    let d = tmp("empty");
    let mut c = small_run(&d, 3);
    let empty = d.join("empty.txt");
    std::fs::write(&empty, "\n  \n").unwrap();
    c.train = Some(empty);
    let e = err(lm::train(&c));
    assert!(e.contains("empty.txt") && e.contains("no words"), "{e}");
}

#[test]
fn missing_file_is_an_error_naming_it() {
    let d = tmp("missing");
    let mut c = small_run(&d, 4);
    c.valid = Some(d.join("nope.txt"));
    let e = err(lm::train(&c));
    assert!(e.contains("nope.txt") && e.contains("not found"), "{e}");
}

#[test]
fn invalid_utf8_is_an_error_naming_file_and_line() {
    let d = tmp("utf8");
    let mut c = small_run(&d, 5);
    let bad = d.join("bad.txt");
    std::fs::write(&bad, b"good line\nanother good one\nbad \xff\xfe here\n").unwrap();
    c.train = Some(bad);
    let e = err(lm::train(&c));
    assert!(e.contains("bad.txt:3") && e.contains("UTF-8"), "{e}");
}

#[test]
fn checkpoint_of_another_vocabulary_is_refused() {
    let d = tmp("vocab");
    let c = small_run(&d, 6);
    lm::train(&c).unwrap();
    let other = tmp("vocab-other");
    let mut c2 = small_run(&other, 7);
    std::fs::write(other.join("data/train.txt"), "a b c d e f a b c\n".repeat(200)).unwrap();
    c2.resume = Some(c.out.join("checkpoint.safetensors"));
    let e = err(lm::train(&c2));
    assert!(e.contains("checkpoint.safetensors") && e.contains("vocabulary"), "{e}");
}

#[test]
fn corrupted_and_truncated_checkpoints_are_refused() {
    let d = tmp("corrupt");
    let c = small_run(&d, 8);
    lm::train(&c).unwrap();
    let good = std::fs::read(c.out.join("checkpoint.safetensors")).unwrap();
    let mut flipped = good.clone();
    let at = flipped.len() - 100;
    flipped[at] ^= 0x40;
    let p = d.join("flipped.safetensors");
    std::fs::write(&p, &flipped).unwrap();
    let e = err(lm::eval_checkpoint(&p, None, &c.cache, 0, 1));
    assert!(e.contains("flipped.safetensors") && e.contains("corrupted"), "{e}");
    let t = d.join("cut.safetensors");
    std::fs::write(&t, &good[..good.len() / 2]).unwrap();
    let mut r = c.clone();
    r.resume = Some(t);
    let e = err(lm::train(&r));
    assert!(e.contains("cut.safetensors") && e.contains("truncated"), "{e}");
}

#[test]
fn config_with_unknown_key_is_refused_by_the_cli() {
    let d = tmp("cfg");
    let cfg = d.join("run.toml");
    std::fs::write(&cfg, "steps = 10\nhiden = 64\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_codistill")).args(["lm", "train", "--config"]).arg(&cfg).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("run.toml:2") && stderr.contains("hiden") && stderr.contains("unknown key"), "{stderr}");
}

/// `kill -9` at random moments, several times, then `--resume` from whatever checkpoint the killed
/// run left: the final weights are bitwise those of an uninterrupted run, `metrics.jsonl` parses
/// line by line with every logged step once, and no temporary file is left in the run directory.
#[test]
fn runs_killed_at_random_moments_resume_to_the_uninterrupted_result() {
    let d = tmp("kill9");
    let mut c = small_run(&d, 12);
    (c.hidden, c.layers, c.steps, c.eval_every, c.log_every, c.checkpoint_every) = (32, 1, 1500, 500, 10, 25);
    c.out = d.join("straight");
    lm::train(&c).unwrap();
    let ckpt = d.join("killed/checkpoint.safetensors");
    let run = |resume: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_codistill"));
        cmd.args(["lm", "train", "--device", "cpu", "--min-count", "1", "--emb-dim", "8", "--hidden", "32", "--layers", "1", "--batch", "4", "--bptt", "10"])
            .args(["--steps", "1500", "--eval-every", "500", "--log-every", "10", "--checkpoint-every", "25", "--seed", &c.seed.to_string()])
            .arg("--data")
            .arg(d.join("data"))
            .arg("--cache")
            .arg(&c.cache)
            .arg("--out")
            .arg(d.join("killed"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        if resume {
            cmd.arg("--resume").arg(&ckpt);
        }
        cmd
    };
    let mut rng = codistill::Rng::new(7);
    let mut kills = 0;
    for _ in 0..4 {
        let mut child = run(ckpt.exists()).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(150 + rng.below(700) as u64));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
    }
    let last = run(ckpt.exists()).output().unwrap();
    let stderr = String::from_utf8_lossy(&last.stderr);
    assert!(last.status.success() || stderr.contains("nothing is left to train"), "{stderr}");
    eprintln!("killed {kills} time(s)");
    let (a, b) = (Checkpoint::load(&d.join("straight/checkpoint.safetensors")).unwrap(), Checkpoint::load(&ckpt).unwrap());
    for (name, t) in &a.tensors {
        assert_eq!(t, &b.tensors[name], "{name} differs from the uninterrupted run's after {kills} kill(s)");
    }
    let steps = |dir: &str| -> Vec<u64> {
        let text = std::fs::read_to_string(d.join(dir).join("metrics.jsonl")).unwrap();
        for line in text.lines() {
            serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{dir}: not one JSON object: {line:?}: {e}"));
        }
        common::train_field(&d.join(dir).join("metrics.jsonl"), "step").iter().map(|s| s.parse().unwrap()).collect()
    };
    assert_eq!(steps("killed"), steps("straight"), "the killed-and-resumed run's metrics do not log every step once");
    let left: Vec<_> =
        std::fs::read_dir(d.join("killed")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.contains(".tmp")).collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

/// The n-gram source: fitted on a text, drawn once and reused, a new corpus when the text
/// changes (never the cache of another file), the floor reported, and its options checked.
#[test]
fn ngram_source_is_fitted_on_its_text_and_never_reused_for_another() {
    use codistill::train::lm::SyntheticSource;
    let d = tmp("ngram");
    let fit = d.join("fit.txt");
    let text = "the cat sat on the mat .\nthe dog sat on the log .\na cat and a dog met .\nthe end came .\n".repeat(20);
    std::fs::write(&fit, &text).unwrap();
    let mut c = LmConfig::default();
    c.cache = d.join("cache");
    c.out = d.join("out");
    c.device = codistill::train::DeviceChoice::Cpu;
    (c.emb_dim, c.hidden, c.layers, c.batch, c.bptt, c.min_count) = (8, 16, 1, 4, 10, 1);
    (c.steps, c.eval_every, c.log_every, c.checkpoint_every, c.synthetic_tokens) = (30, 30, 10, 30, 20_000);
    c.synthetic_source = SyntheticSource::Ngram;
    c.synthetic_fit = Some(fit.clone());
    let s = lm::train(&c).unwrap();
    let floors = s.floors.expect("a synthetic corpus reports its floors");
    assert!(floors.valid > 0.1 && floors.valid < (14f64).ln(), "floor {floors:?}");
    assert!(s.best_valid.unwrap() > floors.valid - 0.05, "a model below the source's entropy: {:?} against {floors:?}", s.best_valid);
    let corpora =
        || std::fs::read_dir(&c.cache).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().starts_with("synthetic-lm-")).count();
    assert_eq!(corpora(), 1);
    // The same text again: the same corpus, the same floors.
    let again = lm::train(&LmConfig { out: d.join("again"), ..c.clone() }).unwrap();
    assert_eq!((corpora(), again.floors), (1, Some(floors)));
    // Another text under the same name: another corpus.
    std::fs::write(&fit, text.replace("cat", "bird")).unwrap();
    lm::train(&LmConfig { out: d.join("other"), ..c.clone() }).unwrap();
    assert_eq!(corpora(), 2);
    let words = lm::load_checkpoint(&d.join("other/best.safetensors")).unwrap().vocab.words;
    assert!(words.iter().any(|w| w == "bird") && !words.iter().any(|w| w == "cat"), "{words:?}");
    // Bad options, each named.
    let e = err(lm::train(&LmConfig { synthetic_fit: None, ..c.clone() }));
    assert!(e.contains("--synthetic-fit"), "{e}");
    let e = err(lm::train(&LmConfig { synthetic_source: SyntheticSource::Markov, ..c.clone() }));
    assert!(e.contains("synthetic_fit") && e.contains("fit.txt"), "{e}");
    let e = err(lm::train(&LmConfig { synthetic_fit: Some(d.join("nope.txt")), ..c.clone() }));
    assert!(e.contains("nope.txt"), "{e}");
    let e = err(lm::train(&LmConfig { train: Some(fit.clone()), ..c.clone() }));
    assert!(e.contains("synthetic_fit") && e.contains("fit.txt"), "{e}");
    let e = err(lm::train(&LmConfig { synthetic_order: 0, ..c.clone() }));
    assert!(e.contains("synthetic_order"), "{e}");
    let e = err(lm::train(&LmConfig { synthetic_source: SyntheticSource::Markov, synthetic_fit: None, synthetic_vocab: 1, ..c.clone() }));
    assert!(e.contains("synthetic_vocab"), "{e}");
}

/// Int8 products (`lm eval --products int8`): a quantized model's own levels with int8
/// activations, and an f32 model quantized to int8 first, score near the f32 products and not
/// equal to them; a model has no churn against itself in either arithmetic.
#[test]
fn int8_products_score_a_quantized_model_near_its_f32_products() {
    use codistill::ops::quant::{Products, Quant};
    let d = tmp("int8");
    let mut c = small_run(&d, 5);
    (c.steps, c.eval_every, c.lr, c.dropout, c.quantize) = (200, 100, 0.01, 0.0, Quant::Int8);
    lm::train(&c).unwrap();
    let f32_run = LmConfig { quantize: Quant::None, out: d.join("f32"), ..c.clone() };
    lm::train(&f32_run).unwrap();
    let four = LmConfig { quantize: Quant::Int4, out: d.join("int4"), ..c.clone() };
    lm::train(&four).unwrap();
    for ck in [c.out.join("best.safetensors"), d.join("int4/best.safetensors"), d.join("f32/best.safetensors")] {
        let score = |p: Products| lm::eval_checkpoints_with(std::slice::from_ref(&ck), None, &c.cache, 0, 4, p).unwrap();
        let (f, i) = (score(Products::F32), score(Products::Int8));
        eprintln!("{}: f32 products {}, int8 products {}", ck.display(), f.loss, i.loss);
        assert_eq!((f.tokens, f.lanes), (i.tokens, i.lanes));
        assert!(f.loss < 0.75 * (32f64).ln(), "the model learned nothing: {}", f.loss);
        assert!((f.loss - i.loss).abs() < 0.01 && f.loss != i.loss, "{}: {} against {}", ck.display(), i.loss, f.loss);
        assert_eq!(lm::churn_checkpoints_with(&ck, &ck, None, &c.cache, 0, 4, Products::Int8).unwrap(), 0.0);
    }
    // The ensemble of two, in int8, between its members' figures and no worse than the worse.
    let pair = [c.out.join("best.safetensors"), d.join("f32/best.safetensors")];
    let e = lm::eval_checkpoints_with(&pair, None, &c.cache, 0, 4, Products::Int8).unwrap().loss;
    let one = |p: &std::path::PathBuf| lm::eval_checkpoints_with(std::slice::from_ref(p), None, &c.cache, 0, 4, Products::Int8).unwrap().loss;
    assert!(e <= one(&pair[0]).max(one(&pair[1])) + 1e-9, "ensemble {e}");
}
