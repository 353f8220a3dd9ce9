//! Synthetic data with learnable structure and a known optimum, so a trainer can be judged against
//! the truth instead of a guess.
//!
//! - `MarkovSource`: a sparse order-k Markov chain over a vocabulary. Each context has a few
//!   successors with random probabilities; successors are drawn from a Zipf law so that word
//!   frequencies look like language. With probability `noise` the next word is drawn from the Zipf
//!   law instead, which makes the chain irreducible: every split of a corpus then sees the same
//!   stationary behaviour (a purely sparse chain can lock into a closed set of contexts). The generator reports the exact negative log-likelihood of
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
    /// Probability of a Zipf draw in place of the context's successors.
    pub noise: f64,
    seed: u64,
    zipf: Vec<f64>,
}

impl MarkovSource {
    pub fn new(vocab: usize, order: usize, branching: usize, seed: u64) -> Self {
        assert!(vocab >= 2 && order >= 1 && branching >= 1, "MarkovSource needs vocab >= 2, order >= 1, branching >= 1");
        MarkovSource { vocab, order, branching, noise: 0.05, seed, zipf: zipf_cdf(vocab, 1.0) }
    }

    fn zipf_pmf(&self, t: u32) -> f64 {
        let t = t as usize;
        let total = self.zipf[self.vocab - 1];
        (self.zipf[t] - if t == 0 { 0.0 } else { self.zipf[t - 1] }) / total
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

    /// `n` tokens and the mean negative log-likelihood (nats) of tokens order..n under the source
    /// (the mixture of the context's successors and the Zipf noise, exactly).
    pub fn generate(&self, n: usize, rng: &mut Rng) -> (Vec<u32>, f64) {
        let mut out: Vec<u32> = (0..self.order.min(n)).map(|_| rng.below(self.vocab) as u32).collect();
        let mut nll = 0.0;
        while out.len() < n {
            let (toks, probs) = self.successors(&out[out.len() - self.order..]);
            let next = if rng.uniform() < self.noise {
                rng.sample_cdf(&self.zipf) as u32
            } else {
                let mut u = rng.uniform();
                let mut k = 0;
                while k + 1 < probs.len() && u >= probs[k] {
                    u -= probs[k];
                    k += 1;
                }
                toks[k]
            };
            let sparse = toks.iter().zip(&probs).find(|(&t, _)| t == next).map(|(_, &p)| p).unwrap_or(0.0);
            nll -= ((1.0 - self.noise) * sparse + self.noise * self.zipf_pmf(next)).ln();
            out.push(next);
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
    /// Latent clusters (none: every field drawn independently): each row draws one, which shifts
    /// every field's categories and scales its integers, so the fields are correlated.
    clusters: Vec<Cluster>,
}

/// A latent cluster of a [`ClickModel`]: per field a shift of the category drawn (modulo the
/// cardinality), per integer feature a factor of its scale.
#[derive(Clone, Debug)]
struct Cluster {
    shift: Vec<usize>,
    int_factor: Vec<f64>,
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
        ClickModel {
            cardinalities: cardinalities.to_vec(),
            num_ints,
            missing: 0.2,
            bias: -1.2,
            cat_weight,
            inter,
            int_weight,
            int_missing_weight,
            int_scale,
            cdfs,
            clusters: Vec::new(),
        }
    }

    /// The same model with `k` latent clusters (0: none): a row first draws its cluster, uniform,
    /// which shifts each field's category by a random offset and scales each integer by
    /// `exp(N(0, 0.7^2))`, so that fields are correlated (the marginals no longer describe the
    /// rows). The click logit is the same function of the features.
    pub fn with_clusters(mut self, k: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed ^ 0xC1u64);
        self.clusters = (0..k)
            .map(|_| Cluster {
                shift: self.cardinalities.iter().map(|&c| rng.below(c)).collect(),
                int_factor: (0..self.num_ints).map(|_| (0.7 * rng.normal()).exp()).collect(),
            })
            .collect();
        self
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
        let cluster = (!self.clusters.is_empty()).then(|| &self.clusters[rng.below(self.clusters.len())]);
        let cats: Vec<u32> = self
            .cdfs
            .iter()
            .enumerate()
            .map(|(f, cdf)| {
                let c = rng.sample_cdf(cdf);
                cluster.map_or(c, |k| (c + k.shift[f]) % self.cardinalities[f]) as u32
            })
            .collect();
        let ints: Vec<Option<u32>> = self
            .int_scale
            .iter()
            .enumerate()
            .map(|(d, &s)| {
                let s = cluster.map_or(s, |k| s * k.int_factor[d]);
                if rng.uniform() < self.missing {
                    None
                } else {
                    Some((s * -(1.0 - rng.uniform()).ln()) as u32)
                }
            })
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
    fn criteo_like_logs_click_at_a_quarter_whatever_the_seed() {
        for seed in [1, 2, 3] {
            let m = ClickModel::criteo_like(0.01, seed);
            let mut rng = Rng::new(9);
            let ctr = (0..40_000).filter(|_| m.sample(&mut rng).label).count() as f64 / 40_000.0;
            assert!((ctr - 0.25).abs() < 0.015, "seed {seed}: click rate {ctr}");
        }
    }

    #[test]
    fn clusters_correlate_the_fields_and_none_leave_the_rows_unchanged() {
        // Two fields of two categories each (scale 0.1): independent without clusters, not with.
        let dependence = |m: &ClickModel| {
            let mut rng = Rng::new(4);
            let n = 50_000;
            let ex: Vec<_> = (0..n).map(|_| m.sample(&mut rng)).collect();
            let p = |f: &dyn Fn(&ClickExample) -> bool| ex.iter().filter(|e| f(e)).count() as f64 / n as f64;
            (p(&|e| e.cats[5] == 0 && e.cats[8] == 0) - p(&|e| e.cats[5] == 0) * p(&|e| e.cats[8] == 0)).abs()
        };
        let plain = ClickModel::criteo_like(0.1, 3);
        assert_eq!(plain.cardinalities[5], 2);
        assert_eq!(plain.cardinalities[8], 2);
        assert!(dependence(&plain) < 0.006, "independent fields: {}", dependence(&plain));
        let clustered = ClickModel::criteo_like(0.1, 3).with_clusters(4, 3);
        assert!(dependence(&clustered) > 3.0 * dependence(&plain) + 0.006, "clustered fields: {}", dependence(&clustered));
        // No clusters: the very rows drawn before clusters existed.
        let none = ClickModel::criteo_like(0.1, 3).with_clusters(0, 3);
        let (mut a, mut b) = (Rng::new(9), Rng::new(9));
        for _ in 0..100 {
            let (x, y) = (plain.sample(&mut a), none.sample(&mut b));
            assert_eq!((x.cats, x.ints, x.label), (y.cats, y.ints, y.label));
        }
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

/// Entropy floors of a written synthetic corpus, in nats per language-model token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CorpusFloors {
    pub train: f64,
    pub valid: f64,
    pub test: f64,
}

/// Write `train.txt`, `valid.txt` and `test.txt` from a Markov source into `dir` (once: an existing
/// complete corpus with the same parameters is reused). Token t is the word `w{t}`; every `w0`
/// also ends its line, so a word-level model sees `<eos>` after each `w0`, which the source makes
/// certain (0 nats). The floors count those `<eos>` tokens, so they are directly comparable with a
/// model's per-token cross-entropy.
pub fn write_markov_corpus(dir: &std::path::Path, src: &MarkovSource, sizes: [usize; 3], seed: u64) -> crate::Result<CorpusFloors> {
    write_corpus(
        dir,
        sizes,
        seed,
        || Ok(()),
        |_, n, rng| {
            let (toks, nll) = src.generate(n, rng);
            let mut text = String::with_capacity(n * 5);
            let mut eos = 0usize;
            for (k, &t) in toks.iter().enumerate() {
                text.push('w');
                text.push_str(&t.to_string());
                if t == 0 {
                    text.push('\n');
                    eos += 1;
                } else if k + 1 < toks.len() {
                    text.push(' ');
                }
            }
            if !text.ends_with('\n') {
                text.push('\n');
                eos += 1; // the last line's <eos> is not predictable by the source; it counts as free here
            }
            let scored = n.saturating_sub(src.order) as f64;
            (text, nll * scored / (scored + eos as f64))
        },
    )
}

/// Write `train.txt`, `valid.txt` and `test.txt` drawn from an n-gram source (`fit` builds it,
/// only when the corpus is not there yet) into `dir` (once, as [`write_markov_corpus`]); the floors
/// are the drawn tokens' mean negative log-likelihood under the source (`<eos>` included: the word
/// tokenizer reads each line end as one).
pub fn write_ngram_corpus(
    dir: &std::path::Path,
    fit: impl FnOnce() -> crate::Result<crate::data::ngram::NgramSource>,
    sizes: [usize; 3],
    seed: u64,
) -> crate::Result<CorpusFloors> {
    write_corpus(dir, sizes, seed, fit, |src, n, rng| {
        let (toks, nll) = src.generate(n, rng);
        (src.to_text(&toks), nll)
    })
}

/// The three splits of a synthetic corpus, each `draw(source, n, rng) -> (text, floor)` from one
/// seeded generator (the source made by `make`, once, when the corpus is not there yet), written
/// atomically with `floors.txt` last (its presence marks a complete corpus).
fn write_corpus<S>(
    dir: &std::path::Path,
    sizes: [usize; 3],
    seed: u64,
    make: impl FnOnce() -> crate::Result<S>,
    mut draw: impl FnMut(&S, usize, &mut Rng) -> (String, f64),
) -> crate::Result<CorpusFloors> {
    use crate::data::text::write_atomic;
    let floors_path = dir.join("floors.txt");
    if let Ok(text) = std::fs::read_to_string(&floors_path) {
        let v: Vec<f64> = text.lines().filter_map(|l| l.split('=').nth(1)?.trim().parse().ok()).collect();
        if v.len() == 3 && ["train.txt", "valid.txt", "test.txt"].iter().all(|f| dir.join(f).exists()) {
            return Ok(CorpusFloors { train: v[0], valid: v[1], test: v[2] });
        }
    }
    let source = make()?;
    let mut rng = Rng::new(seed);
    let mut floors = [0.0; 3];
    for (i, (name, &n)) in ["train.txt", "valid.txt", "test.txt"].iter().zip(&sizes).enumerate() {
        let (text, floor) = draw(&source, n, &mut rng);
        floors[i] = floor;
        write_atomic(&dir.join(name), text.as_bytes())?;
    }
    let f = CorpusFloors { train: floors[0], valid: floors[1], test: floors[2] };
    write_atomic(&floors_path, format!("train = {}\nvalid = {}\ntest = {}\n", f.train, f.valid, f.test).as_bytes())?;
    Ok(f)
}

/// Cardinalities shaped like the Criteo challenge's 26 fields (a few huge, many small), times
/// `scale` (at least 2 each).
pub fn criteo_cardinalities(scale: f64) -> Vec<usize> {
    const BASE: [usize; 26] = [
        1_400, 550, 170_000, 80_000, 300, 20, 12_000, 600, 3, 40_000, 5_000, 150_000, 3_000, 27, 14_000, 110_000, 10, 4_500, 2_000, 4, 130_000, 17, 15, 50_000,
        100, 35_000,
    ];
    BASE.iter().map(|&c| ((c as f64 * scale) as usize).max(2)).collect()
}

/// What the hidden model says about a generated file.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClickTruth {
    pub rows: usize,
    /// Mean negative log-likelihood of the drawn labels under the true probabilities.
    pub bayes_log_loss: f64,
    /// Mean binary entropy of the true probabilities (the expectation of the above).
    pub expected_log_loss: f64,
}

impl ClickTruth {
    /// Read the `.truth` sidecar written beside a generated file, if there is one.
    pub fn for_file(path: &std::path::Path) -> Option<ClickTruth> {
        let text = std::fs::read_to_string(truth_path(path)).ok()?;
        let get = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)?.trim().strip_prefix('=')?.trim().parse::<f64>().ok());
        Some(ClickTruth { rows: get("rows")? as usize, bayes_log_loss: get("bayes_log_loss")?, expected_log_loss: get("expected_log_loss")? })
    }
}

pub fn truth_path(path: &std::path::Path) -> std::path::PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".truth");
    std::path::PathBuf::from(s)
}

impl ClickModel {
    /// 26 categorical fields (cardinalities from `criteo_cardinalities(scale)`) and 13 integers,
    /// with per-category effects scaled so that the logit's spread matches real click data.
    /// The bias is then set so that the base click rate is 25%, as in the challenge data, whatever
    /// the seed (a seed's random effects alone could put it anywhere from a few percent up).
    pub fn criteo_like(scale: f64, seed: u64) -> Self {
        let mut m = ClickModel::new(&criteo_cardinalities(scale), crate::data::criteo::NUM_INTS, seed);
        let s = 1.2 / (26f64).sqrt() / 0.6;
        for w in &mut m.cat_weight {
            w.iter_mut().for_each(|x| *x *= s);
        }
        let mut rng = Rng::new(seed ^ 0xB1A5);
        let logits: Vec<f64> = (0..20_000)
            .map(|_| {
                let e = m.sample(&mut rng);
                m.logit(&e.cats, &e.ints) - m.bias
            })
            .collect();
        let rate = |b: f64| logits.iter().map(|z| 1.0 / (1.0 + (-(z + b)).exp())).sum::<f64>() / logits.len() as f64;
        let (mut lo, mut hi) = (-20.0, 20.0);
        for _ in 0..60 {
            let mid = 0.5 * (lo + hi);
            if rate(mid) < 0.25 {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        m.bias = 0.5 * (lo + hi);
        m
    }

    /// The 32-bit category value written for category `c` of field `f`; the most frequent category
    /// of every fifth field is written as missing, as real logs have missing categories.
    pub fn category_value(f: usize, c: u32) -> Option<u32> {
        if f % 5 == 4 && c == 0 {
            None
        } else {
            Some(mix(0xC47E_6021 ^ f as u64, c as u64) as u32)
        }
    }

    /// An example as a Criteo row.
    pub fn to_row(e: &ClickExample) -> crate::data::criteo::Row {
        let mut row = crate::data::criteo::Row { label: e.label, ints: [None; 13], cats: [None; 26] };
        for (i, v) in e.ints.iter().take(13).enumerate() {
            row.ints[i] = v.map(|x| x as i64);
        }
        for (f, &c) in e.cats.iter().take(26).enumerate() {
            row.cats[f] = Self::category_value(f, c);
        }
        row
    }
}

/// Write `rows` impressions in the Criteo TSV format (gzip when the name ends in `.gz`), through a
/// temporary name, and the `.truth` sidecar with the hidden model's log-loss on them.
pub fn write_criteo_tsv(path: &std::path::Path, model: &ClickModel, rows: usize, seed: u64) -> crate::Result<ClickTruth> {
    use crate::Error;
    use std::io::Write;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    let tmp = crate::data::text::write_temp_name(path);
    let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut rng = Rng::new(seed);
    let (mut bayes, mut expected) = (0.0, 0.0);
    let bar = crate::progress::bar(rows as u64, 0, "generating rows ");
    let mut write_rows = |w: &mut dyn Write| -> std::io::Result<()> {
        for i in 0..rows {
            if i % 65_536 == 0 {
                bar.set_position(i as u64);
            }
            let e = model.sample(&mut rng);
            let p = e.p.clamp(1e-15, 1.0 - 1e-15);
            bayes -= if e.label { p.ln() } else { (1.0 - p).ln() };
            expected -= p * p.ln() + (1.0 - p) * (1.0 - p).ln();
            writeln!(w, "{}", ClickModel::to_row(&e).to_line())?;
        }
        Ok(())
    };
    let written = if path.extension().map(|e| e == "gz").unwrap_or(false) {
        let mut enc = flate2::write::GzEncoder::new(std::io::BufWriter::with_capacity(1 << 20, file), flate2::Compression::fast());
        write_rows(&mut enc).and_then(|_| enc.finish()).and_then(|mut w| w.flush().and_then(|_| w.get_ref().sync_all()))
    } else {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        write_rows(&mut w).and_then(|_| w.flush()).and_then(|_| w.get_ref().sync_all())
    };
    bar.finish_and_clear();
    written.map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    let n = rows.max(1) as f64;
    let t = ClickTruth { rows, bayes_log_loss: bayes / n, expected_log_loss: expected / n };
    crate::data::text::write_atomic(
        &truth_path(path),
        format!("rows = {rows}\nbayes_log_loss = {}\nexpected_log_loss = {}\n", t.bayes_log_loss, t.expected_log_loss).as_bytes(),
    )?;
    Ok(t)
}
