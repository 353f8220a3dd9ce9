//! Helpers shared by the integration tests.

#[path = "../../src/testdir.rs"]
mod testdir;
pub use testdir::Scratch;

use codistill::data::synthetic::{write_markov_corpus, MarkovSource};
use codistill::train::lm::LmConfig;

/// A CPU language model on a fresh Markov corpus in `d`, big enough that every threaded CPU path
/// splits: the output layer's products (1,120 x |V| x 256) past the GEMMs' serial limits, the
/// recurrent steps (32 x 1,024 x 256) past the packed kernels', the softmax over 1,120 rows.
/// Checkpointed and validated at `steps`.
#[allow(dead_code, clippy::field_reassign_with_default)] // not every test binary uses it; built field by field, as a user would
pub fn split_lm_config(d: &Scratch, steps: u64) -> LmConfig {
    let data = d.join("data");
    write_markov_corpus(&data, &MarkovSource::new(600, 1, 3, 5), [40_000, 4_000, 4_000], 5).unwrap();
    let mut c = LmConfig::default();
    c.data = Some(data);
    c.cache = d.join("cache");
    c.min_count = 1;
    (c.emb_dim, c.hidden, c.layers, c.batch, c.bptt) = (64, 256, 1, 32, 35);
    (c.steps, c.eval_every, c.log_every, c.checkpoint_every) = (steps, steps, 1, steps);
    c.device = codistill::train::DeviceChoice::Cpu;
    c
}

/// The raw value of `key` in each `train` event of a run's `metrics.jsonl`, in order (`null`
/// where the run wrote none).
#[allow(dead_code)] // not every test binary uses it
pub fn train_field(metrics: &std::path::Path, key: &str) -> Vec<String> {
    let needle = format!("\"{key}\":");
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"event\":\"train\""))
        .map(|l| l.split(needle.as_str()).nth(1).unwrap_or_else(|| panic!("no {key} in {l}")).split([',', '}']).next().unwrap().to_string())
        .collect()
}

/// The device-generic op tests' helpers.
#[allow(dead_code)]
pub mod dev;

/// The GPU test binaries' harness.
#[allow(dead_code)] // only the GPU test binaries use it
pub mod harness;
