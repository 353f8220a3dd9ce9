//! An n-gram source fitted on a real text: a stream that never repeats, with natural word
//! statistics (Zipf's law, sentence lengths, the text's own local grammar) and a known entropy.
//!
//! The model is interpolated absolute discounting (Ney, Essen and Kneser 1994): for a context c of k
//! tokens seen in the fitted text,
//!
//! `P(w | c) = max(n(c, w) - D, 0) / n(c) + D * N1+(c) / n(c) * P(w | c')`
//!
//! with c' the context's last k - 1 tokens, N1+(c) the number of distinct words seen after c, down
//! to the fitted unigram distribution; an unseen context is its shorter suffix. The words are the
//! fitted text's `vocab` most frequent (the rest `<unk>`), and `<eos>` ends a line, as the word
//! tokenizer reads text. A line is never empty: after `<eos>` the model's `<eos>` mass is
//! renormalised away (the word tokenizer drops empty lines, so the written text reads back as the
//! very token stream the source drew).
//!
//! Every drawn token's probability under the source is known exactly, so the mean negative
//! log-likelihood of a written split is an unbiased estimate of the source's entropy rate: the floor
//! no language model's expected cross-entropy on that split goes below.

use crate::data::text::{Tokenizer, Vocab, EOS};
use crate::{bail, Result, Rng};
use std::collections::HashMap;
use std::path::Path;

/// Words seen after one context, sorted by id, with their counts and the cumulative discounted
/// counts (the unigram's: plain counts) to draw from.
#[derive(Clone, Debug, Default)]
struct Successors {
    words: Vec<u32>,
    counts: Vec<u32>,
    cdf: Vec<f64>,
    total: u64,
}

impl Successors {
    fn from_counts(mut pairs: Vec<(u32, u32)>, discount: f64) -> Successors {
        pairs.sort_unstable();
        let mut acc = 0.0;
        let cdf = pairs
            .iter()
            .map(|&(_, c)| {
                acc += c as f64 - discount;
                acc
            })
            .collect();
        Successors {
            total: pairs.iter().map(|&(_, c)| c as u64).sum(),
            words: pairs.iter().map(|&(w, _)| w).collect(),
            counts: pairs.iter().map(|&(_, c)| c).collect(),
            cdf,
        }
    }

    fn count(&self, w: u32) -> u32 {
        self.words.binary_search(&w).map_or(0, |i| self.counts[i])
    }
}

/// An interpolated absolute-discounting n-gram model over a fitted text's words (see the module).
#[derive(Clone, Debug)]
pub struct NgramSource {
    /// Context tokens (2: a trigram model).
    pub order: usize,
    /// The discount D (0.75).
    pub discount: f64,
    /// Token id to word: `<unk>`, `<eos>`, then the fitted text's words by descending count.
    pub words: Vec<String>,
    eos: u32,
    unigram: Successors,
    /// `levels[k - 1]`: the contexts of k tokens.
    levels: Vec<HashMap<Box<[u32]>, Successors>>,
}

impl NgramSource {
    /// Fit on a word-level text file: its `vocab` most frequent words (0: every word), the rest
    /// `<unk>`, each line ending in `<eos>`; contexts of up to `order` tokens.
    pub fn fit(path: &Path, order: usize, vocab: usize) -> Result<NgramSource> {
        if order == 0 {
            bail!(Invalid, "synthetic_order must be at least 1 for an n-gram source (1: bigrams)");
        }
        let full = Vocab::build(path, Tokenizer::Word, 1)?;
        let keep = if vocab == 0 { full.len() } else { (vocab + 2).min(full.len()) };
        let vocab = Vocab::from_text(&format!("word\n{}", full.words[..keep].join("\n")))?;
        let tokens = vocab.encode_file(path)?;
        Ok(Self::from_tokens(vocab.words, &tokens, order))
    }

    /// Fit on a token stream (ids index `words`, which holds `<eos>`).
    pub fn from_tokens(words: Vec<String>, tokens: &[u32], order: usize) -> NgramSource {
        let discount = 0.75;
        let eos = words.iter().position(|w| w == EOS).expect("the words hold <eos>") as u32;
        let mut uni = vec![0u32; words.len()];
        for &t in tokens {
            uni[t as usize] += 1;
        }
        let unigram = Successors::from_counts(uni.iter().enumerate().filter(|(_, &c)| c > 0).map(|(w, &c)| (w as u32, c)).collect(), 0.0);
        // The text is read as following a line end: its first words are counted after contexts
        // of <eos>, as a drawn stream starts.
        let padded: Vec<u32> = std::iter::repeat_n(eos, order).chain(tokens.iter().copied()).collect();
        let levels = (1..=order)
            .map(|k| {
                let mut counts: HashMap<&[u32], HashMap<u32, u32>> = HashMap::new();
                for i in order..padded.len() {
                    *counts.entry(&padded[i - k..i]).or_default().entry(padded[i]).or_default() += 1;
                }
                counts.into_iter().map(|(c, next)| (Box::from(c), Successors::from_counts(next.into_iter().collect(), discount))).collect()
            })
            .collect();
        NgramSource { order, discount, words, eos, unigram, levels }
    }

    /// The present contexts for `history` (its last tokens), shortest first.
    fn contexts<'a>(&'a self, history: &[u32]) -> Vec<&'a Successors> {
        let mut found = Vec::with_capacity(self.order);
        for k in 1..=self.order.min(history.len()) {
            match self.levels[k - 1].get(&history[history.len() - k..]) {
                Some(s) => found.push(s),
                None => break, // a longer context holds this one as its suffix: absent too
            }
        }
        found
    }

    fn raw_prob(&self, found: &[&Successors], w: u32) -> f64 {
        let mut p = self.unigram.count(w) as f64 / self.unigram.total as f64;
        for s in found {
            let n = s.total as f64;
            p = (s.count(w) as f64 - self.discount).max(0.0) / n + self.discount * s.words.len() as f64 / n * p;
        }
        p
    }

    /// The probability of `w` after `history` (the drawn stream so far; its start reads as after
    /// a line end), with the rule that a line is never empty.
    pub fn prob(&self, history: &[u32], w: u32) -> f64 {
        self.prob_in(&self.contexts(history), history.last().is_none_or(|&t| t == self.eos), w)
    }

    /// [`prob`](Self::prob) given the present contexts and whether a line just ended.
    fn prob_in(&self, found: &[&Successors], after_eos: bool, w: u32) -> f64 {
        match (after_eos, w == self.eos) {
            (true, true) => 0.0,
            (true, false) => self.raw_prob(found, w) / (1.0 - self.raw_prob(found, self.eos)),
            (false, _) => self.raw_prob(found, w),
        }
    }

    fn draw(&self, found: &[&Successors], rng: &mut Rng) -> u32 {
        for s in found.iter().rev() {
            let kept = *s.cdf.last().expect("a context has successors");
            if rng.uniform() * (s.total as f64) < kept {
                return s.words[rng.sample_cdf(&s.cdf)];
            }
        }
        self.unigram.words[rng.sample_cdf(&self.unigram.cdf)]
    }

    /// Draw `n` tokens from a line start, and the mean negative log-likelihood (nats per token) of
    /// all of them under the source.
    pub fn generate(&self, n: usize, rng: &mut Rng) -> (Vec<u32>, f64) {
        let mut out: Vec<u32> = vec![self.eos; self.order];
        let mut nll = 0.0;
        for _ in 0..n {
            let found = self.contexts(&out);
            let after_eos = *out.last().expect("the start's context") == self.eos;
            let mut w = self.draw(&found, rng);
            while after_eos && w == self.eos {
                w = self.draw(&found, rng);
            }
            nll -= self.prob_in(&found, after_eos, w).ln();
            out.push(w);
        }
        out.drain(..self.order);
        (out, nll / n.max(1) as f64)
    }

    /// Tokens as text: words separated by spaces, `<eos>` a line end (the written text reads back
    /// through the word tokenizer as the same tokens, given a vocabulary that keeps every word).
    pub fn to_text(&self, tokens: &[u32]) -> String {
        let mut text = String::with_capacity(tokens.len() * 6);
        let mut line_start = true;
        for &t in tokens {
            if t == self.eos {
                text.push('\n');
                line_start = true;
            } else {
                if !line_start {
                    text.push(' ');
                }
                text.push_str(&self.words[t as usize]);
                line_start = false;
            }
        }
        if !line_start {
            text.push('\n'); // the last line's <eos>, which the source did not draw: not scored
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> NgramSource {
        let text = "the cat sat on the mat\nthe dog sat on the cat\na cat and a dog\nthe end\n";
        let mut words = vec!["<unk>".to_string(), EOS.to_string()];
        let mut tokens = Vec::new();
        for line in text.lines() {
            for w in line.split_whitespace() {
                let id = words.iter().position(|x| x == w).unwrap_or_else(|| {
                    words.push(w.to_string());
                    words.len() - 1
                });
                tokens.push(id as u32);
            }
            tokens.push(1);
        }
        NgramSource::from_tokens(words, &tokens, 2)
    }

    #[test]
    fn probabilities_sum_to_one_in_every_context() {
        let src = small();
        let v = src.words.len() as u32;
        // Seen contexts, a context seen only as a suffix, an unseen one, the start, after <eos>.
        for history in [vec![], vec![1], vec![2, 3], vec![3, 4], vec![9, 2], vec![5, 5], vec![2, 1]] {
            let total: f64 = (0..v).map(|w| src.prob(&history, w)).sum();
            assert!((total - 1.0).abs() < 1e-12, "context {history:?}: probabilities sum to {total}");
        }
        assert_eq!(src.prob(&[2, 1], 1), 0.0, "no empty line");
        assert!(src.prob(&[2, 3], 4) > src.prob(&[9, 9], 4), "a seen trigram is likelier than the unigram backoff");
    }

    /// The draws follow `prob` (a chi-square-sized check on one context), and the reported mean
    /// negative log-likelihood is what `prob` gives the drawn tokens.
    #[test]
    fn draws_follow_the_model_and_the_floor_is_their_likelihood() {
        let src = small();
        let (toks, nll) = src.generate(200_000, &mut Rng::new(7));
        let mut history = vec![1u32; src.order];
        let mut sum = 0.0;
        for &t in &toks {
            sum -= src.prob(&history, t).ln();
            history.push(t);
        }
        assert!((sum / toks.len() as f64 - nll).abs() < 1e-9, "floor {nll} against {}", sum / toks.len() as f64);
        // Frequencies after the context "sat on" against the model's.
        let ctx = [4u32, 5];
        let mut seen = vec![0usize; src.words.len()];
        let mut n = 0;
        let padded: Vec<u32> = [1, 1].into_iter().chain(toks.iter().copied()).collect();
        for w in padded.windows(3) {
            if w[..2] == ctx {
                seen[w[2] as usize] += 1;
                n += 1;
            }
        }
        assert!(n > 1000, "the context was drawn {n} times");
        for (w, &c) in seen.iter().enumerate() {
            let p = src.prob(&ctx, w as u32);
            let sd = (n as f64 * p * (1.0 - p)).sqrt().max(1.0);
            assert!((c as f64 - n as f64 * p).abs() < 5.0 * sd, "word {w}: {c} of {n}, expected {}", n as f64 * p);
        }
    }

    #[test]
    fn written_text_reads_back_as_the_drawn_tokens() {
        let src = small();
        let (toks, _) = src.generate(5_000, &mut Rng::new(3));
        let vocab = Vocab::from_text(&format!("word\n{}", src.words.join("\n"))).unwrap();
        let back = vocab.encode_text(&src.to_text(&toks));
        // The text's last line end reads as no token (encode_text puts <eos> between lines).
        let want = toks.strip_suffix(&[1]).unwrap_or(&toks);
        assert_eq!(back, want);
    }
}
