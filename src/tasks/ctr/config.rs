//! The click model's options: its own keys and the shared ones.

use crate::data::criteo::OnBadLine;
use crate::Result;
use std::path::PathBuf;

crate::config_table! {
    /// Options of `codistill criteo train`: the click model's own keys, and those every task
    /// shares ([`RunOptions`](crate::train::RunOptions)). Every key can be set in a TOML file
    /// (`--config`) and overridden on the command line.
    pub struct CriteoConfig {
        /// Training file in the Criteo TSV format, plain or gzip (none: the built-in synthetic log)
        train: Option<PathBuf> = None,
        /// Validation file (none: hold out the last valid_fraction of the training rows)
        valid: Option<PathBuf> = None,
        /// Without a validation file, the fraction of training rows held out (the last ones)
        valid_fraction: f32 = 0.1,
        /// Bad lines: stop (error naming file, line and column) or skip (counted and reported)
        on_bad_line: OnBadLine = OnBadLine::Stop,
        /// Hash buckets per categorical field
        buckets: usize = 65536,
        /// Embedding width per field
        emb_dim: usize = 8,
        /// Hidden layer widths of the MLP, comma-separated
        mlp: String = "128,64".to_string(),
        /// Examples per batch
        batch: usize = 512,
        /// Passes over the training rows (shuffled each epoch)
        epochs: usize = 1,
        /// Validate on at most this many rows (0: all)
        eval_rows: usize = 0,
        /// Synthetic log: training rows (the validation file gets a tenth)
        synthetic_rows: usize = 1000000,
        /// Synthetic log: multiplier of the Criteo-like field cardinalities
        synthetic_scale: f32 = 0.1,
    }
    shared {
        out = PathBuf::from("runs/criteo"),
    }
}

/// The format string of the task's checkpoints.
pub const FORMAT: &str = "codistill-criteo-v1";

/// A checkpoint of the task, checked, and its config.
pub fn checkpoint_config(ck: &crate::checkpoint::Checkpoint, path: &std::path::Path) -> Result<CriteoConfig> {
    crate::train::checkpoint_config(ck, path, FORMAT, "a click model")
}
