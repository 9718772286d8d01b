//! The cost model of `../shared/fleets/README.md` as plain functions. Search, baselines, the
//! plan's report and the tests' independent checks all price a plan through these.

use crate::fleet::{Fleet, Precision};
use crate::model::ModelProfile;

/// Prompt length of the reported prefill time.
pub const PREFILL_TOKENS: usize = 512;
/// The ring hop last → first carries one token id.
pub const TOKEN_ID_BYTES: f64 = 4.0;

/// One stage of a pipeline: `device` runs layers `first_layer..end_layer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageSpec {
    pub device: usize,
    pub first_layer: usize,
    pub end_layer: usize,
}

/// Weight bytes of the model's ends held by a stage: the embedding on the first stage, the head
/// on the last, and with tied embeddings the embedding again on a last stage that is not also
/// the first (it serves as the head there; a device holding it once counts it once).
pub fn end_bytes(m: &ModelProfile, first: bool, last: bool) -> u64 {
    let mut b = 0;
    if first || (last && m.tied_embeddings) {
        b += m.embedding_bytes;
    }
    if last {
        b += m.head_bytes;
    }
    b
}

pub fn layer_bytes(m: &ModelProfile, first_layer: usize, end_layer: usize) -> u64 {
    m.layer_bytes[first_layer..end_layer].iter().sum()
}

pub fn kv_bytes(m: &ModelProfile, layers: usize, context: usize) -> u64 {
    m.kv_bytes_per_token_per_layer() * layers as u64 * context as u64
}

/// Weight bytes a stage holds.
pub fn stage_weight_bytes(m: &ModelProfile, a: usize, b: usize, first: bool, last: bool) -> u64 {
    layer_bytes(m, a, b) + end_bytes(m, first, last)
}

/// Weights plus KV cache for `context` tokens: what must fit in the device's memory.
pub fn stage_memory(
    m: &ModelProfile,
    a: usize,
    b: usize,
    first: bool,
    last: bool,
    context: usize,
) -> u64 {
    stage_weight_bytes(m, a, b, first, last) + kv_bytes(m, b - a, context)
}

/// Bytes of the head a last stage reads per token (the embedding matrix when tied).
pub fn head_read_bytes(m: &ModelProfile) -> u64 {
    m.head_bytes
        + if m.tied_embeddings {
            m.embedding_bytes
        } else {
            0
        }
}

pub fn head_read_params(m: &ModelProfile) -> u64 {
    m.head_params
        + if m.tied_embeddings {
            m.embedding_params
        } else {
            0
        }
}

/// Weight bytes a stage reads per decoded token: its layers, and the head on the last stage.
/// The embedding lookup reads one row, which the model leaves out.
pub fn stage_read_bytes(m: &ModelProfile, a: usize, b: usize, last: bool) -> u64 {
    layer_bytes(m, a, b) + if last { head_read_bytes(m) } else { 0 }
}

pub fn stage_params(m: &ModelProfile, a: usize, b: usize, last: bool) -> u64 {
    m.layer_params[a..b].iter().sum::<u64>() + if last { head_read_params(m) } else { 0 }
}

/// The activation dtype of a plan over these devices: f16 when all list f16, else f32 when all
/// list f32, else none (some device could not compute in the dtype hidden states travel in).
pub fn act_dtype<'a>(
    devices: impl IntoIterator<Item = &'a crate::fleet::Device>,
) -> Option<Precision> {
    let (mut f16, mut f32) = (true, true);
    for d in devices {
        f16 &= d.supports(Precision::F16);
        f32 &= d.supports(Precision::F32);
    }
    if f16 {
        Some(Precision::F16)
    } else if f32 {
        Some(Precision::F32)
    } else {
        None
    }
}

/// Bytes of hidden state for `tokens` tokens.
pub fn hidden_bytes(m: &ModelProfile, act: Precision, tokens: usize) -> f64 {
    tokens as f64 * m.hidden_size as f64 * act.bytes() as f64
}

/// A plan's predicted times.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    pub act_dtype: Precision,
    /// Seconds per decoded token, one sequence.
    pub decode_s: f64,
    /// Slowest stage or hop: the pipeline's period with many streams in flight.
    pub bottleneck_s: f64,
    /// Seconds to prefill [`PREFILL_TOKENS`] tokens.
    pub prefill_s: f64,
}

impl Prediction {
    pub fn decode_tok_s(&self) -> f64 {
        1.0 / self.decode_s
    }

    pub fn throughput_tok_s(&self) -> f64 {
        1.0 / self.bottleneck_s
    }
}

/// Prices a pipeline plan; `None` when consecutive stages (or last and first) are not linked
/// or no activation dtype suits every device. Memory is not checked here.
pub fn predict(fleet: &Fleet, m: &ModelProfile, stages: &[StageSpec]) -> Option<Prediction> {
    let act = act_dtype(stages.iter().map(|s| &fleet.devices()[s.device]))?;
    let mut decode = 0.0;
    let mut bottleneck: f64 = 0.0;
    let mut prefill = 0.0;
    let k = stages.len();
    for (i, s) in stages.iter().enumerate() {
        let d = &fleet.devices()[s.device];
        let last = i + 1 == k;
        let t = stage_read_bytes(m, s.first_layer, s.end_layer, last) as f64 / d.read_rate();
        decode += t;
        bottleneck = bottleneck.max(t);
        prefill +=
            2.0 * stage_params(m, s.first_layer, s.end_layer, last) as f64 * PREFILL_TOKENS as f64
                / d.flop_rate();
    }
    if k > 1 {
        for i in 0..k {
            let (from, to) = (stages[i].device, stages[(i + 1) % k].device);
            let link = fleet.link(from, to)?;
            let (dec_bytes, pre_bytes) = if i + 1 < k {
                (
                    hidden_bytes(m, act, 1),
                    hidden_bytes(m, act, PREFILL_TOKENS),
                )
            } else {
                (TOKEN_ID_BYTES, TOKEN_ID_BYTES)
            };
            let t = link.transfer_s(dec_bytes);
            decode += t;
            bottleneck = bottleneck.max(t);
            prefill += link.transfer_s(pre_bytes);
        }
    }
    Some(Prediction {
        act_dtype: act,
        decode_s: decode,
        bottleneck_s: bottleneck,
        prefill_s: prefill,
    })
}

/// Memory each stage needs, in stage order.
pub fn stage_memories(m: &ModelProfile, stages: &[StageSpec], context: usize) -> Vec<u64> {
    let k = stages.len();
    stages
        .iter()
        .enumerate()
        .map(|(i, s)| stage_memory(m, s.first_layer, s.end_layer, i == 0, i + 1 == k, context))
        .collect()
}

/// Memory the whole model needs when it runs on one device.
pub fn whole_model_memory(m: &ModelProfile, context: usize) -> u64 {
    stage_memory(m, 0, m.n_layers(), true, true, context)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{Backend, Device, Link};

    fn dev(name: &str, bw: f64, precisions: Vec<Precision>) -> Device {
        Device {
            name: name.into(),
            backend: Backend::Cpu,
            memory_gib: 4.0,
            bandwidth_gbs: bw,
            tflops: 1.0,
            precisions,
            thermal_headroom: 1.0,
            on_battery: false,
        }
    }

    fn model(tied: bool) -> ModelProfile {
        ModelProfile {
            name: "t".into(),
            hidden_size: 1000,
            n_kv_heads: 2,
            head_dim: 64,
            layer_bytes: vec![1_000_000; 4],
            layer_params: vec![2_000_000; 4],
            embedding_bytes: 500_000,
            embedding_params: 1_000_000,
            head_bytes: if tied { 10 } else { 500_010 },
            head_params: if tied { 5 } else { 1_000_005 },
            tied_embeddings: tied,
            tensor_types: vec!["Q4_K".into()],
        }
    }

    #[test]
    fn tied_embedding_counts_once_per_device() {
        let m = model(true);
        assert_eq!(end_bytes(&m, true, true), 500_010);
        assert_eq!(end_bytes(&m, false, true), 500_010);
        assert_eq!(end_bytes(&m, true, false), 500_000);
        assert_eq!(head_read_bytes(&m), 500_010);
        let u = model(false);
        assert_eq!(end_bytes(&u, true, true), 1_000_010);
    }

    #[test]
    fn two_stage_prediction_matches_hand_computation() {
        let m = model(false);
        let fleet = Fleet::new(
            vec![
                dev("a", 100.0, vec![Precision::F32, Precision::F16]),
                dev("b", 50.0, vec![Precision::F32]),
            ],
            vec![Link {
                a: 0,
                b: 1,
                latency_ms: 1.0,
                bandwidth_gbps: 1.0,
            }],
        )
        .unwrap();
        let stages = [
            StageSpec {
                device: 0,
                first_layer: 0,
                end_layer: 3,
            },
            StageSpec {
                device: 1,
                first_layer: 3,
                end_layer: 4,
            },
        ];
        let p = predict(&fleet, &m, &stages).unwrap();
        assert_eq!(p.act_dtype, Precision::F32);
        let s0 = 3e6 / 100e9;
        let s1 = (1e6 + 500_010.0) / 50e9;
        let h0 = 1e-3 + 4000.0 * 8.0 / 1e9;
        let h1 = 1e-3 + 32.0 / 1e9;
        assert!((p.decode_s - (s0 + s1 + h0 + h1)).abs() < 1e-15);
        assert!((p.bottleneck_s - h0).abs() < 1e-15);
        assert_eq!(
            stage_memories(&m, &stages, 10)[1],
            1_000_000 + 500_010 + 2 * 2 * 64 * 2 * 10
        );
    }
}
