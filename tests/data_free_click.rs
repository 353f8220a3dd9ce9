//! Data-free distillation of click models (`--data-free fast|sequential|generator|inversion`): the
//! statistics a click checkpoint records, the relaxed forward pass the synthesis inverts, students
//! that learn from synthesised rows alone, resume, and bad input refused by name.

#![allow(clippy::field_reassign_with_default)] // configs are built field by field, as a user would

mod common;
use codistill::checkpoint::Checkpoint;
use codistill::config::Paths;
use codistill::data::criteo::{cached, DENSE_WIDTH, NUM_CATS, NUM_INTS};
use codistill::tasks::ctr::dfkd::DataFree;
use codistill::tasks::ctr::stats::{FeatureStats, SAMPLE_ROWS};
use codistill::train::criteo::{self, load_checkpoint, CriteoConfig};
use codistill::train::DeviceChoice;
use codistill::{Graph, Tensor};
use std::path::{Path, PathBuf};

fn small(d: &Path, name: &str) -> CriteoConfig {
    let mut c = CriteoConfig::default();
    (c.cache, c.device, c.out) = (d.join("cache"), DeviceChoice::Cpu, d.join(name));
    (c.synthetic_scale, c.synthetic_rows, c.buckets, c.eval_rows) = (0.002, 20_000, 1024, 3_000);
    c
}

/// A small teacher on the synthetic log (its checkpoint records the statistics).
fn teacher(d: &Path) -> PathBuf {
    let mut t = small(d, "t");
    (t.emb_dim, t.mlp, t.epochs) = (8, "32,16".into(), 2);
    criteo::train(&t).unwrap();
    d.join("t/checkpoint.safetensors")
}

/// A narrow data-free student of `teacher`.
fn student(d: &Path, name: &str, t: &Path, method: DataFree, k: usize, steps: u64) -> CriteoConfig {
    let mut s = small(d, name);
    (s.emb_dim, s.mlp, s.burn_in, s.steps, s.eval_every) = (4, "16".into(), 0, steps, 10_000);
    (s.data_free, s.dfkd_steps, s.dfkd_rows, s.dfkd_every) = (method, k, 128, 10);
    s.teacher = Paths(vec![t.to_path_buf()]);
    s
}

#[test]
fn a_click_checkpoint_records_the_statistics_of_its_training_rows() {
    let d = common::Scratch::new("dfkd", "stats");
    let path = teacher(&d);
    let ck = Checkpoint::load(&path).unwrap();
    let st = FeatureStats::read(&ck, &path, 2).unwrap().expect("every click checkpoint records statistics");
    let (cfg, model, store) = load_checkpoint(&path).unwrap();
    assert_eq!(st.hidden.iter().map(|h| h.0.len()).collect::<Vec<_>>(), model.hidden_widths());
    // Against the training rows counted here, independently: the shard is the whole synthetic
    // training log (it comes with a validation file); the moments are of its first SAMPLE_ROWS rows.
    let file = std::fs::read_dir(d.join("cache")).unwrap().map(|e| e.unwrap().path()).find(|p| p.is_dir()).unwrap().join("train.tsv");
    let (data, _) = cached(&file, cfg.buckets, cfg.on_bad_line, &d.join("cache")).unwrap();
    let n = data.rows();
    let rate: f64 = (0..n).map(|i| data.label(i) as f64).sum::<f64>() / n as f64;
    assert!((st.click_rate - rate).abs() < 1e-9, "click rate {} vs {rate}", st.click_rate);
    let m = n.min(SAMPLE_ROWS);
    assert_eq!(st.rows, m);
    let (_, dense, _) = data.batch(&(0..m).collect::<Vec<_>>()).unwrap();
    let dv = dense.f32s().unwrap();
    for j in [0, 5, NUM_INTS, DENSE_WIDTH - 1] {
        let mean: f64 = (0..m).map(|r| dv[r * DENSE_WIDTH + j] as f64).sum::<f64>() / m as f64;
        let var: f64 = (0..m).map(|r| (dv[r * DENSE_WIDTH + j] as f64 - mean).powi(2)).sum::<f64>() / m as f64;
        assert!((st.dense.0[j] as f64 - mean).abs() < 1e-4 * (1.0 + mean.abs()), "dense {j} mean {} vs {mean}", st.dense.0[j]);
        assert!((st.dense.1[j] as f64 - var).abs() < 1e-3 * (1.0 + var), "dense {j} variance {} vs {var}", st.dense.1[j]);
    }
    // Each field's most used row and its share, counted over the whole shard.
    for f in [0, 9, NUM_CATS - 1] {
        let mut counts = std::collections::HashMap::new();
        for i in 0..n {
            *counts.entry(data.categories(i)[f]).or_insert(0usize) += 1;
        }
        let (&top, &c) = counts.iter().max_by_key(|(b, c)| (**c, std::cmp::Reverse(**b))).unwrap();
        assert_eq!(st.ids.ids[f][0], (f * cfg.buckets) as i32 + top as i32, "field {f}");
        assert!((st.ids.share[f][0] as f64 - c as f64 / n as f64).abs() < 1e-6);
        assert!(st.ids.share[f].windows(2).all(|w| w[0] >= w[1]), "field {f}: most used first");
        assert_eq!(st.ids.ids[f].len(), counts.len().min(1024), "field {f}: every used row, up to 1024");
    }
    // Each hidden layer's covariance: its diagonal is the layer's variance.
    for (l, (_, var)) in st.hidden.iter().enumerate() {
        let w = var.len();
        assert_eq!(st.cov[l].len(), w * w);
        for (u, v) in var.iter().enumerate() {
            assert!((st.cov[l][u * w + u] - v).abs() <= 1e-4 * (1.0 + v), "layer {l} unit {u}");
        }
    }
    // The hidden moments are those of the saved weights on those rows.
    let (ids, dense, _) = data.batch(&(0..m).collect::<Vec<_>>()).unwrap();
    let mut g = Graph::no_grad();
    let (_, hidden) = model.forward_layers(&mut g, &store, &ids, &dense).unwrap();
    let top = g.value(hidden[1]).to_vec_f32().unwrap();
    let w = model.hidden_widths()[1];
    for u in [0, w - 1] {
        let mean: f64 = (0..m).map(|r| top[r * w + u] as f64).sum::<f64>() / m as f64;
        assert!((st.hidden[1].0[u] as f64 - mean).abs() < 1e-4 * (1.0 + mean.abs()), "unit {u}: {} vs {mean}", st.hidden[1].0[u]);
    }
}

#[test]
fn the_relaxed_forward_pass_on_one_hot_rows_is_the_models_forward_pass() {
    let d = common::Scratch::new("dfkd", "relaxed");
    let path = teacher(&d);
    let (cfg, model, store) = load_checkpoint(&path).unwrap();
    let file = std::fs::read_dir(d.join("cache")).unwrap().map(|e| e.unwrap().path()).find(|p| p.is_dir()).unwrap().join("train.tsv");
    let (data, _) = cached(&file, cfg.buckets, cfg.on_bad_line, &d.join("cache")).unwrap();
    let rows: Vec<usize> = (0..37).map(|i| i * 101).collect();
    let (ids, dense, _) = data.batch(&rows).unwrap();
    // Three candidates per field: the row's own category beside two other rows of the table.
    let idv = ids.i32s().unwrap();
    let n = rows.len();
    let p = 3;
    let cand: Vec<Vec<i32>> = (0..NUM_CATS).map(|f| vec![idv[f], (f * cfg.buckets + 7) as i32, (f * cfg.buckets + 11) as i32]).collect();
    // Row r's own category in slot r % 3 of each field, chosen one-hot; one row at a time (each
    // with its candidate table).
    let mut choice = vec![0f32; n * NUM_CATS * p];
    for r in 0..n {
        for f in 0..NUM_CATS {
            choice[r * NUM_CATS * p + f * p + r % p] = 1.0;
        }
    }
    let mut g = Graph::no_grad();
    let (want, hidden) = model.forward_layers(&mut g, &store, &ids, &dense).unwrap();
    let (want, want_top) = (g.value(want).to_vec_f32().unwrap(), g.value(hidden[1]).to_vec_f32().unwrap());
    let dv = dense.f32s().unwrap();
    let w = model.hidden_widths()[1];
    for r in 0..n {
        let c: Vec<Vec<i32>> = (0..NUM_CATS)
            .map(|f| {
                let mut c = cand[f].clone();
                c[r % p] = idv[r * NUM_CATS + f];
                c
            })
            .collect();
        let rows_t = model.candidate_rows(&store, &c).unwrap();
        let mut g = Graph::new();
        let ch = g.leaf(Tensor::from_f32(choice[r * NUM_CATS * p..(r + 1) * NUM_CATS * p].to_vec(), &[1, NUM_CATS * p]).unwrap());
        let v = g.leaf(Tensor::from_f32(dv[r * DENSE_WIDTH..r * DENSE_WIDTH + NUM_INTS].to_vec(), &[1, NUM_INTS]).unwrap());
        let fl = g.leaf(Tensor::from_f32(dv[r * DENSE_WIDTH + NUM_INTS..(r + 1) * DENSE_WIDTH].to_vec(), &[1, NUM_INTS]).unwrap());
        let (l, hid) = model.forward_relaxed(&mut g, &store, ch, &rows_t, v, fl).unwrap();
        let got = g.value(l).to_vec_f32().unwrap()[0];
        assert!((got - want[r]).abs() <= 1e-5 * (1.0 + want[r].abs()), "row {r}: logit {got} vs {}", want[r]);
        let top = g.value(hid[1]).to_vec_f32().unwrap();
        for u in 0..w {
            assert!((top[u] - want_top[r * w + u]).abs() <= 1e-5 * (1.0 + top[u].abs()), "row {r} unit {u}");
        }
        // Gradients reach the inputs (the synthesis needs them), not the weights.
        let s = g.sum(l).unwrap();
        let grads = g.backward(s).unwrap();
        assert!(grads.get(ch).unwrap().to_vec_f32().unwrap().iter().any(|&x| x != 0.0));
        assert!(grads.get(v).is_some() && grads.get(fl).is_some());
    }
}

#[test]
fn every_method_distills_a_student_from_synthesised_rows_alone() {
    let d = common::Scratch::new("dfkd", "methods");
    let t = teacher(&d);
    let mut results = Vec::new();
    for (method, k) in [(DataFree::Fast, 2), (DataFree::Sequential, 2), (DataFree::Generator, 2), (DataFree::Inversion, 3)] {
        let mut s = student(&d, &format!("{method}"), &t, method, k, 150);
        // The joint-statistics term on one of them.
        s.dfkd_cov = if method == DataFree::Inversion { 1.0 } else { 0.0 };
        let r = criteo::train(&s).unwrap();
        let v = r.valid[0];
        let result: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join(format!("{method}/result.json"))).unwrap()).unwrap();
        assert_eq!(result["synthesis_batches"], 15, "{method}: one synthesis every 10 of 150 steps");
        assert_eq!(result["synthesised_rows"], 15 * 128);
        assert!(result["synthesis_s_per_1000_rows"].as_f64().unwrap() > 0.0);
        results.push((method, v));
    }
    // A model that knew only the click rate scores its entropy; every student learned more than
    // that from the rows it was given (the teacher scores about 0.50 here).
    let rate = 0.25f64;
    let chance = -(rate * rate.ln() + (1.0 - rate) * (1.0 - rate).ln());
    for (m, v) in &results {
        assert!(v.auc > 0.6, "{m}: AUC {} (the student learned nothing of the rows' order)", v.auc);
        assert!(v.log_loss < chance + 0.05, "{m}: log-loss {} against chance {chance:.4}", v.log_loss);
    }
}

#[test]
fn a_data_free_run_cut_in_two_by_a_resume_ends_with_the_same_weights_generator_and_bank() {
    let d = common::Scratch::new("dfkd", "resume");
    let t = teacher(&d);
    let whole = student(&d, "whole", &t, DataFree::Fast, 2, 60);
    criteo::train(&whole).unwrap();
    let mut first = student(&d, "cut", &t, DataFree::Fast, 2, 35);
    criteo::train(&first).unwrap();
    first.steps = 60;
    first.resume = Some(d.join("cut/checkpoint.safetensors"));
    criteo::train(&first).unwrap();
    let a = Checkpoint::load(&d.join("whole/checkpoint.safetensors")).unwrap();
    let b = Checkpoint::load(&d.join("cut/checkpoint.safetensors")).unwrap();
    assert!(a.tensors.contains_key("dfkd.bank.ids") && a.tensors.contains_key("dfkd.gen.query.weight"));
    assert_eq!(a.tensors.keys().collect::<Vec<_>>(), b.tensors.keys().collect::<Vec<_>>());
    for (k, x) in &a.tensors {
        let y = &b.tensors[k];
        let same = match x.dtype() {
            codistill::DType::I32 => x.i32s().unwrap() == y.i32s().unwrap(),
            _ => x.to_vec_f32().unwrap() == y.to_vec_f32().unwrap(),
        };
        assert!(same, "{k} differs between the whole run and the resumed one");
    }
    assert_eq!(a.meta["dfkd_batches"], "6");
}

#[test]
fn bad_data_free_input_is_refused_by_name() {
    let d = common::Scratch::new("dfkd", "bad");
    let t = teacher(&d);
    let err = |c: &CriteoConfig| criteo::train(c).unwrap_err().to_string();
    // A teacher written without statistics (as before this feature): the error says how to get them.
    let mut ck = Checkpoint::load(&t).unwrap();
    ck.tensors.retain(|k, _| !k.starts_with("stats."));
    ck.meta.retain(|k, _| !k.starts_with("stats_"));
    let old = d.join("old.safetensors");
    ck.save(&old).unwrap();
    let e = err(&student(&d, "s1", &old, DataFree::Fast, 2, 20));
    assert!(e.contains("old.safetensors") && e.contains("feature statistics") && e.contains("record-stats"), "{e}");
    // record-stats writes them back from the training file: the very statistics the run recorded.
    let file = std::fs::read_dir(d.join("cache")).unwrap().map(|e| e.unwrap().path()).find(|p| p.is_dir()).unwrap().join("train.tsv");
    let back = d.join("back.safetensors");
    codistill::tasks::ctr::stats::record_into(&old, &file, &d.join("cache"), &back).unwrap();
    let (a, b) = (Checkpoint::load(&t).unwrap(), Checkpoint::load(&back).unwrap());
    for (k, x) in a.tensors.iter().filter(|(k, _)| k.starts_with("stats.")) {
        let y = &b.tensors[k];
        let same = if x.dtype() == codistill::DType::I32 { x.i32s().unwrap() == y.i32s().unwrap() } else { x.to_vec_f32().unwrap() == y.to_vec_f32().unwrap() };
        assert!(same, "{k} differs between the run's record and record-stats");
    }
    assert_eq!(a.meta["stats_click_rate"], b.meta["stats_click_rate"]);
    let e = codistill::tasks::ctr::stats::record_into(&old, &d.join("missing.tsv"), &d.join("cache"), &d.join("x.safetensors")).unwrap_err().to_string();
    assert!(e.contains("missing.tsv"), "{e}");
    // A teacher whose statistics lack the covariances, with the covariance term asked for.
    let mut ck = Checkpoint::load(&t).unwrap();
    ck.tensors.retain(|k, _| !k.ends_with(".cov"));
    let nocov = d.join("nocov.safetensors");
    ck.save(&nocov).unwrap();
    let mut s = student(&d, "s7", &nocov, DataFree::Inversion, 2, 20);
    s.dfkd_cov = 1.0;
    let e = err(&s);
    assert!(e.contains("dfkd_cov") && e.contains("record-stats"), "{e}");
    let e = err(&student(&d, "s2", &t, DataFree::Fast, 0, 20));
    assert!(e.contains("dfkd_steps"), "k = 0: {e}");
    let mut s = student(&d, "s3", &t, DataFree::Fast, 2, 20);
    s.dfkd_bank = 0;
    let e = err(&s);
    assert!(e.contains("dfkd_bank") && e.contains("empty bank"), "{e}");
    let mut s = student(&d, "s4", &t, DataFree::Inversion, 2, 20);
    s.teacher = Paths(vec![t.clone(), t.clone()]);
    let e = err(&s);
    assert!(e.contains("exactly one --teacher"), "{e}");
    let mut s = student(&d, "s5", &t, DataFree::Fast, 2, 20);
    s.teacher = Paths(Vec::new());
    let e = err(&s);
    assert!(e.contains("--teacher"), "{e}");
    let mut s = student(&d, "s6", &t, DataFree::Fast, 2, 20);
    s.dfkd_click_rate = 1.5;
    let e = err(&s);
    assert!(e.contains("dfkd_click_rate"), "{e}");
    // Nothing was written by a refused run.
    for n in ["s1", "s2", "s3", "s4", "s5", "s6", "s7"] {
        assert!(!d.join(n).join("checkpoint.safetensors").exists(), "{n}");
    }
}
