//! SentencePiece-style tokenization as llama.cpp's SPM tokenizer does it: start from UTF-8
//! characters, repeatedly merge the adjacent pair whose concatenation is the vocabulary token with
//! the highest score, and fall back to `<0xXX>` byte tokens for whatever is left unknown.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// What the SPM algorithm needs from the vocabulary.
pub(crate) trait SpmVocab {
    fn token_id(&self, text: &str) -> Option<u32>;
    fn score(&self, id: u32) -> f32;
    /// The token for a raw byte: `<0xXX>`, or failing that the byte itself as a one-character
    /// token, as llama.cpp's `byte_to_token` looks it up.
    fn byte_token(&self, byte: u8) -> Option<u32>;
}

#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}

impl Ord for Bigram {
    // BinaryHeap pops the greatest: highest score first, then leftmost.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Tokenizes `text` (spaces already replaced by U+2581) and appends the ids to `out`.
pub(crate) fn tokenize<V: SpmVocab>(vocab: &V, text: &str, out: &mut Vec<u32>) {
    let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
    for (i, (start, c)) in text.char_indices().enumerate() {
        symbols.push(Symbol {
            start,
            len: c.len_utf8(),
            prev: i.checked_sub(1),
            next: Some(i + 1),
        });
    }
    if let Some(last) = symbols.last_mut() {
        last.next = None;
    }
    if symbols.is_empty() {
        return;
    }
    let mut heap = BinaryHeap::new();
    // Which pair produced a merged text, to re-split symbols that are not tokens. Bounded by the
    // number of bigrams tried for this one call.
    let mut rev_merge: HashMap<String, (usize, usize)> = HashMap::new();
    let try_add = |heap: &mut BinaryHeap<Bigram>,
                   rev_merge: &mut HashMap<String, (usize, usize)>,
                   symbols: &[Symbol],
                   left: Option<usize>,
                   right: Option<usize>| {
        let (Some(l), Some(r)) = (left, right) else {
            return;
        };
        let (ls, rs) = (symbols[l], symbols[r]);
        let joined = &text[ls.start..rs.start + rs.len];
        let Some(id) = vocab.token_id(joined) else {
            return;
        };
        heap.push(Bigram {
            score: vocab.score(id),
            left: l,
            right: r,
            size: joined.len(),
        });
        rev_merge.insert(joined.to_string(), (l, r));
    };
    for i in 1..symbols.len() {
        try_add(&mut heap, &mut rev_merge, &symbols, Some(i - 1), Some(i));
    }
    while let Some(bg) = heap.pop() {
        let (l, r) = (bg.left, bg.right);
        if symbols[l].len == 0 || symbols[r].len == 0 || symbols[l].len + symbols[r].len != bg.size
        {
            continue;
        }
        symbols[l].len += symbols[r].len;
        symbols[r].len = 0;
        let next = symbols[r].next;
        symbols[l].next = next;
        if let Some(n) = next {
            symbols[n].prev = Some(l);
        }
        let prev = symbols[l].prev;
        try_add(&mut heap, &mut rev_merge, &symbols, prev, Some(l));
        try_add(&mut heap, &mut rev_merge, &symbols, Some(l), next);
    }
    let mut i = Some(0);
    while let Some(idx) = i {
        resegment(vocab, text, &symbols, &rev_merge, idx, out, 0);
        i = symbols[idx].next;
    }
}

fn resegment<V: SpmVocab>(
    vocab: &V,
    text: &str,
    symbols: &[Symbol],
    rev_merge: &HashMap<String, (usize, usize)>,
    idx: usize,
    out: &mut Vec<u32>,
    depth: usize,
) {
    let s = symbols[idx];
    let piece = &text[s.start..s.start + s.len];
    if let Some(id) = vocab.token_id(piece) {
        out.push(id);
        return;
    }
    // The depth bound only guards against a malformed vocabulary; real splits are shallow.
    match rev_merge.get(piece) {
        Some(&(l, r)) if depth < 64 => {
            resegment(vocab, text, symbols, rev_merge, l, out, depth + 1);
            resegment(vocab, text, symbols, rev_merge, r, out, depth + 1);
        }
        _ => {
            for b in piece.bytes() {
                if let Some(id) = vocab.byte_token(b) {
                    out.push(id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Vocab {
        ids: HashMap<String, u32>,
        scores: Vec<f32>,
    }

    impl Vocab {
        fn new(entries: &[(&str, f32)]) -> Self {
            let ids = entries
                .iter()
                .enumerate()
                .map(|(i, (t, _))| (t.to_string(), i as u32))
                .collect();
            let scores = entries.iter().map(|e| e.1).collect();
            Vocab { ids, scores }
        }
    }

    impl SpmVocab for Vocab {
        fn token_id(&self, text: &str) -> Option<u32> {
            self.ids.get(text).copied()
        }
        fn score(&self, id: u32) -> f32 {
            self.scores[id as usize]
        }
        fn byte_token(&self, byte: u8) -> Option<u32> {
            self.ids.get(&format!("<0x{byte:02X}>")).copied()
        }
    }

    #[test]
    fn highest_score_merges_first() {
        let v = Vocab::new(&[
            ("a", 0.0),
            ("b", 0.0),
            ("c", 0.0),
            ("ab", -1.0),
            ("bc", -0.5),
        ]);
        let mut out = Vec::new();
        tokenize(&v, "abc", &mut out);
        // "bc" (score -0.5) beats "ab" (-1); "a"+"bc" is not a token.
        assert_eq!(out, [0, 4]);
    }

    #[test]
    fn unknown_characters_fall_back_to_bytes() {
        let mut entries: Vec<(String, f32)> =
            (0..=255u8).map(|b| (format!("<0x{b:02X}>"), 0.0)).collect();
        entries.push(("x".into(), 0.0));
        let refs: Vec<(&str, f32)> = entries.iter().map(|(s, f)| (s.as_str(), *f)).collect();
        let v = Vocab::new(&refs);
        let mut out = Vec::new();
        tokenize(&v, "xé", &mut out);
        assert_eq!(out, [256, 0xC3, 0xA9]);
    }
}
