//! Turning generated token ids into the text a client sees: whole characters only, and stop
//! strings cut out even when they span several tokens.

use hearth_model::tokenizer::Tokenizer;

/// Removes and returns the longest prefix of `bytes` that is complete UTF-8, so a character
/// split across tokens is sent once whole. Invalid sequences are replaced.
pub fn take_complete_utf8(bytes: &mut Vec<u8>) -> String {
    let keep = match std::str::from_utf8(bytes) {
        Ok(_) => 0,
        Err(e) if e.error_len().is_none() => bytes.len() - e.valid_up_to(),
        Err(_) => 0,
    };
    let tail = bytes.split_off(bytes.len() - keep);
    let done = String::from_utf8_lossy(bytes).into_owned();
    *bytes = tail;
    done
}

/// Decodes a growing list of ids into text increments whose concatenation is exactly
/// `Tokenizer::decode` of all of them. The whole list is decoded each time because the
/// detokenizer's rules look across tokens (SPM's first-token space, clean-up of a space before
/// punctuation); trailing spaces are held back since such a clean-up may still remove them.
pub struct Detokenizer {
    ids: Vec<u32>,
    sent: usize,
}

impl Detokenizer {
    pub fn new() -> Detokenizer {
        Detokenizer {
            ids: Vec::new(),
            sent: 0,
        }
    }

    /// Adds a token; returns the text that is now final.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        self.ids.push(id);
        let full = tok.decode_bytes(&self.ids, false);
        let mut end = full.len();
        while end > self.sent && full[end - 1] == b' ' {
            end -= 1;
        }
        if end <= self.sent {
            return String::new();
        }
        let mut new = full[self.sent..end].to_vec();
        let text = take_complete_utf8(&mut new);
        self.sent = end - new.len();
        text
    }

    /// Whatever is still held back, once no token follows.
    pub fn finish(&mut self, tok: &Tokenizer) -> String {
        let full = tok.decode_bytes(&self.ids, false);
        let rest = full.get(self.sent..).unwrap_or_default();
        self.sent = full.len();
        String::from_utf8_lossy(rest).into_owned()
    }
}

/// Finds stop strings in streamed text. Text that could still be the start of a stop string is
/// held back until it is known not to be.
pub struct StopMatcher {
    stops: Vec<String>,
    longest: usize,
    held: String,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> StopMatcher {
        let stops: Vec<String> = stops.into_iter().filter(|s| !s.is_empty()).collect();
        let longest = stops.iter().map(String::len).max().unwrap_or(0);
        StopMatcher {
            stops,
            longest,
            held: String::new(),
        }
    }

    /// Adds text; returns what may be sent and whether a stop string was reached (the stop
    /// string and anything after it are dropped).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.held.push_str(text);
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first {
            self.held.truncate(at);
            return (std::mem::take(&mut self.held), true);
        }
        // A stop string not yet complete starts within the last `longest - 1` bytes.
        let mut cut = self
            .held
            .len()
            .saturating_sub(self.longest.saturating_sub(1));
        while !self.held.is_char_boundary(cut) {
            cut -= 1;
        }
        let rest = self.held.split_off(cut);
        (std::mem::replace(&mut self.held, rest), false)
    }

    /// The held-back text, once generation has ended without a stop string.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_characters_wait_for_their_last_byte() {
        let euro = "€".as_bytes();
        let mut buf = vec![b'a', euro[0], euro[1]];
        assert_eq!(take_complete_utf8(&mut buf), "a");
        buf.push(euro[2]);
        assert_eq!(take_complete_utf8(&mut buf), "€");
        assert!(buf.is_empty());
    }

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let (text, hit) = m.push(p);
            out += &text;
            if hit {
                return (out, true);
            }
        }
        out += &m.finish();
        (out, false)
    }

    #[test]
    fn stop_strings_match_across_pieces_and_are_dropped() {
        assert_eq!(
            run(&["END"], &["one E", "N", "D two"]),
            ("one ".into(), true)
        );
        assert_eq!(run(&["\n\n"], &["a\n", "\nb"]), ("a".into(), true));
        assert_eq!(run(&["xyz"], &["abc", "xy"]), ("abcxy".into(), false));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(run(&["b", "a"], &["cab"]), ("c".into(), true));
    }

    #[test]
    fn held_text_is_cut_at_character_boundaries() {
        let mut m = StopMatcher::new(vec!["€€€".into()]);
        let (out, hit) = m.push("ab€€");
        assert!(!hit);
        assert!("ab€€".starts_with(&out));
        assert_eq!(out + &m.finish(), "ab€€");
    }
}
