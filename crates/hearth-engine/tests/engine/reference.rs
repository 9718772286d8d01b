//! A plain f32 forward pass over the dequantized weights: the definition the engine's logits
//! are checked against. Written for readability, one token and one head at a time.

use crate::model::{Arch, TestModel, RMS_EPS};

fn rms_norm(x: &[f32], weight: &[f32]) -> Vec<f32> {
    let mean_square = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / x.len() as f64;
    let scale = 1.0 / (mean_square + RMS_EPS as f64).sqrt();
    x.iter()
        .zip(weight)
        .map(|(&v, &w)| (v as f64 * scale) as f32 * w)
        .collect()
}

/// Rotates one head in place: pair `i` turns by `pos * base^(-2i/d)`. Llama pairs adjacent
/// dimensions `(2i, 2i+1)`; qwen2 (NeoX style) pairs the halves `(i, i + d/2)`.
fn rope(head: &mut [f32], pos: usize, base: f32, arch: Arch) {
    let d = head.len();
    for i in 0..d / 2 {
        let theta = pos as f64 * (base as f64).powf(-2.0 * i as f64 / d as f64);
        let (sin, cos) = theta.sin_cos();
        let (a, b) = match arch {
            Arch::Llama => (2 * i, 2 * i + 1),
            Arch::Qwen2 => (i, i + d / 2),
        };
        let (x, y) = (head[a] as f64, head[b] as f64);
        head[a] = (x * cos - y * sin) as f32;
        head[b] = (x * sin + y * cos) as f32;
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// Logits for every position of `tokens` (`tokens.len() * vocab` values), as one causal pass.
pub fn forward(model: &TestModel, tokens: &[u32]) -> Vec<f32> {
    let s = &model.spec;
    let w = &model.weights;
    let hd = s.head_dim();
    let group = s.n_head / s.n_head_kv;
    let mut x: Vec<Vec<f32>> = tokens
        .iter()
        .map(|&t| w.embedding.row(t as usize).to_vec())
        .collect();

    for layer in &w.layers {
        let mut qs = Vec::new();
        let mut ks = Vec::new();
        let mut vs = Vec::new();
        for (pos, xt) in x.iter().enumerate() {
            let xn = rms_norm(xt, &layer.attn_norm);
            let mut q = layer.wq.mul_vec(&xn);
            let mut k = layer.wk.mul_vec(&xn);
            let mut v = layer.wv.mul_vec(&xn);
            if let Some([bq, bk, bv]) = &layer.biases {
                for (out, bias) in [(&mut q, bq), (&mut k, bk), (&mut v, bv)] {
                    for (o, b) in out.iter_mut().zip(bias) {
                        *o += b;
                    }
                }
            }
            for head in q.chunks_exact_mut(hd).chain(k.chunks_exact_mut(hd)) {
                rope(head, pos, s.arch.rope_base(), s.arch);
            }
            qs.push(q);
            ks.push(k);
            vs.push(v);
        }
        for (pos, xt) in x.iter_mut().enumerate() {
            let mut attn = vec![0f32; s.q_dim()];
            for h in 0..s.n_head {
                // Grouped-query attention: query heads share key/value heads in order.
                let kvh = h / group;
                let q = &qs[pos][h * hd..(h + 1) * hd];
                let scores: Vec<f64> = (0..=pos)
                    .map(|j| dot(q, &ks[j][kvh * hd..(kvh + 1) * hd]) / (hd as f64).sqrt())
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = exps.iter().sum();
                for (j, e) in exps.iter().enumerate() {
                    let v = &vs[j][kvh * hd..(kvh + 1) * hd];
                    for (o, &vv) in attn[h * hd..(h + 1) * hd].iter_mut().zip(v) {
                        *o += (e / total * vv as f64) as f32;
                    }
                }
            }
            for (a, b) in xt.iter_mut().zip(layer.wo.mul_vec(&attn)) {
                *a += b;
            }
            let xn = rms_norm(xt, &layer.ffn_norm);
            let gate = layer.w_gate.mul_vec(&xn);
            let up = layer.w_up.mul_vec(&xn);
            let hidden: Vec<f32> = gate
                .iter()
                .zip(&up)
                .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            for (a, b) in xt.iter_mut().zip(layer.w_down.mul_vec(&hidden)) {
                *a += b;
            }
        }
    }

    x.iter()
        .flat_map(|xt| w.head().mul_vec(&rms_norm(xt, &w.output_norm)))
        .collect()
}
