//! The fused attention against the plain formulation (masks, KV views, gradients).
use super::*;
use candle_core::{Var, D};

fn rand(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f64> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

// b 2, n_kv 2, rep 2, 3 new tokens after 2 cached; row 1 has three padding tokens in
// front, so its first new token sees no real key
fn setup() -> (AttnMask, usize, usize, usize, usize) {
    let (b, s, past) = (2, 3, 2);
    let mut valid = vec![true; b * (past + s)];
    valid[5] = false;
    valid[6] = false;
    valid[7] = false;
    (AttnMask::causal(b, s, past, valid, 2), 2, 2, 4, past + s)
}

/// The composed form: scores + additive mask, softmax, times v.
fn naive(q: &Tensor, k: &Tensor, v: &Tensor, m: &AttnMask, rep: usize, scale: f64) -> Tensor {
    let (b, nkv, _, _) = q.dims4().unwrap();
    let (s, t) = (m.s, m.t);
    let mut add = vec![0f64; b * s * t];
    for r in 0..b {
        for i in 0..s {
            for j in 0..t {
                if j > m.past + i || !m.valid[r * t + j] {
                    add[(r * s + i) * t + j] = -1e30;
                }
            }
        }
    }
    let add = Tensor::from_vec(add, (b, 1, 1, s, t), &Device::Cpu).unwrap();
    let att = (q.matmul(&k.t().unwrap()).unwrap() * scale)
        .unwrap()
        .reshape((b, nkv, rep, s, t))
        .unwrap()
        .broadcast_add(&add)
        .unwrap()
        .reshape((b, nkv, rep * s, t))
        .unwrap();
    let mx = att.max_keepdim(D::Minus1).unwrap();
    let e = att.broadcast_sub(&mx).unwrap().exp().unwrap();
    let p = e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap();
    p.matmul(v).unwrap()
}

#[test]
fn fused_equals_composed_attention_on_real_queries() {
    let (m, nkv, rep, d, t) = setup();
    let q = rand(&[m.batch, nkv, rep * m.s, d], 1);
    let k = rand(&[m.batch, nkv, t, d], 2);
    let v = rand(&[m.batch, nkv, t, d], 3);
    let got = fused_attention(&q, &k, &v, &m, rep, 0.5).unwrap();
    let want = naive(&q, &k, &v, &m, rep, 0.5);
    let w = got.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let wv = want.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    // row 1's first new token is padding (no visible key): skip its query rows
    let mut compared = 0;
    for (idx, (a, b)) in w.iter().zip(&wv).enumerate() {
        let row = idx / d;
        let (bi, i) = (row / (nkv * rep * m.s), row % m.s);
        if bi == 1 && i == 0 {
            assert_eq!(*a, 0.0, "a query with no visible key gives zeros");
            continue;
        }
        assert!((a - b).abs() < 1e-12, "element {idx}: {a} vs {b}");
        compared += 1;
    }
    assert!(compared > 50);
}

#[test]
fn fused_attention_gradients_match_finite_differences() {
    let (m, nkv, rep, d, t) = setup();
    grad_check(&m, nkv, rep, d, t);
    // packed: two sequences (3 and 2 tokens) after a shared 2-token prefix
    grad_check(&AttnMask::packed(2, 0, &[3, 2]), nkv, rep, d, 7);
}

fn grad_check(m: &AttnMask, nkv: usize, rep: usize, d: usize, t: usize) {
    let qs = [m.batch, nkv, rep * m.s, d];
    let ks = [m.batch, nkv, t, d];
    let (q0, k0, v0) = (rand(&qs, 4), rand(&ks, 5), rand(&ks, 6));
    let w = rand(&qs, 7);
    let loss = |q: &Tensor, k: &Tensor, v: &Tensor| -> Tensor {
        (fused_attention(q, k, v, m, rep, 0.7).unwrap() * &w)
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let (q, k, v) = (
        Var::from_tensor(&q0).unwrap(),
        Var::from_tensor(&k0).unwrap(),
        Var::from_tensor(&v0).unwrap(),
    );
    let grads = loss(q.as_tensor(), k.as_tensor(), v.as_tensor())
        .backward()
        .unwrap();
    let eps = 1e-6;
    for (which, base) in [(0, &q0), (1, &k0), (2, &v0)] {
        let g = grads
            .get([q.as_tensor(), k.as_tensor(), v.as_tensor()][which])
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let flat = base.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let mut nonzero = 0;
        for idx in (0..flat.len()).step_by(3) {
            let bump = |dx: f64| {
                let mut f = flat.clone();
                f[idx] += dx;
                let t = Tensor::from_vec(f, base.shape(), &Device::Cpu).unwrap();
                let args = match which {
                    0 => (t, k0.clone(), v0.clone()),
                    1 => (q0.clone(), t, v0.clone()),
                    _ => (q0.clone(), k0.clone(), t),
                };
                loss(&args.0, &args.1, &args.2).to_scalar::<f64>().unwrap()
            };
            let fd = (bump(eps) - bump(-eps)) / (2.0 * eps);
            assert!(
                (fd - g[idx]).abs() < 1e-6 * (1.0 + fd.abs()),
                "input {which} element {idx}: autograd {} vs finite difference {fd}",
                g[idx]
            );
            if fd.abs() > 1e-4 {
                nonzero += 1;
            }
        }
        assert!(
            nonzero > 5,
            "input {which}: too few non-zero gradients to check"
        );
    }
}

/// Select rows (of every head) of a (1, nkv, rows, d) tensor.
/// The largest |a - b| of two f64 tensors.
fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn rows(x: &Tensor, per_head: usize, r0: usize, r1: usize) -> Tensor {
    let parts: Vec<Tensor> = (0..x.dim(2).unwrap() / per_head)
        .map(|h| x.narrow(2, h * per_head + r0, r1 - r0).unwrap())
        .collect();
    Tensor::cat(&parts, 2).unwrap()
}

#[test]
fn packed_sequences_see_only_the_prefix_and_themselves() {
    let (nkv, rep, d, past) = (2, 2, 4, 2);
    let lens = [3usize, 2];
    let s: usize = lens.iter().sum();
    let m = AttnMask::packed(past, 0, &lens);
    let q = rand(&[1, nkv, rep * s, d], 21);
    let k = rand(&[1, nkv, past + s, d], 22);
    let v = rand(&[1, nkv, past + s, d], 23);
    let got = fused_attention(&q, &k, &v, &m, rep, 0.6).unwrap();
    let mut o = 0;
    for &n in &lens {
        // the same sequence alone, causal, after the prefix
        let qs = rows(&q, s, o, o + n);
        let cat = |x: &Tensor| {
            Tensor::cat(
                &[
                    x.narrow(2, 0, past).unwrap(),
                    x.narrow(2, past + o, n).unwrap(),
                ],
                2,
            )
            .unwrap()
        };
        let alone = AttnMask::causal(1, n, past, vec![true; past + n], QUERY_BLOCK);
        let want = fused_attention(&qs, &cat(&k), &cat(&v), &alone, rep, 0.6).unwrap();
        let diff = max_diff(&rows(&got, s, o, o + n), &want);
        assert!(diff < 1e-12, "sequence at {o}: max difference {diff}");
        o += n;
    }
}

#[test]
fn exp_f32_is_within_float_rounding_of_exp() {
    let mut worst = 0f64;
    let mut x = -87.0f32;
    while x <= 88.0 {
        let want = (x as f64).exp();
        let got = exp_f32(x) as f64;
        worst = worst.max((got - want).abs() / want);
        x += 0.0137;
    }
    assert!(worst < 5e-7, "largest relative error {worst}");
    assert_eq!(exp_f32(0.0), 1.0);
    // below the range: 0 (a masked -inf score weighs nothing), never a NaN or a negative
    for x in [-88.0f32, -200.0, f32::NEG_INFINITY] {
        let v = exp_f32(x);
        assert!((0.0..2e-38).contains(&v), "exp({x}) = {v}");
    }
}

/// The f32 path (the vectorised softmax without padding) against the f64 one, over enough
/// keys that the 16-lane sums and their remainders both run.
#[test]
fn f32_attention_without_padding_matches_f64() {
    let (nkv, rep, d, past, s) = (2, 2, 8, 3, 37);
    let m = AttnMask::causal(1, s, past, vec![true; past + s], QUERY_BLOCK);
    let q = rand(&[1, nkv, rep * s, d], 31);
    let k = (rand(&[1, nkv, past + s, d], 32) * 3.0).unwrap();
    let v = rand(&[1, nkv, past + s, d], 33);
    let want = fused_attention(&q, &k, &v, &m, rep, 0.4).unwrap();
    let f = |x: &Tensor| x.to_dtype(candle_core::DType::F32).unwrap();
    let got = fused_attention(&f(&q), &f(&k), &f(&v), &m, rep, 0.4).unwrap();
    let diff = max_diff(&got.to_dtype(candle_core::DType::F64).unwrap(), &want);
    assert!(diff < 1e-5, "max difference {diff}");
}
