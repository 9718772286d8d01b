//! Byte-level BPE: GPT-2's byte-to-character mapping and merging by rank, in llama.cpp's order.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::sync::OnceLock;

/// GPT-2's reversible mapping of bytes to printable characters: printable Latin-1 bytes map to
/// themselves, the rest to U+0100 onwards in byte order.
pub(crate) fn byte_to_char(b: u8) -> char {
    byte_tables().0[b as usize]
}

/// The byte a mapped character stands for, if it is one of the 256.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    byte_tables().1.get(&c).copied()
}

#[allow(clippy::type_complexity)]
fn byte_tables() -> &'static ([char; 256], HashMap<char, u8>) {
    static TABLES: OnceLock<([char; 256], HashMap<char, u8>)> = OnceLock::new();
    TABLES.get_or_init(|| {
        let printable = |b: u8| matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
        let mut forward = ['\0'; 256];
        let mut n = 0u32;
        for b in 0..=255u8 {
            forward[b as usize] = if printable(b) {
                char::from(b)
            } else {
                n += 1;
                // 256 + n - 1 is at most 256 + 68, always a valid scalar value.
                char::from_u32(255 + n).unwrap_or('\u{FFFD}')
            };
        }
        let backward = forward
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        (forward, backward)
    })
}

/// Maps the raw bytes of `word` to the byte-level alphabet.
pub(crate) fn byte_encode(word: &str, out: &mut String) {
    out.clear();
    for b in word.bytes() {
        out.push(byte_to_char(b));
    }
}

/// Merge ranks keyed by `"left right"`. Byte-level symbols never contain a raw space (it is mapped
/// to `Ġ`), so joining with one space is unambiguous.
#[derive(Debug, Default)]
pub(crate) struct MergeRanks {
    ranks: HashMap<String, u32>,
}

impl MergeRanks {
    /// Records a merge unless the same pair was already ranked (first occurrence wins, as with
    /// `unordered_map::emplace`).
    pub(crate) fn insert(&mut self, left: &str, right: &str, rank: u32) {
        let mut key = String::with_capacity(left.len() + right.len() + 1);
        key.push_str(left);
        key.push(' ');
        key.push_str(right);
        self.ranks.entry(key).or_insert(rank);
    }

    fn rank(&self, left: &str, right: &str, buf: &mut String) -> Option<u32> {
        buf.clear();
        buf.push_str(left);
        buf.push(' ');
        buf.push_str(right);
        self.ranks.get(buf.as_str()).copied()
    }

    pub(crate) fn len(&self) -> usize {
        self.ranks.len()
    }
}

#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

#[derive(PartialEq, Eq)]
struct Bigram {
    rank: u32,
    left: usize,
    right: usize,
    size: usize,
}

impl Ord for Bigram {
    // BinaryHeap pops the greatest: lowest rank first, then leftmost.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .rank
            .cmp(&self.rank)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Splits one byte-encoded word into the substrings that BPE merging leaves.
pub(crate) fn merge_word<'w>(word: &'w str, ranks: &MergeRanks) -> Vec<&'w str> {
    let mut symbols: Vec<Symbol> = Vec::with_capacity(word.len());
    for (i, (start, c)) in word.char_indices().enumerate() {
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
    let mut buf = String::new();
    let mut heap = BinaryHeap::new();
    let text = |s: &Symbol| &word[s.start..s.start + s.len];
    let push = |heap: &mut BinaryHeap<Bigram>,
                symbols: &[Symbol],
                buf: &mut String,
                left: Option<usize>,
                right: Option<usize>| {
        let (Some(l), Some(r)) = (left, right) else {
            return;
        };
        let (ls, rs) = (&symbols[l], &symbols[r]);
        if let Some(rank) = ranks.rank(text(ls), text(rs), buf) {
            heap.push(Bigram {
                rank,
                left: l,
                right: r,
                size: ls.len + rs.len,
            });
        }
    };
    for i in 1..symbols.len() {
        push(&mut heap, &symbols, &mut buf, Some(i - 1), Some(i));
    }
    while let Some(bg) = heap.pop() {
        let (l, r) = (bg.left, bg.right);
        // Symbols only grow or vanish, so an unchanged total size means both are unchanged.
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
        push(&mut heap, &symbols, &mut buf, prev, Some(l));
        push(&mut heap, &symbols, &mut buf, Some(l), next);
    }
    symbols
        .iter()
        .filter(|s| s.len > 0)
        .map(|s| &word[s.start..s.start + s.len])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_mapping_round_trips() {
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'a'), 'a');
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
    }

    #[test]
    fn merges_follow_rank_then_position() {
        let mut ranks = MergeRanks::default();
        ranks.insert("a", "b", 1);
        ranks.insert("b", "c", 0);
        ranks.insert("a", "bc", 2);
        assert_eq!(merge_word("abc", &ranks), ["abc"]);
        let mut ranks = MergeRanks::default();
        ranks.insert("a", "a", 0);
        // Equal ranks: the leftmost pair merges first.
        assert_eq!(merge_word("aaa", &ranks), ["aa", "a"]);
        assert_eq!(merge_word("aaaa", &ranks), ["aa", "aa"]);
    }

    #[test]
    fn first_duplicate_merge_wins() {
        let mut ranks = MergeRanks::default();
        ranks.insert("x", "y", 3);
        ranks.insert("x", "y", 9);
        let mut buf = String::new();
        assert_eq!(ranks.rank("x", "y", &mut buf), Some(3));
        assert_eq!(ranks.len(), 1);
    }
}
