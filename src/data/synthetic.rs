//! Synthetic data with learnable structure and a known optimum, so a trainer can be judged against
//! the truth instead of a guess.
//!
//! - `MarkovSource`: a sparse order-k Markov chain over a vocabulary. Each context has a few
//!   successors with random probabilities; successors are drawn from a Zipf law so that word
//!   frequencies look like language. The generator reports the exact negative log-likelihood of
//!   the text it wrote under the true model, the floor for any language model's cross-entropy.
//! - `ClickModel`: a click log from a hidden logistic model with power-law category frequencies,
//!   per-category effects, a low-rank interaction between two fields (so depth helps) and
//!   log-count dense features. Each example carries its true click probability, so the Bayes
//!   log-loss of a sample is known.

use crate::Rng;

fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
    let mut acc = 0.0;
    (1..=n)
        .map(|r| {
            acc += 1.0 / (r as f64).powf(s);
            acc
        })
        .collect()
}

fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A sparse order-k Markov source. The transition table is never stored: a context's successors
/// are a pure function of (seed, context), so any vocabulary size costs no memory.
#[derive(Clone, Debug)]
pub struct MarkovSource {
    pub vocab: usize,
    pub order: usize,
    pub branching: usize,
    seed: u64,
    zipf: Vec<f64>,
}

impl MarkovSource {
    pub fn new(vocab: usize, order: usize, branching: usize, seed: u64) -> Self {
        assert!(vocab >= 2 && order >= 1 && branching >= 1, "MarkovSource needs vocab >= 2, order >= 1, branching >= 1");
        MarkovSource { vocab, order, branching, seed, zipf: zipf_cdf(vocab, 1.0) }
    }

    /// Successors of a context (the last `order` tokens) and their probabilities.
    pub fn successors(&self, context: &[u32]) -> (Vec<u32>, Vec<f64>) {
        let mut h = self.seed;
        for &t in context {
            h = mix(h, t as u64 + 1);
        }
        let mut rng = Rng::new(h);
        let mut toks: Vec<u32> = Vec::with_capacity(self.branching);
        while toks.len() < self.branching.min(self.vocab) {
            let t = rng.sample_cdf(&self.zipf) as u32;
            if !toks.contains(&t) {
                toks.push(t);
            }
        }
        // Skewed weights (exponentials cubed) give contexts of very different predictability.
        let w: Vec<f64> = toks.iter().map(|_| (-(1.0 - rng.uniform()).ln()).powi(3) + 1e-3).collect();
        let z: f64 = w.iter().sum();
        (toks, w.into_iter().map(|x| x / z).collect())
    }

    /// `n` tokens and the mean negative log-likelihood (nats) of tokens order..n under the source.
    pub fn generate(&self, n: usize, rng: &mut Rng) -> (Vec<u32>, f64) {
        let mut out: Vec<u32> = (0..self.order.min(n)).map(|_| rng.below(self.vocab) as u32).collect();
        let mut nll = 0.0;
        while out.len() < n {
            let (toks, probs) = self.successors(&out[out.len() - self.order..]);
            let mut u = rng.uniform();
            let mut k = 0;
            while k + 1 < probs.len() && u >= probs[k] {
                u -= probs[k];
                k += 1;
            }
            nll -= probs[k].ln();
            out.push(toks[k]);
        }
        (out, nll / (n.saturating_sub(self.order)).max(1) as f64)
    }
}

/// Entropy (nats) of the empirical unigram distribution of `tokens`.
pub fn unigram_entropy(tokens: &[u32], vocab: usize) -> f64 {
    let mut counts = vec![0usize; vocab];
    for &t in tokens {
        counts[t as usize] += 1;
    }
    let n = tokens.len() as f64;
    counts.iter().filter(|&&c| c > 0).map(|&c| -(c as f64 / n) * (c as f64 / n).ln()).sum()
}

/// One synthetic impression.
#[derive(Clone, Debug, PartialEq)]
pub struct ClickExample {
    /// One category id per field, in `[0, cardinality[f])`.
    pub cats: Vec<u32>,
    /// Non-negative integer counts (Criteo's I-columns), `None` when missing.
    pub ints: Vec<Option<u32>>,
    pub label: bool,
    /// The true click probability under the hidden model.
    pub p: f64,
}

/// A hidden logistic click model.
#[derive(Clone, Debug)]
pub struct ClickModel {
    pub cardinalities: Vec<usize>,
    pub num_ints: usize,
    /// Probability that an integer feature is missing.
    pub missing: f64,
    bias: f64,
    cat_weight: Vec<Vec<f64>>,
    /// Rank-2 interaction between fields 0 and 1.
    inter: [Vec<[f64; 2]>; 2],
    int_weight: Vec<f64>,
    int_missing_weight: Vec<f64>,
    int_scale: Vec<f64>,
    cdfs: Vec<Vec<f64>>,
}

impl ClickModel {
    /// `cardinalities` per categorical field (at least 2 fields), `num_ints` integer features.
    pub fn new(cardinalities: &[usize], num_ints: usize, seed: u64) -> Self {
        assert!(cardinalities.len() >= 2, "ClickModel needs at least two categorical fields");
        let mut rng = Rng::new(seed);
        let cat_weight = cardinalities.iter().map(|&c| (0..c).map(|_| 0.6 * rng.normal()).collect()).collect();
        let mut inter_field = |c: usize| (0..c).map(|_| [0.5 * rng.normal(), 0.5 * rng.normal()]).collect::<Vec<_>>();
        let inter = [inter_field(cardinalities[0]), inter_field(cardinalities[1])];
        let int_weight = (0..num_ints).map(|_| 0.3 * rng.normal()).collect();
        let int_missing_weight = (0..num_ints).map(|_| 0.3 * rng.normal()).collect();
        let int_scale = (0..num_ints).map(|_| (2.0 + 4.0 * rng.uniform()).exp()).collect();
        let cdfs = cardinalities.iter().map(|&c| zipf_cdf(c, 1.1)).collect();
        ClickModel { cardinalities: cardinalities.to_vec(), num_ints, missing: 0.2, bias: -1.2, cat_weight, inter, int_weight, int_missing_weight, int_scale, cdfs }
    }

    /// The true logit of an example's features.
    pub fn logit(&self, cats: &[u32], ints: &[Option<u32>]) -> f64 {
        let mut z = self.bias;
        for (f, &c) in cats.iter().enumerate() {
            z += self.cat_weight[f][c as usize];
        }
        let (a, b) = (self.inter[0][cats[0] as usize], self.inter[1][cats[1] as usize]);
        z += a[0] * b[0] + a[1] * b[1];
        for (d, v) in ints.iter().enumerate() {
            z += match v {
                Some(x) => self.int_weight[d] * ((1.0 + *x as f64).ln() - 3.0),
                None => self.int_missing_weight[d],
            };
        }
        z
    }

    pub fn sample(&self, rng: &mut Rng) -> ClickExample {
        let cats: Vec<u32> = self.cdfs.iter().map(|cdf| rng.sample_cdf(cdf) as u32).collect();
        let ints: Vec<Option<u32>> = self
            .int_scale
            .iter()
            .map(|&s| if rng.uniform() < self.missing { None } else { Some((s * -(1.0 - rng.uniform()).ln()) as u32) })
            .collect();
        let p = 1.0 / (1.0 + (-self.logit(&cats, &ints)).exp());
        ClickExample { label: rng.uniform() < p, cats, ints, p }
    }
}

/// Bayes log-loss of a sample: the mean binary entropy of the true probabilities (the expected
/// log-loss of the true model, with less variance than scoring the drawn labels).
pub fn bayes_log_loss(examples: &[ClickExample]) -> f64 {
    let h = |p: f64| -(p * p.ln() + (1.0 - p) * (1.0 - p).ln());
    examples.iter().map(|e| h(e.p.clamp(1e-15, 1.0 - 1e-15))).sum::<f64>() / examples.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markov_source_is_deterministic_and_below_unigram_entropy() {
        let src = MarkovSource::new(50, 1, 3, 9);
        let (a, nll_a) = src.generate(20_000, &mut Rng::new(1));
        let (b, _) = src.generate(20_000, &mut Rng::new(1));
        assert_eq!(a, b);
        let h1 = unigram_entropy(&a, 50);
        assert!(nll_a < 0.6 * h1, "entropy rate {nll_a} vs unigram {h1}");
        assert!(nll_a > 0.1, "the source should not be deterministic: {nll_a}");
    }

    #[test]
    fn click_model_probabilities_match_labels() {
        let m = ClickModel::new(&[100, 50, 20], 3, 4);
        let mut rng = Rng::new(5);
        let ex: Vec<_> = (0..50_000).map(|_| m.sample(&mut rng)).collect();
        let mean_p = ex.iter().map(|e| e.p).sum::<f64>() / ex.len() as f64;
        let ctr = ex.iter().filter(|e| e.label).count() as f64 / ex.len() as f64;
        assert!((mean_p - ctr).abs() < 0.01, "calibration: mean p {mean_p} vs ctr {ctr}");
        let base = -(ctr * ctr.ln() + (1.0 - ctr) * (1.0 - ctr).ln());
        assert!(bayes_log_loss(&ex) < 0.95 * base, "features must carry signal");
    }
}
