//! Per-sequence key/value cache for the layers of one shard, stored as f16 like llama.cpp's
//! default cache.

use half::f16;

/// Keys and values of one sequence: `[layer][position][kv_dim]` each.
#[derive(Debug)]
pub struct SequenceCache {
    keys: Vec<f16>,
    values: Vec<f16>,
    layers: usize,
    kv_dim: usize,
    capacity: usize,
    len: usize,
}

impl SequenceCache {
    pub fn new(layers: usize, kv_dim: usize, capacity: usize) -> SequenceCache {
        let size = layers * capacity * kv_dim;
        SequenceCache {
            keys: vec![f16::ZERO; size],
            values: vec![f16::ZERO; size],
            layers,
            kv_dim,
            capacity,
            len: 0,
        }
    }

    /// Bytes a cache of this shape occupies.
    pub fn bytes_for(layers: usize, kv_dim: usize, capacity: usize) -> u64 {
        2 * (layers * kv_dim * capacity * std::mem::size_of::<f16>()) as u64
    }

    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets positions from `len` on (the next forward pass continues from there).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub(crate) fn set_len(&mut self, len: usize) {
        debug_assert!(len <= self.capacity);
        self.len = len;
    }

    fn offset(&self, layer: usize, position: usize) -> usize {
        debug_assert!(layer < self.layers && position < self.capacity);
        (layer * self.capacity + position) * self.kv_dim
    }

    pub fn store(&mut self, layer: usize, position: usize, key: &[f32], value: &[f32]) {
        let at = self.offset(layer, position);
        for (dst, &src) in self.keys[at..at + self.kv_dim].iter_mut().zip(key) {
            *dst = f16::from_f32(src);
        }
        for (dst, &src) in self.values[at..at + self.kv_dim].iter_mut().zip(value) {
            *dst = f16::from_f32(src);
        }
    }

    /// Keys of positions `0..positions` of `layer`, `kv_dim` values per position.
    pub fn keys(&self, layer: usize, positions: usize) -> &[f16] {
        let at = self.offset(layer, 0);
        &self.keys[at..at + positions * self.kv_dim]
    }

    pub fn values(&self, layer: usize, positions: usize) -> &[f16] {
        let at = self.offset(layer, 0);
        &self.values[at..at + positions * self.kv_dim]
    }
}
