//! Cached teacher outputs (`teacher-cache`, then `--teacher-logits`): with every logit kept, a
//! distillation from the cache is the distillation from the live teachers, weight for weight; with
//! the top k it still distills; a cache of other data, batching or task is refused by name.

#![allow(clippy::field_reassign_with_default)] // configs are built field by field, as a user would

mod common;
use codistill::checkpoint::Checkpoint;
use codistill::config::Paths;
use codistill::train::criteo::{self, CriteoConfig};
use codistill::train::lm::{self, LmConfig};
use codistill::train::teacher_cache::write_teacher_cache;
use codistill::train::DeviceChoice;
use std::path::Path;

fn tmp(name: &str) -> common::Scratch {
    common::Scratch::new("tc", name)
}

fn paths(p: &[&Path]) -> Paths {
    Paths(p.iter().map(|p| p.to_path_buf()).collect())
}

fn small_lm(dir: &Path) -> LmConfig {
    use codistill::data::synthetic::{write_markov_corpus, MarkovSource};
    write_markov_corpus(&dir.join("data"), &MarkovSource::new(30, 1, 3, 7), [12_000, 3_000, 3_000], 7).unwrap();
    let mut c = LmConfig::default();
    (c.data, c.cache, c.device, c.min_count) = (Some(dir.join("data")), dir.join("cache"), DeviceChoice::Cpu, 1);
    (c.emb_dim, c.hidden, c.layers, c.dropout, c.batch, c.bptt) = (8, 8, 1, 0.0, 8, 10);
    (c.eval_every, c.log_every) = (10_000, 50);
    c
}

/// The tensors of a run's checkpoint (the optimizer state, carried state and a click model's
/// recorded statistics included).
fn tensors(path: &Path) -> Vec<(String, Vec<f32>)> {
    let values = |t: codistill::Tensor| match t.dtype() {
        codistill::DType::I32 => t.i32s().unwrap().iter().map(|&i| i as f32).collect(),
        _ => t.to_vec_f32().unwrap(),
    };
    Checkpoint::load(path).unwrap().tensors.into_iter().map(|(k, t)| (k, values(t))).collect()
}

#[test]
fn a_language_model_distills_from_cached_logits_as_from_its_live_teachers() {
    let d = tmp("lm");
    let base = small_lm(&d);
    let mut teachers = Vec::new();
    for (name, hidden, steps) in [("t1", 24, 300), ("t2", 12, 150)] {
        let mut t = base.clone();
        (t.hidden, t.steps, t.checkpoint_every, t.out) = (hidden, steps, steps, d.join(name));
        lm::train(&t).unwrap();
        teachers.push(d.join(name).join("checkpoint.safetensors"));
    }
    let ts: Vec<&Path> = teachers.iter().map(|p| p.as_path()).collect();
    // The students run past one pass (the cache covers one; the teachers' state restarts with it),
    // with no burn-in: live teachers start running at burn_in, from a zero state mid-pass, where a
    // cache's teachers read the pass from its start.
    let student = |name: &str| {
        let mut s = base.clone();
        (s.steps, s.burn_in, s.alpha, s.temperature, s.out) = (400, 0, 0.7, 2.0, d.join(name));
        s
    };
    let mut live = student("live");
    live.teacher = paths(&ts);
    let live_valid = lm::train(&live).unwrap().best_valid.unwrap();

    // Every logit kept (top_k above the vocabulary): the same weights, bit for bit.
    let mut writer = student("unused");
    (writer.teacher, writer.teacher_logits) = (paths(&ts), Some(d.join("all.safetensors")));
    let w = write_teacher_cache::<lm::LmTask>(&writer, 1_000_000).unwrap();
    assert_eq!((w.teachers, w.k), (2, w.classes));
    // One pass of whole windows, each batch * bptt rows.
    assert!(w.items > 0 && w.items.is_multiple_of(80), "{} items", w.items);
    let mut cached = student("cached");
    cached.teacher_logits = Some(d.join("all.safetensors"));
    let cached_valid = lm::train(&cached).unwrap().best_valid.unwrap();
    assert_eq!(cached_valid, live_valid);
    assert_eq!(tensors(&d.join("cached/checkpoint.safetensors")), tensors(&d.join("live/checkpoint.safetensors")));
    let result = std::fs::read_to_string(d.join("cached/result.json")).unwrap();
    assert!(result.contains("\"teachers\": 2") || result.contains("\"teachers\":2"), "{result}");

    // The top k: smaller files, and students that come to the live one as k grows (here, where a
    // weak second teacher flattens the average, the truncated tails make them better than it).
    let mut gaps = Vec::new();
    for k in [1, 3, 10, w.classes - 1] {
        writer.teacher_logits = Some(d.join(format!("top{k}.safetensors")));
        let wk = write_teacher_cache::<lm::LmTask>(&writer, k).unwrap();
        // k logits, k indices and one log-sum-exp an item, against every logit.
        assert!(k * 2 > w.classes || wk.bytes < w.bytes * (2 * k + 1) as u64 / w.classes as u64 + 4096, "top {k}: {} vs {} bytes", wk.bytes, w.bytes);
        let mut s = student(&format!("top{k}"));
        s.teacher_logits = writer.teacher_logits.clone();
        let v = lm::train(&s).unwrap().best_valid.unwrap();
        eprintln!("top {k}: best validation {v:.5} (live teachers {live_valid:.5})");
        gaps.push((v - live_valid).abs());
    }
    assert!(gaps.windows(2).all(|g| g[1] < g[0]), "the students did not come closer to the live one as k grew: {gaps:?}");
    assert!(gaps[0] > 0.01 && gaps[3] < 1e-4, "{gaps:?}");

    // Another batching, other data (a shard), or the cache with its teachers: refused by name.
    let refused = |f: &dyn Fn(&mut LmConfig)| {
        let mut s = student("refused");
        s.teacher_logits = Some(d.join("top3.safetensors"));
        f(&mut s);
        lm::train(&s).unwrap_err().to_string()
    };
    let e = refused(&|s| s.bptt = 12);
    assert!(e.contains("top3.safetensors") && e.contains("layout"), "{e}");
    let e = refused(&|s| (s.shards, s.shard) = (2, 1));
    assert!(e.contains("data_key"), "{e}");
    assert!(refused(&|s| s.teacher = paths(&ts)).contains("give one of the two"));
    assert!(refused(&|s| s.models = 2).contains("one model"));
    assert!(refused(&|s| s.hint_weight = 0.1).contains("hidden states"));
    let e = refused(&|s| s.teacher_logits = Some(teachers[0].clone()));
    assert!(e.contains("not a teacher cache"), "{e}");
    // The writer needs its teachers and its file.
    let mut bare = student("unused");
    bare.teacher_logits = Some(d.join("x.safetensors"));
    assert!(write_teacher_cache::<lm::LmTask>(&bare, 8).unwrap_err().to_string().contains("--teacher"));
    assert!(!d.join("x.safetensors").exists());
}

#[test]
fn a_click_model_distills_from_cached_logits_as_from_its_live_teacher() {
    let d = tmp("criteo");
    let small = |name: &str| {
        let mut c = CriteoConfig::default();
        (c.cache, c.device, c.out) = (d.join("cache"), DeviceChoice::Cpu, d.join(name));
        (c.synthetic_scale, c.synthetic_rows, c.buckets, c.eval_rows) = (0.002, 20_000, 1024, 3_000);
        c
    };
    let mut t = small("t");
    (t.emb_dim, t.mlp) = (8, "32".into());
    criteo::train(&t).unwrap();
    let teacher = d.join("t/checkpoint.safetensors");
    // One epoch, in which the cache was written from the same shuffled batches: a later epoch
    // batches the rows anew, and the CPU's products may then differ in the last bit with a row's
    // place in its batch (the cache is read by row, so it holds each row's logit either way).
    let student = |name: &str| {
        let mut s = small(name);
        (s.emb_dim, s.mlp, s.burn_in, s.epochs, s.distill_lambda) = (4, "16".into(), 10, 1, 0.5);
        s
    };
    let mut live = student("live");
    live.teacher = paths(&[&teacher]);
    let live_valid = criteo::train(&live).unwrap().valid[0];
    let mut writer = student("unused");
    (writer.teacher, writer.teacher_logits) = (paths(&[&teacher]), Some(d.join("c.safetensors")));
    let w = write_teacher_cache::<criteo::CtrTask>(&writer, 1).unwrap();
    assert_eq!((w.teachers, w.classes, w.k), (1, 1, 1));
    let mut cached = student("cached");
    cached.teacher_logits = Some(d.join("c.safetensors"));
    let cached_valid = criteo::train(&cached).unwrap().valid[0];
    assert_eq!(cached_valid.log_loss, live_valid.log_loss);
    assert_eq!(tensors(&d.join("cached/checkpoint.safetensors")), tensors(&d.join("live/checkpoint.safetensors")));
    // A cache of another log (another seed draws another synthetic log) is refused.
    let mut wrong = student("wrong");
    (wrong.seed, wrong.teacher_logits) = (2, Some(d.join("c.safetensors")));
    let e = criteo::train(&wrong).unwrap_err().to_string();
    assert!(e.contains("data_key"), "another seed draws another synthetic log: {e}");
}
