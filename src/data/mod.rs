//! Data: batching for the trainers, and synthetic sources with known entropy (the embedded default
//! and the learning checks).
pub mod criteo;
pub mod lm;
pub mod ngram;
pub mod synthetic;
pub mod text;
