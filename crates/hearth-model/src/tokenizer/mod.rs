//! The tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata, producing the same token
//! ids as llama.cpp: byte-level BPE (`gpt2`) with llama.cpp's pre-tokenizer regex lists, and
//! SentencePiece-style merging (`llama`) with byte fallback.
//!
//! Special tokens (control, user-defined and unknown-type tokens) are cut out of the text first,
//! longest token text first, exactly as llama.cpp's `tokenizer_st_partition`; control and unknown
//! ones only when `parse_special` is set, user-defined ones always.
//!
//! Where llama.cpp only logs (an unknown `tokenizer.ggml.pre`, a special token id outside the
//! vocabulary), loading goes on the same way and the message is kept in [`Tokenizer::warnings`].

mod bpe;
mod load;
mod pretokenize;
mod spm;

use std::collections::{BTreeSet, HashMap};

use crate::gguf::{MetaValue, Metadata};

use pretokenize::PreTokenizer;

/// Why a tokenizer could not be built from metadata.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("metadata key `{0}` is missing")]
    MissingKey(&'static str),
    #[error("metadata key `{key}` has type {found}, expected {expected}")]
    WrongType {
        key: &'static str,
        expected: &'static str,
        found: &'static str,
    },
    #[error("tokenizer model `{0}` is not supported (only `gpt2` and `llama`)")]
    UnsupportedModel(String),
    #[error("the vocabulary is empty")]
    EmptyVocabulary,
    #[error("the vocabulary has {0} tokens, more than 32-bit token ids can address")]
    VocabularyTooLarge(usize),
    #[error("`{key}` has {found} entries but the vocabulary has {expected} tokens")]
    LengthMismatch {
        key: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("token {id} has the same text as token {first}: {text:?}")]
    DuplicateToken { id: u32, first: u32, text: String },
    #[error("merge {index} is not two symbols separated by a space: {text:?}")]
    MalformedMerge { index: usize, text: String },
    #[error("pre-tokenizer regex {pattern:?} does not compile: {message}")]
    Regex { pattern: String, message: String },
}

/// The tokenization algorithm (`tokenizer.ggml.model`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VocabKind {
    /// `gpt2`: byte-level BPE with merges.
    Bpe,
    /// `llama`: SentencePiece-style merging by score.
    Spm,
}

/// A token's type as stored in `tokenizer.ggml.token_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Undefined,
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    fn from_gguf(v: i64) -> TokenType {
        match v {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Undefined,
        }
    }
}

// Token attributes as llama.cpp keeps them; a token can gain CONTROL on top of its type.
const ATTR_UNKNOWN: u8 = 1 << 0;
const ATTR_UNUSED: u8 = 1 << 1;
const ATTR_NORMAL: u8 = 1 << 2;
const ATTR_CONTROL: u8 = 1 << 3;
const ATTR_USER_DEFINED: u8 = 1 << 4;
const ATTR_BYTE: u8 = 1 << 5;

fn attr_of(t: TokenType) -> u8 {
    match t {
        TokenType::Undefined => 0,
        TokenType::Normal => ATTR_NORMAL,
        TokenType::Unknown => ATTR_UNKNOWN,
        TokenType::Control => ATTR_CONTROL,
        TokenType::UserDefined => ATTR_USER_DEFINED,
        TokenType::Unused => ATTR_UNUSED,
        TokenType::Byte => ATTR_BYTE,
    }
}

const KEY_MODEL: &str = "tokenizer.ggml.model";
const KEY_PRE: &str = "tokenizer.ggml.pre";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const KEY_SCORES: &str = "tokenizer.ggml.scores";
const KEY_MERGES: &str = "tokenizer.ggml.merges";
const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const KEY_ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
const KEY_ADD_PREFIX: &str = "tokenizer.ggml.add_space_prefix";

/// Texts llama.cpp recognises as end-of-turn when no `eot_token_id` is given.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];

/// Texts llama.cpp always treats as end of generation.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
];

const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];

/// A tokenizer built from GGUF metadata.
#[derive(Debug)]
pub struct Tokenizer {
    kind: VocabKind,
    pre_name: String,
    pre: Option<PreTokenizer>,
    tokens: Vec<String>,
    attrs: Vec<u8>,
    scores: Vec<f32>,
    token_to_id: HashMap<String, u32>,
    merges: bpe::MergeRanks,
    /// Control, user-defined and unknown tokens, longest text first.
    special_tokens: Vec<u32>,
    /// Every token's bytes as llama.cpp's `token_to_piece(special = true)` gives them, packed.
    piece_data: Vec<u8>,
    piece_ends: Vec<usize>,
    eog: BTreeSet<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    ignore_merges: bool,
    clean_spaces: bool,
    warnings: Vec<String>,
}

impl Tokenizer {
    /// The algorithm in use.
    pub fn kind(&self) -> VocabKind {
        self.kind
    }

    /// The pre-tokenizer regex list in use (`default` when the metadata named none or an unknown
    /// one; see [`Tokenizer::warnings`]). Only meaningful for BPE.
    pub fn pre_tokenizer(&self) -> &str {
        &self.pre_name
    }

    /// Things llama.cpp would have logged while loading this vocabulary.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    pub fn n_vocab(&self) -> usize {
        self.tokens.len()
    }

    pub fn n_merges(&self) -> usize {
        self.merges.len()
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }
    pub fn eom(&self) -> Option<u32> {
        self.eom
    }
    pub fn unk(&self) -> Option<u32> {
        self.unk
    }
    pub fn pad(&self) -> Option<u32> {
        self.pad
    }

    /// Whether the model wants BOS in front of a prompt (`add_bos_token`).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether the model wants EOS after a prompt (`add_eos_token`).
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// The BOS id to put in front of a prompt, if the model asks for one.
    pub fn bos_to_add(&self) -> Option<u32> {
        if self.add_bos {
            self.bos
        } else {
            None
        }
    }

    /// The token's text as stored in the vocabulary.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The id of a token with exactly this text.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        let a = *self.attrs.get(id as usize)?;
        Some(if a & ATTR_BYTE != 0 {
            TokenType::Byte
        } else if a & ATTR_USER_DEFINED != 0 {
            TokenType::UserDefined
        } else if a & ATTR_CONTROL != 0 {
            TokenType::Control
        } else if a & ATTR_UNKNOWN != 0 {
            TokenType::Unknown
        } else if a & ATTR_UNUSED != 0 {
            TokenType::Unused
        } else if a & ATTR_NORMAL != 0 {
            TokenType::Normal
        } else {
            TokenType::Undefined
        })
    }

    pub fn score(&self, id: u32) -> Option<f32> {
        self.scores.get(id as usize).copied()
    }

    /// Control and unknown-type tokens: rendered as nothing unless asked.
    pub fn is_control(&self, id: u32) -> bool {
        self.attrs
            .get(id as usize)
            .is_some_and(|a| a & (ATTR_CONTROL | ATTR_UNKNOWN) != 0)
    }

    /// Whether generating `id` ends the turn (EOS, EOT, EOM and the tokens llama.cpp marks as
    /// end-of-generation by their text, such as `<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`).
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// All end-of-generation ids, ascending.
    pub fn end_of_generation_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.eog.iter().copied()
    }

    /// The bytes token `id` contributes to generated text: what llama.cpp's `token_to_piece`
    /// gives without special rendering, so control tokens give nothing. Byte-level BPE tokens and
    /// SPM byte tokens may be partial UTF-8; concatenate before decoding. Empty for unknown ids.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_piece(id, false)
    }

    /// Like [`Tokenizer::token_bytes`], with `render_special` choosing whether control tokens show
    /// their text.
    pub fn token_piece(&self, id: u32, render_special: bool) -> &[u8] {
        let i = id as usize;
        let Some(&end) = self.piece_ends.get(i) else {
            return &[];
        };
        if !render_special && self.attrs[i] & (ATTR_UNKNOWN | ATTR_CONTROL) != 0 {
            return &[];
        }
        let start = if i == 0 { 0 } else { self.piece_ends[i - 1] };
        &self.piece_data[start..end]
    }

    /// Token ids for `text`, without BOS/EOS; `parse_special` lets control tokens written in the
    /// text (such as `<|im_start|>`) become those tokens. This is what llama.cpp's `/tokenize`
    /// returns when the model's `add_bos_token` is false.
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        self.encode_with_special(text, false, parse_special)
    }

    /// Like llama.cpp's `llama_tokenize`: with `add_special`, BOS and EOS are added where the
    /// model's `add_bos_token`/`add_eos_token` ask for them.
    pub fn encode_with_special(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Vec<u32> {
        let fragments = self.partition(text, parse_special);
        let mut out = Vec::new();
        if add_special && self.add_bos {
            if let Some(b) = self.bos {
                out.push(b);
            }
        }
        match self.kind {
            VocabKind::Bpe => {
                let mut encoded = String::new();
                for f in &fragments {
                    match *f {
                        Fragment::Token(id) => out.push(id),
                        Fragment::Text(s, e) => {
                            self.encode_bpe(&text[s..e], &mut encoded, &mut out)
                        }
                    }
                }
            }
            VocabKind::Spm => {
                let mut prev_special = true;
                for f in &fragments {
                    match *f {
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                        Fragment::Text(s, e) => {
                            let mut piece = String::with_capacity(e - s + 3);
                            if self.add_space_prefix && prev_special {
                                piece.push(' ');
                            }
                            piece.push_str(&text[s..e]);
                            let escaped = piece.replace(' ', "\u{2581}");
                            spm::tokenize(self, &escaped, &mut out);
                            prev_special = false;
                        }
                    }
                }
            }
        }
        if add_special && self.add_eos {
            if let Some(e) = self.eos {
                out.push(e);
            }
        }
        out
    }

    fn encode_bpe(&self, text: &str, encoded: &mut String, out: &mut Vec<u32>) {
        let Some(pre) = &self.pre else { return };
        for word in pre.split(text) {
            bpe::byte_encode(word, encoded);
            if self.ignore_merges {
                if let Some(&id) = self.token_to_id.get(encoded.as_str()) {
                    out.push(id);
                    continue;
                }
            }
            for sym in bpe::merge_word(encoded, &self.merges) {
                if let Some(&id) = self.token_to_id.get(sym) {
                    out.push(id);
                } else {
                    // A merge result outside the vocabulary: llama.cpp falls back to looking up
                    // each byte of it alone, which only ever finds ASCII ones.
                    for b in sym.bytes() {
                        if b.is_ascii() {
                            let mut one = [0u8; 4];
                            let s = char::from(b).encode_utf8(&mut one);
                            if let Some(&id) = self.token_to_id.get(&*s) {
                                out.push(id);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Cuts special tokens out of `text`, one token text at a time, longest first.
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let mut frags = Vec::new();
        if text.is_empty() {
            return frags;
        }
        frags.push(Fragment::Text(0, text.len()));
        for &id in &self.special_tokens {
            let attr = self.attrs[id as usize];
            if !parse_special && attr & (ATTR_CONTROL | ATTR_UNKNOWN) != 0 {
                continue;
            }
            let needle = self.tokens[id as usize].as_str();
            if !frags
                .iter()
                .any(|f| matches!(*f, Fragment::Text(s, e) if text[s..e].contains(needle)))
            {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                let Fragment::Text(mut s, e) = f else {
                    next.push(f);
                    continue;
                };
                while let Some(p) = text[s..e].find(needle) {
                    let m = s + p;
                    if m > s {
                        next.push(Fragment::Text(s, m));
                    }
                    next.push(Fragment::Token(id));
                    s = m + needle.len();
                }
                if s < e {
                    next.push(Fragment::Text(s, e));
                }
            }
            frags = next;
        }
        frags
    }

    /// Text of `ids` as llama.cpp's `detokenize(ids, special = false)` gives it: control tokens
    /// vanish, invalid UTF-8 is replaced.
    pub fn decode(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.decode_bytes(ids, false)).into_owned()
    }

    /// Like [`Tokenizer::decode`], with `render_special` choosing whether control tokens show
    /// their text.
    pub fn decode_with(&self, ids: &[u32], render_special: bool) -> String {
        String::from_utf8_lossy(&self.decode_bytes(ids, render_special)).into_owned()
    }

    /// The raw bytes of `ids`, with llama.cpp's detokenizer rules: the leading space an SPM
    /// vocabulary adds is dropped from the first token, and vocabularies with `clean_spaces`
    /// get llama.cpp's clean-up of spaces before punctuation and contractions.
    pub fn decode_bytes(&self, ids: &[u32], render_special: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut strip_space = self.add_space_prefix;
        for &id in ids {
            let mut piece = self.token_piece(id, render_special);
            if strip_space {
                if let Some(rest) = piece.strip_prefix(b" ") {
                    piece = rest;
                }
            }
            strip_space = false;
            out.extend_from_slice(piece);
        }
        if self.clean_spaces {
            clean_up_spaces(&mut out);
        }
        out
    }
}

impl spm::SpmVocab for Tokenizer {
    fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }
    fn score(&self, id: u32) -> f32 {
        self.scores.get(id as usize).copied().unwrap_or(0.0)
    }
    fn byte_token(&self, byte: u8) -> Option<u32> {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let name = [
            b'<',
            b'0',
            b'x',
            HEX[(byte >> 4) as usize],
            HEX[(byte & 15) as usize],
            b'>',
        ];
        let name = std::str::from_utf8(&name).unwrap_or_default();
        if let Some(&id) = self.token_to_id.get(name) {
            return Some(id);
        }
        // The byte itself only works for ASCII; llama.cpp would throw here, an unknown token
        // is the closest non-fatal answer.
        let mut one = [0u8; 4];
        if byte.is_ascii() {
            let s = char::from(byte).encode_utf8(&mut one);
            if let Some(&id) = self.token_to_id.get(&*s) {
                return Some(id);
            }
        }
        self.unk
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fragment {
    /// A byte range of the input still to be tokenized.
    Text(usize, usize),
    Token(u32),
}

/// Maps a byte-level BPE token's characters back to bytes; characters outside the byte alphabet
/// are written the way llama.cpp's `llama_decode_text` writes them.
fn decode_byte_level(text: &str, out: &mut Vec<u8>) {
    for c in text.chars() {
        match bpe::char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
}

/// `<0xAB>` → 0xAB. Malformed names give 0, as `strtol` would.
fn parse_byte_token(text: &str) -> u8 {
    text.get(3..5)
        .and_then(|h| u8::from_str_radix(h, 16).ok())
        .unwrap_or(0)
}

/// llama.cpp's `clean_spaces` passes, kept in their in-place form so that edge cases (a space
/// consumed by one rule no longer counting for the next position) come out the same: drop the
/// space before `?!.,`, around a lone apostrophe, and before the contractions `'s 'm 're 've`.
fn clean_up_spaces(text: &mut Vec<u8>) {
    let mut total = text.len();
    if total == 0 {
        return;
    }
    // First pass: " ?", " !", " .", " ,".
    let n = total;
    total = 1;
    for i in 1..n {
        let x = text[i];
        if text[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            total -= 1;
        }
        text[total] = x;
        total += 1;
    }
    // Second pass: " ' " becomes "'".
    let n = total;
    total = 1;
    let mut i = 1;
    while i < n {
        let x = text[i];
        if x == b'\'' && i + 1 < n && text[i - 1] == b' ' && text[i + 1] == b' ' {
            total -= 1;
            i += 1;
            text[i] = 0;
        }
        text[total] = x;
        total += 1;
        i += 1;
    }
    // Third pass: " 's", " 'm", " 're", " 've".
    let n = total;
    total = 1;
    for i in 1..n {
        let x = text[i];
        if text[i - 1] == b' ' && x == b'\'' && i + 1 < n {
            let x1 = text[i + 1];
            let remove = match x1 {
                b's' | b'm' => true,
                b't' | b'd' => false,
                _ => i + 2 < n && matches!((x1, text[i + 2]), (b'r', b'e') | (b'v', b'e')),
            };
            if remove {
                total -= 1;
            }
        }
        text[total] = x;
        total += 1;
    }
    text.truncate(total);
}

#[cfg(test)]
mod tests;
