//! The tasks the training loop ([`crate::train::train`]) trains, each a [`crate::train::Task`]:
//! a language model ([`lm`]: LSTM over a token stream, truncated backpropagation through time,
//! perplexity) and a click-through model ([`ctr`]: hashed embeddings and an MLP over Criteo-format
//! logs, log-loss, AUC, calibration and churn). A third task is the `task` example.

pub mod ctr;
pub mod init;
pub mod lm;
pub mod pytorch;
