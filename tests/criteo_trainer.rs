//! The Criteo trainer: it learns a synthetic log to within 2% of the hidden model's log-loss, the
//! shared real sample parses without losing a field, and every kind of bad input is either handled
//! as the format allows or rejected with file, line and column, or skipped and counted.

mod common;
use codistill::data::criteo::{read_rows, OnBadLine, Row};
use codistill::train::criteo::{self, CriteoConfig};
use std::io::Write;
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> common::Scratch {
    common::Scratch::new("ct", name)
}

#[test]
fn small_synthetic_log_is_learned_to_within_two_percent_of_the_truth() {
    let d = tmp("learn");
    let mut c = CriteoConfig::default();
    (c.cache, c.out) = (d.join("cache"), d.join("out"));
    (c.synthetic_scale, c.synthetic_rows, c.buckets) = (0.002, 800_000, 4096);
    (c.lr, c.lr_decay_start, c.lr_decay_every) = (0.004, 800, 300);
    c.device = codistill::train::DeviceChoice::Cpu;
    let s = criteo::train(&c).unwrap();
    let v = s.valid[0];
    let truth = s.valid_truth.expect("the synthetic log records its truth");
    let gap = v.log_loss / truth.bayes_log_loss - 1.0;
    println!(
        "validation log-loss {:.5} vs hidden model {:.5}: {:+.2}%; AUC {:.4}; calibration {:.3}",
        v.log_loss,
        truth.bayes_log_loss,
        100.0 * gap,
        v.auc,
        v.calibration
    );
    assert!(gap < 0.02, "log-loss {:.5} is {:.2}% above the hidden model's {:.5}", v.log_loss, 100.0 * gap, truth.bayes_log_loss);
    assert!((0.9..1.1).contains(&v.calibration), "calibration {}", v.calibration);
    // criteo eval reproduces the run's own validation figure from the checkpoint
    let valid =
        std::fs::read_dir(&c.cache).unwrap().map(|e| e.unwrap().path()).find(|p| p.to_string_lossy().contains("synthetic-criteo")).unwrap().join("valid.tsv");
    let (e, churn) = criteo::eval_checkpoint(&c.out.join("checkpoint.safetensors"), &valid, Some(&c.out.join("checkpoint.safetensors")), &c.cache).unwrap();
    assert!((e.log_loss - v.log_loss).abs() < 1e-9, "{} vs {}", e.log_loss, v.log_loss);
    assert_eq!(churn, Some(0.0), "a model has no churn against itself");
}

#[test]
fn shared_sample_parses_without_losing_a_field() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/criteo/sample.tsv");
    if !path.exists() {
        assert!(std::env::var_os("CI").is_none(), "CI runs with ../shared beside the repository, but {} is missing", path.display());
        eprintln!("skipped: {} is not here (it is beside the repository in CI)", path.display());
        return;
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let mut rows = Vec::new();
    let stats = read_rows(&path, OnBadLine::Stop, |r| {
        rows.push(r);
        Ok(())
    })
    .unwrap();
    assert_eq!((stats.rows, stats.skipped), (200, 0));
    for (i, (row, line)) in rows.iter().zip(text.lines()).enumerate() {
        assert_eq!(&row.to_line(), line, "line {} does not round-trip", i + 1);
    }
    let missing = rows.iter().map(|r| r.ints.iter().filter(|v| v.is_none()).count() + r.cats.iter().filter(|v| v.is_none()).count()).sum::<usize>();
    assert!(missing > 0, "the sample has empty fields; they must parse as missing");
}

fn good_line(label: u8) -> String {
    let mut f = vec![label.to_string()];
    f.extend((0..13).map(|i| if i == 2 { String::new() } else { (i * 3).to_string() }));
    f.extend((0..26).map(|i| if i == 5 { String::new() } else { format!("{:08x}", 0xabc0_0000u32 + i) }));
    f.join("\t")
}

fn with_field(col: usize, value: &str) -> String {
    let line = good_line(1);
    let mut f: Vec<&str> = line.split('\t').collect();
    f[col - 1] = value;
    f.join("\t")
}

fn write(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    p
}

#[test]
fn each_bad_line_is_rejected_with_file_line_and_column_or_skipped_and_counted() {
    let d = tmp("bad");
    let cases = [
        ("wrong field count", good_line(0).rsplit_once('\t').unwrap().0.to_string(), "column 40 (C26)", "found 39"),
        ("non-integer I-column", with_field(4, "12x"), "column 4 (I3)", "not an integer"),
        ("non-hex category", with_field(17, "zz00ff11"), "column 17 (C3)", "hex"),
        ("label other than 0/1", with_field(1, "2"), "column 1 (label)", "0 or 1"),
    ];
    for (what, bad, column, message) in cases {
        let p = write(&d, "bad.tsv", &[good_line(0), good_line(1), bad, good_line(0)]);
        let e = read_rows(&p, OnBadLine::Stop, |_| Ok(())).unwrap_err().to_string();
        assert!(e.contains("bad.tsv:3") && e.contains(column) && e.contains(message), "{what}: {e}");
        let mut n = 0;
        let stats = read_rows(&p, OnBadLine::Skip, |_| {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!((stats.rows, stats.skipped, n), (3, 1, 3), "{what}");
        assert!(stats.examples[0].contains("bad.tsv:3"), "{what}: {:?}", stats.examples);
    }
}

#[test]
fn crlf_line_ends_are_handled_as_the_format_allows() {
    let d = tmp("crlf");
    let p = d.join("crlf.tsv");
    std::fs::write(&p, format!("{}\r\n{}\r\n", good_line(0), good_line(1))).unwrap();
    let mut rows = Vec::new();
    read_rows(&p, OnBadLine::Stop, |r| {
        rows.push(r);
        Ok(())
    })
    .unwrap();
    assert_eq!(rows, vec![Row::parse(good_line(0).as_bytes()).unwrap(), Row::parse(good_line(1).as_bytes()).unwrap()]);
}

fn gzip(lines: &[String]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for l in lines {
        writeln!(enc, "{l}").unwrap();
    }
    enc.finish().unwrap()
}

#[test]
fn gzip_is_read_and_a_truncated_gzip_is_an_error_naming_the_file() {
    let d = tmp("gz");
    let lines: Vec<String> = (0..2000).map(|i| good_line((i % 2) as u8)).collect();
    let bytes = gzip(&lines);
    let p = d.join("log.tsv.gz");
    std::fs::write(&p, &bytes).unwrap();
    let stats = read_rows(&p, OnBadLine::Stop, |_| Ok(())).unwrap();
    assert_eq!(stats.rows, 2000);
    let t = d.join("cut.tsv.gz");
    std::fs::write(&t, &bytes[..bytes.len() / 2]).unwrap();
    let e = read_rows(&t, OnBadLine::Skip, |_| Ok(())).unwrap_err().to_string();
    assert!(e.contains("cut.tsv.gz") && e.contains("gzip"), "{e}");
}

#[test]
fn trainer_skips_bad_lines_when_asked_and_stops_otherwise() {
    let d = tmp("policy");
    let mut lines: Vec<String> = (0..3000).map(|i| good_line((i % 3 == 0) as u8)).collect();
    lines[10] = with_field(20, "nothex!!");
    let p = write(&d, "train.tsv", &lines);
    let mut c = CriteoConfig::default();
    (c.train, c.cache, c.out, c.buckets, c.device) = (Some(p), d.join("cache"), d.join("out"), 64, codistill::train::DeviceChoice::Cpu);
    let e = criteo::train(&c).unwrap_err().to_string();
    assert!(e.contains("train.tsv:11") && e.contains("column 20 (C6)"), "{e}");
    c.on_bad_line = OnBadLine::Skip;
    let s = criteo::train(&c).unwrap();
    assert_eq!(s.valid.len(), 1, "the held-out tail is validated");
    let cache = std::fs::read_dir(d.join("cache")).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().map(|e| e == "stats").unwrap_or(false)).unwrap();
    assert_eq!(std::fs::read_to_string(cache).unwrap().trim(), "2999 1", "rows and skipped lines are recorded");
}

/// A run directory has one writer: while a trainer holds `--out`, a second is refused with the
/// holder's process id, and the first finishes unharmed; temp files that killed runs left are
/// removed at start (and said so).
#[test]
fn a_second_trainer_on_one_out_is_refused_and_stale_temp_files_are_removed() {
    let d = tmp("lock");
    let mut c = CriteoConfig::default();
    (c.cache, c.out, c.device) = (d.join("cache"), d.join("out"), codistill::train::DeviceChoice::Cpu);
    (c.synthetic_scale, c.synthetic_rows, c.buckets, c.epochs) = (0.002, 60_000, 512, 3);
    criteo::prepare_data(&c).unwrap();
    std::fs::create_dir_all(&c.out).unwrap();
    let stale = c.out.join("checkpoint.tmp4194301");
    std::fs::write(&stale, b"half a checkpoint").unwrap();
    let first = std::process::Command::new(env!("CARGO_BIN_EXE_codistill"))
        .args(["criteo", "train", "--device", "cpu", "--synthetic-scale", "0.002", "--synthetic-rows", "60000", "--buckets", "512", "--epochs", "3", "--cache"])
        .arg(&c.cache)
        .arg("--out")
        .arg(&c.out)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lock = c.out.join(".codistill.lock");
    let t = std::time::Instant::now();
    while std::fs::read_to_string(&lock).map(|s| s.trim() != first.id().to_string()).unwrap_or(true) {
        assert!(t.elapsed().as_secs() < 60, "the first trainer never took the lock");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let e = criteo::train(&c).unwrap_err().to_string();
    assert!(e.contains("another trainer is writing") && e.contains(&first.id().to_string()), "{e}");
    let out = first.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stale.exists() && stderr.contains("checkpoint.tmp4194301"), "the stale temp file was not removed: {stderr}");
    // Free again once the first has finished.
    criteo::train(&CriteoConfig { epochs: 1, ..c.clone() }).unwrap();
}

/// Sizes that cannot work are refused before anything is allocated or trained, each with the
/// option named: a zero embedding width, more shards than rows, a model larger than memory.
#[test]
fn impossible_sizes_are_refused_with_the_option_named() {
    let d = tmp("sizes");
    let mut c = CriteoConfig::default();
    (c.cache, c.out, c.device) = (d.join("cache"), d.join("out"), codistill::train::DeviceChoice::Cpu);
    (c.synthetic_scale, c.synthetic_rows, c.buckets) = (0.002, 2_000, 512);
    let e = criteo::train(&CriteoConfig { emb_dim: 0, ..c.clone() }).unwrap_err().to_string();
    assert!(e.contains("emb_dim must be positive") || e.contains("emb_dim must be"), "{e}");
    let e = criteo::train(&CriteoConfig { synthetic_rows: 10, shards: 16, shard: 15, ..c.clone() }).unwrap_err().to_string();
    assert!(e.contains("16 shards") && e.contains("at least one row"), "{e}");
    // 26 fields x 50M buckets x 64 wide: ~83 billion weights, past any machine that runs this.
    let e = criteo::train(&CriteoConfig { buckets: 50_000_000, emb_dim: 64, ..c.clone() }).unwrap_err().to_string();
    assert!(e.contains("GiB") && e.contains("--buckets"), "{e}");
    let mut l = codistill::train::lm::LmConfig::default();
    (l.cache, l.out, l.device, l.synthetic_tokens, l.hidden, l.steps) =
        (d.join("cache"), d.join("lm"), codistill::train::DeviceChoice::Cpu, 5_000, 10_000_000, 2);
    let e = codistill::train::lm::train(&l).unwrap_err().to_string();
    assert!(e.contains("GiB") && e.contains("--hidden"), "{e}");
    assert!(!d.join("out/checkpoint.safetensors").exists() && !d.join("lm/checkpoint.safetensors").exists());
}

/// The gradient noise scale of a trained click model: finite and positive, the same when measured
/// twice (the same batches, from the checkpoint's position), larger with more of training done
/// (the gradient shrinks as the loss falls; McCandlish et al. 2018, figure 5), on a best
/// checkpoint too; fewer than two batches is refused.
#[test]
fn noise_scale_of_click_checkpoints() {
    use codistill::tasks::ctr::CtrTask;
    use codistill::train::noise::noise_scale;
    let d = tmp("noise");
    let mut c = CriteoConfig::default();
    (c.cache, c.out, c.device) = (d.join("cache"), d.join("early"), codistill::train::DeviceChoice::Cpu);
    // The same hidden model (the seed and scale fix it), 16 steps of 256 rows for the early model,
    // 313 for the late one.
    (c.synthetic_scale, c.synthetic_rows, c.buckets, c.batch, c.eval_every) = (0.002, 4_000, 1024, 256, 0);
    criteo::train(&c).unwrap();
    (c.out, c.synthetic_rows) = (d.join("late"), 80_000);
    criteo::train(&c).unwrap();
    let dev = codistill::tensor::Device::Cpu;
    let early = noise_scale::<CtrTask>(&d.join("early/checkpoint.safetensors"), 32, dev).unwrap();
    let late = noise_scale::<CtrTask>(&d.join("late/checkpoint.safetensors"), 32, dev).unwrap();
    eprintln!("B_simple {:.0} rows at step {}, {:.0} at step {}", early.b_simple, early.step, late.b_simple, late.step);
    assert!(early.b_simple.is_finite() && early.b_simple > 0.0 && late.b_simple.is_finite(), "{early:?} {late:?}");
    assert!(late.b_simple > early.b_simple, "noise scale fell with training: {early:?} then {late:?}");
    assert_eq!(noise_scale::<CtrTask>(&d.join("late/checkpoint.safetensors"), 32, dev).unwrap(), late);
    assert!(noise_scale::<CtrTask>(&d.join("late/best.safetensors"), 32, dev).unwrap().b_simple > 0.0);
    let e = noise_scale::<CtrTask>(&d.join("late/checkpoint.safetensors"), 1, dev).unwrap_err().to_string();
    assert!(e.contains("--batches") && e.contains("at least 2"), "{e}");
}

/// An option that train would ignore is refused: the independent control belongs to experiment.
#[test]
fn train_refuses_the_experiments_independent_control() {
    let d = tmp("ind");
    let mut c = CriteoConfig::default();
    (c.cache, c.out, c.device, c.independent_control) = (d.join("cache"), d.join("out"), codistill::train::DeviceChoice::Cpu, true);
    let e = criteo::train(&c).unwrap_err().to_string();
    assert!(e.contains("independent_control") && e.contains("experiment"), "{e}");
    assert!(!d.join("out/metrics.jsonl").exists());
}
