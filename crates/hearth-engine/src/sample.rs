//! Turning logits into the next token: greedy, or temperature sampling with the usual filters,
//! reproducible for a given seed.

use std::collections::VecDeque;

/// Sampling settings; the defaults are plain greedy decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    /// 0 means greedy (always the most likely token).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p`; 1 keeps all.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 keeps all.
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recently seen tokens; 1 disables.
    pub repeat_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

/// Stateful sampler: remembers recent tokens (for the penalty) and its random stream.
#[derive(Debug, Clone)]
pub struct Sampler {
    config: SamplerConfig,
    rng: SplitMix64,
    recent: VecDeque<u32>,
    candidates: Vec<(u32, f32)>,
    probs: Vec<f64>,
}

impl Sampler {
    pub fn new(config: SamplerConfig) -> Sampler {
        Sampler {
            rng: SplitMix64(config.seed),
            recent: VecDeque::with_capacity(config.repeat_last_n),
            candidates: Vec::new(),
            probs: Vec::new(),
            config,
        }
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// Records a token of the context (prompt or generated) for the repetition penalty.
    pub fn accept(&mut self, token: u32) {
        if self.config.repeat_last_n == 0 {
            return;
        }
        if self.recent.len() == self.config.repeat_last_n {
            self.recent.pop_front();
        }
        self.recent.push_back(token);
    }

    /// Advances the random stream as `n` samples would have, so a sampler rebuilt elsewhere to
    /// continue a sequence draws what the original would have drawn next.
    pub fn skip_draws(&mut self, n: u64) {
        if self.config.temperature > 0.0 {
            for _ in 0..n {
                self.rng.next_f64();
            }
        }
    }

    /// Picks the next token from `logits`.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let c = &self.config;
        self.candidates.clear();
        self.candidates
            .extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        if c.repeat_penalty != 1.0 {
            for &t in &self.recent {
                if let Some(cand) = self.candidates.get_mut(t as usize) {
                    // Penalize each distinct token once, however often it recurs.
                    if cand.0 == t {
                        cand.1 = if cand.1 > 0.0 {
                            cand.1 / c.repeat_penalty
                        } else {
                            cand.1 * c.repeat_penalty
                        };
                        cand.0 = u32::MAX;
                    }
                }
            }
            for (i, cand) in self.candidates.iter_mut().enumerate() {
                cand.0 = i as u32;
            }
        }
        if c.temperature <= 0.0 {
            return argmax(&self.candidates);
        }
        // Most likely first; ties broken by lower id so results do not depend on sort order.
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let k = if c.top_k > 0 {
            c.top_k.min(self.candidates.len())
        } else {
            self.candidates.len()
        };
        if k < self.candidates.len() {
            self.candidates.select_nth_unstable_by(k - 1, by_logit);
            self.candidates.truncate(k);
        }
        self.candidates.sort_unstable_by(by_logit);
        let max = self.candidates[0].1;
        let probs = &mut self.probs;
        probs.clear();
        probs.extend(
            self.candidates
                .iter()
                .map(|&(_, l)| (((l - max) / c.temperature) as f64).exp()),
        );
        let total: f64 = probs.iter().sum();
        for p in probs.iter_mut() {
            *p /= total;
        }
        let mut keep = probs.len();
        if c.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= c.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
        }
        if c.min_p > 0.0 {
            let threshold = probs[0] * c.min_p as f64;
            keep = keep.min(probs.iter().take_while(|&&p| p >= threshold).count().max(1));
        }
        let total: f64 = probs[..keep].iter().sum();
        let mut target = self.rng.next_f64() * total;
        for (i, p) in probs[..keep].iter().enumerate() {
            if target < *p {
                return self.candidates[i].0;
            }
            target -= p;
        }
        self.candidates[keep - 1].0
    }
}

/// Index of the largest of `logits`, the lowest index among equals.
pub fn argmax_logits(logits: &[f32]) -> u32 {
    let mut best = (0u32, f32::NEG_INFINITY);
    for (i, &l) in logits.iter().enumerate() {
        if l > best.1 {
            best = (i as u32, l);
        }
    }
    best.0
}

/// Index of the largest logit, the lowest index among equals.
pub fn argmax(candidates: &[(u32, f32)]) -> u32 {
    let mut best = (0u32, f32::NEG_INFINITY);
    for &(i, l) in candidates {
        if l > best.1 {
            best = (i, l);
        }
    }
    best.0
}

#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 bits of precision.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![0.5, 2.0, -1.0, 1.9, 0.0, 3.0, -3.0]
    }

    #[test]
    fn greedy_picks_the_largest() {
        assert_eq!(Sampler::new(SamplerConfig::default()).sample(&logits()), 5);
    }

    #[test]
    fn repeat_penalty_can_change_the_choice() {
        let mut s = Sampler::new(SamplerConfig {
            repeat_penalty: 2.0,
            ..Default::default()
        });
        s.accept(5);
        assert_eq!(s.sample(&logits()), 1);
    }

    #[test]
    fn a_sampler_that_skips_the_draws_made_continues_the_stream() {
        let config = SamplerConfig {
            temperature: 1.0,
            seed: 7,
            ..Default::default()
        };
        let mut whole = Sampler::new(config.clone());
        let all: Vec<u32> = (0..40).map(|_| whole.sample(&logits())).collect();
        let mut resumed = Sampler::new(config);
        resumed.skip_draws(25);
        let rest: Vec<u32> = (25..40).map(|_| resumed.sample(&logits())).collect();
        assert_eq!(rest, all[25..]);
    }

    #[test]
    fn same_seed_same_tokens() {
        let config = SamplerConfig {
            temperature: 1.0,
            seed: 42,
            ..Default::default()
        };
        let run = |config: &SamplerConfig| {
            let mut s = Sampler::new(config.clone());
            (0..50).map(|_| s.sample(&logits())).collect::<Vec<_>>()
        };
        assert_eq!(run(&config), run(&config));
        let other = run(&SamplerConfig {
            seed: 43,
            ..config.clone()
        });
        assert_ne!(run(&config), other);
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(SamplerConfig {
            temperature: 5.0,
            top_k: 1,
            seed: 7,
            ..Default::default()
        });
        for _ in 0..20 {
            assert_eq!(s.sample(&logits()), 5);
        }
    }

    #[test]
    fn top_p_and_min_p_restrict_the_support() {
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_p: 0.5,
            seed: 1,
            ..Default::default()
        });
        for _ in 0..50 {
            assert_eq!(s.sample(&logits()), 5);
        }
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            min_p: 0.3,
            seed: 1,
            ..Default::default()
        });
        for _ in 0..100 {
            assert!([5, 1, 3].contains(&s.sample(&logits())));
        }
    }

    #[test]
    fn high_temperature_samples_spread() {
        let mut s = Sampler::new(SamplerConfig {
            temperature: 100.0,
            seed: 3,
            ..Default::default()
        });
        let distinct: std::collections::HashSet<u32> =
            (0..200).map(|_| s.sample(&logits())).collect();
        assert!(distinct.len() >= 5);
    }
}
