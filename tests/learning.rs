//! Learning works end to end on the CPU: the engine's ops, tape, modules and optimizers together
//! drive two small models close to the known optimum of synthetic data.

use codistill::data::lm::TokenLanes;
use codistill::data::synthetic::{bayes_log_loss, unigram_entropy, ClickExample, ClickModel, MarkovSource};
use codistill::nn::{Embedding, Linear, Lstm, LstmState, Mlp};
use codistill::optim::{Optimizer, OptimizerKind};
use codistill::{Graph, ParamStore, Rng, Tensor};

struct LanguageModel {
    emb: Embedding,
    lstm: Lstm,
    out: Linear,
}

impl LanguageModel {
    /// Mean cross-entropy (nats) of one window, and the carried state. Records a tape on `g`.
    fn loss(&self, g: &mut Graph, s: &ParamStore, x: &Tensor, y: &Tensor, state: &LstmState, steps: usize) -> (codistill::Var, LstmState) {
        let e = self.emb.forward(g, s, x).unwrap();
        let (h, next) = self.lstm.forward(g, s, e, state, steps, None).unwrap();
        let logits = self.out.forward(g, s, h).unwrap();
        (g.softmax_xent(logits, y).unwrap(), next)
    }
}

#[test]
fn lstm_language_model_learns_markov_source_well_below_unigram_entropy() {
    let vocab = 40;
    let src = MarkovSource::new(vocab, 1, 3, 17);
    let mut rng = Rng::new(1);
    let (train, _) = src.generate(80_000, &mut rng);
    let (valid, valid_nll) = src.generate(20_000, &mut rng);
    let h_unigram = unigram_entropy(&valid, vocab);

    let mut s = ParamStore::new();
    let mut init = Rng::new(2);
    let model = LanguageModel {
        emb: Embedding::new(&mut s, "emb", vocab, 32, 0.1, &mut init).unwrap(),
        lstm: Lstm::new(&mut s, "lstm", 32, 64, 1, &mut init).unwrap(),
        out: Linear::new(&mut s, "out", 64, vocab, true, &mut init).unwrap(),
    };
    let (batch, steps) = (16, 20);
    let lanes = TokenLanes::new(&train, batch, steps).unwrap();
    let mut opt = Optimizer::new(OptimizerKind::adam());
    let mut state = LstmState::zeros(1, batch, 64);
    for epoch in 0..2 {
        for w in 0..lanes.windows() {
            let (x, y) = lanes.window(w).unwrap();
            let mut g = Graph::new();
            let (loss, next) = model.loss(&mut g, &s, &x, &y, &state, steps);
            state = next;
            s.zero_grads().unwrap();
            let grads = g.backward(loss).unwrap();
            g.accumulate_grads(&grads, &mut s).unwrap();
            opt.step(&mut s, if epoch == 0 { 1e-2 } else { 3e-3 }, Some(5.0)).unwrap();
        }
    }
    let vl = TokenLanes::new(&valid, 10, 50).unwrap();
    let mut state = LstmState::zeros(1, 10, 64);
    let mut total = 0.0;
    for w in 0..vl.windows() {
        let (x, y) = vl.window(w).unwrap();
        let mut g = Graph::no_grad();
        let (loss, next) = model.loss(&mut g, &s, &x, &y, &state, 50);
        state = next;
        total += g.value(loss).item().unwrap() as f64;
    }
    let ce = total / vl.windows() as f64;
    println!("validation cross-entropy {ce:.4} nats; source entropy rate {valid_nll:.4}; unigram entropy {h_unigram:.4}");
    assert!(ce < 0.6 * h_unigram, "cross-entropy {ce:.4} is not well below the unigram entropy {h_unigram:.4}");
    assert!(ce < valid_nll + 0.05, "cross-entropy {ce:.4} is more than 0.05 nats above the source's entropy rate {valid_nll:.4}");
}

/// Categories of all fields index one table (field offsets), so the per-field embeddings come out
/// as one contiguous `[N, fields * dim]` block; integer features become log(1 + x) and a missing flag.
fn encode(batch: &[ClickExample], offsets: &[u32]) -> (Tensor, Tensor, Tensor) {
    let ids: Vec<i32> = batch.iter().flat_map(|e| e.cats.iter().zip(offsets).map(|(&c, &o)| (c + o) as i32)).collect();
    let dense: Vec<f32> = batch
        .iter()
        .flat_map(|e| {
            e.ints.iter().flat_map(|v| match v {
                Some(x) => [(1.0 + *x as f32).ln(), 0.0],
                None => [0.0, 1.0],
            })
        })
        .collect();
    let labels: Vec<f32> = batch.iter().map(|e| e.label as u8 as f32).collect();
    let nd = dense.len() / batch.len();
    (
        Tensor::from_i32(ids, &[batch.len() * offsets.len()]).unwrap(),
        Tensor::from_f32(dense, &[batch.len(), nd]).unwrap(),
        Tensor::from_f32(labels, &[batch.len()]).unwrap(),
    )
}

#[test]
fn embedding_mlp_learns_click_log_to_near_bayes_log_loss() {
    let cards = [200, 100, 50, 20];
    let model = ClickModel::new(&cards, 3, 31);
    let mut rng = Rng::new(3);
    let train: Vec<_> = (0..400_000).map(|_| model.sample(&mut rng)).collect();
    let valid: Vec<_> = (0..30_000).map(|_| model.sample(&mut rng)).collect();
    let offsets: Vec<u32> = cards
        .iter()
        .scan(0u32, |acc, &c| {
            let o = *acc;
            *acc += c as u32;
            Some(o)
        })
        .collect();
    let rows: usize = cards.iter().sum();

    let (dim, fields, dense_in) = (8, cards.len(), 6);
    let mut s = ParamStore::new();
    let mut init = Rng::new(4);
    let emb = Embedding::new(&mut s, "emb", rows, dim, 0.05, &mut init).unwrap();
    let dense = Linear::new(&mut s, "dense", dense_in, 128, false, &mut init).unwrap();
    let mlp = Mlp::new(&mut s, "mlp", &[fields * dim, 128, 64, 1], &mut init).unwrap();
    let forward = |g: &mut Graph, s: &ParamStore, batch: &[ClickExample]| {
        let (ids, d, labels) = encode(batch, &offsets);
        let e = emb.forward(g, s, &ids).unwrap();
        let e = g.reshape(e, &[batch.len(), fields * dim]).unwrap();
        // First MLP layer sees [embeddings | dense]: its dense half is the separate Linear.
        let first = mlp.layers[0].forward(g, s, e).unwrap();
        let dv = g.constant(d);
        let dl = dense.forward(g, s, dv).unwrap();
        let mut h = g.add(first, dl).unwrap();
        for layer in &mlp.layers[1..] {
            h = g.relu(h).unwrap();
            h = layer.forward(g, s, h).unwrap();
        }
        let logit = g.reshape(h, &[batch.len()]).unwrap();
        (logit, labels)
    };
    let mut opt = Optimizer::new(OptimizerKind::adam());
    for epoch in 0..5 {
        for chunk in train.chunks(256) {
            let mut g = Graph::new();
            let (logit, labels) = forward(&mut g, &s, chunk);
            let loss = g.bce_with_logits(logit, &labels).unwrap();
            s.zero_grads().unwrap();
            let grads = g.backward(loss).unwrap();
            g.accumulate_grads(&grads, &mut s).unwrap();
            opt.step(&mut s, [3e-3, 3e-3, 1e-3, 3e-4, 1e-4][epoch], None).unwrap();
        }
    }
    let mut g = Graph::no_grad();
    let (logit, labels) = forward(&mut g, &s, &valid);
    let loss = g.bce_with_logits(logit, &labels).unwrap();
    let model_ll = g.value(loss).item().unwrap() as f64;
    let bayes_realised = valid.iter().map(|e| -(if e.label { e.p } else { 1.0 - e.p }).ln()).sum::<f64>() / valid.len() as f64;
    let ctr = valid.iter().filter(|e| e.label).count() as f64 / valid.len() as f64;
    let constant = -(ctr * ctr.ln() + (1.0 - ctr) * (1.0 - ctr).ln());
    println!("validation log-loss {model_ll:.4}; Bayes {bayes_realised:.4} (expected {:.4}); constant-CTR {constant:.4}", bayes_log_loss(&valid));
    assert!(model_ll < 1.02 * bayes_realised, "log-loss {model_ll:.4} is more than 2% above the Bayes log-loss {bayes_realised:.4}");
    assert!(model_ll < constant - 0.5 * (constant - bayes_realised), "log-loss {model_ll:.4} captured less than half the signal (constant {constant:.4})");
}
