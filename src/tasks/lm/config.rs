//! The language model's options: its own keys and the shared ones.

use crate::data::text::Tokenizer;
use crate::Result;
use std::path::PathBuf;

crate::config_table! {
    /// Options of `codistill lm train`: the language model's own keys, and those every task shares
    /// ([`RunOptions`](crate::train::RunOptions)). Every key can be set in a TOML file
    /// (`--config`) and overridden on the command line (`--hidden 650` for `hidden`).
    pub struct LmConfig {
        /// Directory with train.txt, valid.txt and test.txt (none: the built-in synthetic corpus)
        data: Option<PathBuf> = None,
        /// Training text file (overrides DATA/train.txt)
        train: Option<PathBuf> = None,
        /// Validation text file (overrides DATA/valid.txt)
        valid: Option<PathBuf> = None,
        /// Test text file (overrides DATA/test.txt)
        test: Option<PathBuf> = None,
        /// Tokenizer: word (whitespace words, `<unk>`, `<eos>` per line) or byte (any text)
        tokenizer: Tokenizer = Tokenizer::Word,
        /// Words seen fewer times than this in training become `<unk>` (4: Bengio et al.'s "3 or fewer" rule)
        min_count: usize = 4,
        /// Embedding width
        emb_dim: usize = 128,
        /// LSTM hidden units per layer
        hidden: usize = 256,
        /// LSTM layers
        layers: usize = 2,
        /// Dropout on embeddings, between layers and before the output projection
        dropout: f32 = 0.2,
        /// Sequences per batch (parallel lanes of the token stream)
        batch: usize = 32,
        /// Steps of truncated backpropagation through time per window
        bptt: usize = 35,
        /// Total training steps (windows), counting those before a resume
        steps: u64 = 3000,
        /// Validate on about this many tokens, the first windows of `batch` lanes spread over the validation file (0: the whole file)
        eval_tokens: usize = 0,
        /// Lanes of the test evaluation at the end: 1 scores the test file as one stream from a zero state, every token after the first (as a PyTorch loop over the file does); more are faster, each lane from a zero state and its first token unscored (0: batch)
        eval_lanes: usize = 1,
        /// Shards: 0 cuts the stream into contiguous pieces; B > 0 deals it out in blocks of B tokens, block b to shard b mod n, so that each shard samples the whole corpus
        shard_block: usize = 0,
        /// Codistillation: softmax temperature of the distillation term
        temperature: f32 = 1.0,
        /// How the temperature moves from the burn-in to the last step: constant, linear or cosine, toward temperature_final; logged as temperature in the train events
        temperature_schedule: crate::distill::Anneal = crate::distill::Anneal::Constant,
        /// The temperature at the last step with a linear or cosine temperature_schedule (default 1)
        temperature_final: Option<f32> = None,
        /// Data-free distillation: train on text sampled from the teachers (their averaged distribution, one token at a time, batch lanes) instead of a training file, with the teachers' logits as the soft targets; the vocabulary is the teachers', validation and test files are optional; one model; a resume continues on a fresh sample stream (seeded by the step), the weights, optimizer and step restored
        data_free: bool = false,
        /// Synthetic corpus (no data or train given): markov (a sparse Markov chain over words w0..wV) or ngram (an n-gram model fitted on synthetic_fit, e.g. Brown's training split: natural word statistics); both never repeat and report the exact entropy floor
        synthetic_source: SyntheticSource = SyntheticSource::Markov,
        /// Synthetic corpus: the word-level text the ngram source is fitted on
        synthetic_fit: Option<PathBuf> = None,
        /// Synthetic corpus: vocabulary size of the Markov source; for ngram, the fitted text's most frequent words kept (the rest `<unk>`; 0: all)
        synthetic_vocab: usize = 500,
        /// Synthetic corpus: order of the source, in tokens of context (2: an ngram source of trigrams)
        synthetic_order: usize = 2,
        /// Synthetic corpus: successors per context of the Markov source
        synthetic_branching: usize = 4,
        /// Synthetic corpus: training tokens (validation and test get a tenth each)
        synthetic_tokens: usize = 500000,
    }
    shared {
        clip = 5.0,
        eval_every = 500,
        log_every = 50,
        checkpoint_every = 1000,
        out = PathBuf::from("runs/lm"),
    }
}

/// Where the built-in synthetic corpus comes from (`synthetic_source`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyntheticSource {
    /// A sparse Markov chain over the words `w0..wV` ([`crate::data::synthetic::MarkovSource`]).
    #[default]
    Markov,
    /// An n-gram model fitted on a text ([`crate::data::ngram::NgramSource`]).
    Ngram,
}

crate::named_choices!(SyntheticSource, "a synthetic source", { Markov => "markov", Ngram => "ngram" });
crate::config_enum!(SyntheticSource);

/// The format string of the task's checkpoints.
pub const FORMAT: &str = "codistill-lm-v1";

/// A checkpoint of the task, checked, and its config.
pub fn checkpoint_config(ck: &crate::checkpoint::Checkpoint, path: &std::path::Path) -> Result<LmConfig> {
    crate::train::checkpoint_config(ck, path, FORMAT, "a language model")
}

/// A split's file: given explicitly, or under `data`.
pub(crate) fn split_file(cfg: &LmConfig, explicit: &Option<PathBuf>, name: &str) -> Option<PathBuf> {
    explicit.clone().or_else(|| cfg.data.as_ref().map(|d| d.join(name)))
}
