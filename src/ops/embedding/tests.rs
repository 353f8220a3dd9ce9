//! Device-generic tests of the embedding gather and its backward scatter (compiled into
//! `tests/ops.rs`, run once per device), with repeated ids, in both scatter modes.

use crate::common::dev::{check, host, poison, rng, up};
use codistill::ops::embedding::{gather, scatter_add, scatter_add_cpu};
use codistill::{Backend, Device, Tensor};

pub fn gather_and_scatter_add_match_f64(dev: Device) {
    let mut r = rng("embedding", dev);
    for &(v, d, n) in &[(5, 3, 17), (1000, 64, 513), (97, 33, 2000), (40_000, 8, 300)] {
        let table = Tensor::randn(&[v, d], 1.0, &mut r);
        let ids: Vec<i32> = (0..n).map(|_| r.below(v) as i32).collect();
        let idt = Tensor::from_i32(ids.clone(), &[n]).unwrap();
        let tv = table.to_vec_f32().unwrap();
        poison(dev, n * d);
        let got = gather(&up(&table, dev), &up(&idt, dev)).unwrap();
        let want: Vec<f64> = ids.iter().flat_map(|&i| tv[i as usize * d..(i as usize + 1) * d].iter().map(|&x| x as f64)).collect();
        check(&format!("gather {v}x{d} n={n}"), &got, dev, &want, 0.0);
        let rows = Tensor::randn(&[n, d], 1.0, &mut r);
        let start = Tensor::randn(&[v, d], 1.0, &mut r);
        let (rv, sv) = (rows.to_vec_f32().unwrap(), start.to_vec_f32().unwrap());
        let mut want: Vec<f64> = sv.iter().map(|&x| x as f64).collect();
        for (k, &i) in ids.iter().enumerate() {
            for j in 0..d {
                want[i as usize * d + j] += rv[k * d + j] as f64;
            }
        }
        for deterministic in [false, true] {
            let be = Backend { deterministic, ..Backend::default() };
            let mut t = up(&start, dev).deep_copy().unwrap();
            scatter_add(&be, &up(&rows, dev), &up(&idt, dev), &mut t).unwrap();
            check(&format!("scatter_add {v}x{d} n={n} deterministic={deterministic}"), &t, dev, &want, 1e-6);
            if deterministic {
                // Rows that share an id are added in position order: bitwise the CPU twin.
                let mut twin = sv.clone();
                scatter_add_cpu(&rv, d, &ids, &mut twin);
                let got = host("scatter_add", &t, dev);
                assert!(got.iter().zip(&twin).all(|(a, b)| a.to_bits() == b.to_bits()), "deterministic scatter-add on {dev} is not bitwise the twin");
            }
        }
    }
    let bad = Tensor::from_i32(vec![0, 5], &[2]).unwrap();
    let e = gather(&up(&Tensor::zeros(&[5, 2]), dev), &up(&bad, dev)).unwrap_err().to_string();
    assert!(e.contains("id 5"), "{e}");
}
