//! `codistill export` and `codistill import`: a checkpoint exported as a PyTorch state dict and
//! imported back scores exactly as before; the export rebuilt from docs/pytorch.md's formulas in
//! pure Python (scripts/check_pytorch_export.py, where python3 is found) matches codistill's own
//! evaluation; a state dict with a missing or misshapen tensor is refused, naming it.

mod common;
use codistill::tasks::pytorch::{export, import_ctr, import_lm};
use codistill::train::criteo::{self, CriteoConfig};
use codistill::train::lm::{self, LmConfig};
use std::path::Path;

fn tmp(name: &str) -> common::Scratch {
    common::Scratch::new("pt", name)
}

/// The loss scripts/check_pytorch_export.py computes, or None without python3.
fn python_loss(kind: &str, export: &Path, data: &Path) -> Option<f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check_pytorch_export.py");
    let out = std::process::Command::new("python3").arg(script).arg(kind).arg(export).arg(data).output().ok()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["loss"].as_f64()
}

#[test]
fn language_model_export_import_and_a_pure_python_rebuild_agree() {
    use codistill::data::synthetic::{write_markov_corpus, MarkovSource};
    let d = tmp("lm");
    write_markov_corpus(&d.join("data"), &MarkovSource::new(30, 1, 3, 5), [8_000, 1_000, 1_000], 5).unwrap();
    let mut c = LmConfig::default();
    (c.data, c.cache, c.out, c.device, c.min_count) = (Some(d.join("data")), d.join("cache"), d.join("out"), codistill::train::DeviceChoice::Cpu, 1);
    (c.emb_dim, c.hidden, c.layers, c.batch, c.bptt, c.steps, c.eval_every) = (8, 12, 2, 4, 10, 60, 60);
    lm::train(&c).unwrap();
    let ckpt = c.out.join("checkpoint.safetensors");
    assert_eq!(export(&ckpt, &d.join("lm.safetensors")).unwrap(), "language model");
    let cfg = import_lm(&d.join("lm.safetensors"), None, &d.join("back.safetensors")).unwrap();
    assert_eq!((cfg.emb_dim, cfg.hidden, cfg.layers), (8, 12, 2));
    // A short text: the pure-Python LSTM is slow.
    let text: String = std::fs::read_to_string(d.join("data/valid.txt")).unwrap().lines().take(30).map(|l| format!("{l}\n")).collect();
    std::fs::write(d.join("short.txt"), text).unwrap();
    let ours = lm::eval_checkpoint(&ckpt, Some(&d.join("short.txt")), &c.cache, 0, 1).unwrap().loss;
    let back = lm::eval_checkpoint(&d.join("back.safetensors"), Some(&d.join("short.txt")), &c.cache, 0, 1).unwrap().loss;
    assert_eq!(ours, back, "the imported export scores differently");
    match python_loss("lm", &d.join("lm.safetensors"), &d.join("short.txt")) {
        Some(py) => {
            eprintln!("pure-Python rebuild {py:.8}, codistill {ours:.8}");
            assert!((py - ours).abs() < 1e-5 * ours, "PyTorch-layout rebuild {py} vs codistill {ours}")
        }
        None => eprintln!("python3 not found: the pure-Python rebuild was not run"),
    }
    // A state dict lacking a tensor, or with one of another shape, is refused with its name.
    let mut sd = codistill::checkpoint::Checkpoint::load_plain(&d.join("lm.safetensors")).unwrap();
    sd.tensors.remove("lstm.weight_hh_l1");
    sd.save(&d.join("missing.safetensors")).unwrap();
    let e = import_lm(&d.join("missing.safetensors"), None, &d.join("x.safetensors")).unwrap_err().to_string();
    assert!(e.contains("lstm.weight_hh_l1"), "{e}");
    let mut sd = codistill::checkpoint::Checkpoint::load_plain(&d.join("lm.safetensors")).unwrap();
    sd.tensors.insert("output.bias".into(), codistill::Tensor::zeros(&[7]));
    sd.save(&d.join("shape.safetensors")).unwrap();
    let e = import_lm(&d.join("shape.safetensors"), None, &d.join("x.safetensors")).unwrap_err().to_string();
    assert!(e.contains("output.bias") && e.contains("[7]"), "{e}");
}

#[test]
fn click_model_export_import_and_a_pure_python_rebuild_agree() {
    let d = tmp("ctr");
    let mut c = CriteoConfig::default();
    (c.cache, c.out, c.device) = (d.join("cache"), d.join("out"), codistill::train::DeviceChoice::Cpu);
    (c.synthetic_scale, c.synthetic_rows, c.buckets, c.mlp) = (0.002, 5_000, 256, "16,8".into());
    criteo::train(&c).unwrap();
    let ckpt = c.out.join("checkpoint.safetensors");
    assert_eq!(export(&ckpt, &d.join("ctr.safetensors")).unwrap(), "click model");
    let cfg = import_ctr(&d.join("ctr.safetensors"), &d.join("back.safetensors")).unwrap();
    assert_eq!((cfg.buckets, cfg.emb_dim, cfg.mlp.as_str()), (256, 8, "16,8"));
    // The shared real sample when it is there, else the synthetic validation file.
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/criteo/sample.tsv");
    let file = if shared.exists() {
        shared
    } else {
        std::fs::read_dir(&c.cache).unwrap().map(|e| e.unwrap().path()).find(|p| p.to_string_lossy().contains("synthetic-criteo")).unwrap().join("valid.tsv")
    };
    let ours = criteo::eval_checkpoint(&ckpt, &file, None, &c.cache).unwrap().0;
    let back = criteo::eval_checkpoint(&d.join("back.safetensors"), &file, None, &c.cache).unwrap().0;
    assert_eq!(ours, back, "the imported export scores differently");
    if file.to_string_lossy().contains("sample.tsv") {
        match python_loss("criteo", &d.join("ctr.safetensors"), &file) {
            Some(py) => {
                eprintln!("pure-Python rebuild {py:.8}, codistill {:.8}", ours.log_loss);
                assert!((py - ours.log_loss).abs() < 1e-5 * ours.log_loss, "PyTorch-layout rebuild {py} vs codistill {}", ours.log_loss)
            }
            None => eprintln!("python3 not found: the pure-Python rebuild was not run"),
        }
    }
    let mut sd = codistill::checkpoint::Checkpoint::load_plain(&d.join("ctr.safetensors")).unwrap();
    sd.tensors.remove("dense.weight");
    sd.save(&d.join("missing.safetensors")).unwrap();
    let e = import_ctr(&d.join("missing.safetensors"), &d.join("x.safetensors")).unwrap_err().to_string();
    assert!(e.contains("dense.weight"), "{e}");
}
