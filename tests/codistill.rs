//! Codistillation in the Criteo trainer: models in one process distill from each other's stale
//! checkpoints and agree more than independently trained ones; two processes codistill through a
//! shared directory and both finish.

#![allow(clippy::field_reassign_with_default)] // configs are built field by field, as a user would

use codistill::train::criteo::{self, CriteoConfig};
use std::path::PathBuf;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("codistill-cd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn small(dir: &std::path::Path) -> CriteoConfig {
    let mut c = CriteoConfig::default();
    (c.cache, c.out, c.device) = (dir.join("cache"), dir.join("out"), codistill::train::DeviceChoice::Cpu);
    (c.synthetic_scale, c.synthetic_rows, c.buckets) = (0.002, 200_000, 4096);
    (c.models, c.burn_in, c.exchange_every) = (2, 100, 50);
    c
}

#[test]
fn codistilled_models_agree_more_than_independent_ones() {
    let d = tmp("churn");
    let mut c = small(&d);
    c.distill_weight = 0.5;
    let co = criteo::train(&c).unwrap();
    c.out = d.join("independent");
    c.distill_weight = 0.0;
    let ind = criteo::train(&c).unwrap();
    let (a, b) = (co.churn.unwrap(), ind.churn.unwrap());
    println!("churn: codistilled {a:.5}, independent {b:.5}");
    assert!(a < 0.9 * b, "codistilled churn {a:.5} is not clearly below independent churn {b:.5}");
    // Teachers were exchanged, and no teacher was staler than one exchange period.
    let metrics = std::fs::read_to_string(d.join("out/metrics.jsonl")).unwrap();
    let teachers: Vec<&str> = metrics.lines().filter(|l| l.contains("\"event\":\"teacher\"")).collect();
    assert!(teachers.len() >= 2 * (co.steps as usize - 100) / 50 - 2, "{} teacher swaps", teachers.len());
    for l in &teachers {
        let s: u64 = l.split("\"staleness\":").nth(1).unwrap().split(',').next().unwrap().parse().unwrap();
        assert!(s <= 50, "staleness {s} beyond exchange_every: {l}");
    }
    assert!(!std::fs::read_to_string(d.join("independent/metrics.jsonl")).unwrap().contains("\"teacher\""));
}

#[test]
fn two_processes_codistill_through_a_directory_and_both_finish() {
    let d = tmp("procs");
    let c = small(&d);
    // Build the shared synthetic log once, so both processes start from the same cache.
    let mut warm = c.clone();
    (warm.models, warm.epochs, warm.out) = (1, 1, d.join("warm"));
    warm.synthetic_rows = c.synthetic_rows;
    criteo::prepare_data(&warm).unwrap();
    let xdir = d.join("exchange");
    let spawn = |rank: usize| {
        std::process::Command::new(env!("CARGO_BIN_EXE_codistill"))
            .args(["criteo", "train", "--device", "cpu", "--models", "1", "--world", "2", "--rank", &rank.to_string()])
            .args(["--synthetic-scale", "0.002", "--synthetic-rows", "200000", "--buckets", "4096", "--burn-in", "100", "--exchange-every", "50"])
            .arg("--cache")
            .arg(&c.cache)
            .arg("--exchange-dir")
            .arg(&xdir)
            .arg("--out")
            .arg(d.join(format!("rank{rank}")))
            .output()
            .unwrap()
    };
    let (a, b) = std::thread::scope(|s| {
        let ha = s.spawn(|| spawn(0));
        let hb = s.spawn(|| spawn(1));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    for (rank, out) in [(0, &a), (1, &b)] {
        assert!(out.status.success(), "rank {rank} failed: {}", String::from_utf8_lossy(&out.stderr));
        let metrics = std::fs::read_to_string(d.join(format!("rank{rank}/metrics.jsonl"))).unwrap();
        let peer = 1 - rank;
        assert!(metrics.contains(&format!("\"teacher\":{peer}")), "rank {rank} never received a checkpoint from rank {peer}:\n{metrics}");
    }
    assert!(xdir.join("model-0.safetensors").exists() && xdir.join("model-1.safetensors").exists());
}

#[test]
fn language_models_codistill_in_one_process() {
    use codistill::data::synthetic::{write_markov_corpus, MarkovSource};
    use codistill::train::lm::{self, LmConfig};
    let d = tmp("lm");
    write_markov_corpus(&d.join("data"), &MarkovSource::new(30, 1, 3, 5), [24_000, 3_000, 3_000], 5).unwrap();
    let mut c = LmConfig::default();
    (c.data, c.cache, c.out, c.device, c.min_count) = (Some(d.join("data")), d.join("cache"), d.join("co"), codistill::train::DeviceChoice::Cpu, 1);
    (c.emb_dim, c.hidden, c.layers, c.batch, c.bptt) = (8, 16, 1, 4, 10);
    (c.steps, c.eval_every, c.log_every, c.checkpoint_every) = (120, 120, 20, 120);
    (c.models, c.burn_in, c.exchange_every, c.distill_weight, c.temperature) = (2, 40, 20, 0.5, 2.0);
    let co = lm::train(&c).unwrap();
    assert_eq!(co.per_model.len(), 2);
    assert!(co.ensemble_valid.is_some() && co.per_model.iter().all(|(v, t)| v.is_some() && t.is_some()));
    let metrics = std::fs::read_to_string(d.join("co/metrics.jsonl")).unwrap();
    let swaps = metrics.lines().filter(|l| l.contains("\"event\":\"teacher\"")).count();
    assert_eq!(swaps, 2 * 4, "each model takes its peer's snapshots of steps 40, 60, 80 and 100:\n{metrics}");
    assert!(d.join("co/model-0/checkpoint.safetensors").exists() && d.join("co/model-1/checkpoint.safetensors").exists());
    c.out = d.join("independent");
    c.distill_weight = 0.0;
    let ind = lm::train(&c).unwrap();
    assert_ne!(co.per_model[0].0, ind.per_model[0].0, "the distillation term changed nothing");
}
