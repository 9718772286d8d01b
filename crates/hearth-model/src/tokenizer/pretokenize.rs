//! Pre-tokenization for byte-level BPE vocabularies: the text is cut into words by a list of
//! regexes chosen by `tokenizer.ggml.pre`, the same lists llama.cpp uses, applied the way
//! llama.cpp applies them. Each regex of the list runs over every chunk left by the previous one
//! and both its matches and the text between them become chunks of their own.
//!
//! llama.cpp does not run the regexes literally. Two patterns (GPT-2's and Llama 3's) have
//! hand-written splitters, and every other pattern that uses Unicode categories runs over a
//! "collapsed" copy of the text in which each non-ASCII code point is replaced by one stand-in
//! character for its category, with the category classes rewritten to match the stand-ins plus a
//! fixed set of ASCII characters. Those choices change the result on some inputs (for example `~`
//! is neither `\p{P}` nor `\p{S}` there), so they are reproduced here rather than running the
//! patterns with full Unicode semantics.

use std::sync::OnceLock;

use fancy_regex::Regex;

use super::TokenizerError;

/// Flags of one code point, following llama.cpp's `unicode_cpt_flags`.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub(crate) struct CptFlags(u8);

impl CptFlags {
    const NUMBER: u8 = 0x01;
    const LETTER: u8 = 0x02;
    const PUNCTUATION: u8 = 0x04;
    const MARK: u8 = 0x08;
    const SYMBOL: u8 = 0x10;
    const WHITESPACE: u8 = 0x20;
    /// Set for every code point inside the text; the splitters use the empty value for "past the
    /// end of the chunk", as llama.cpp does.
    const IN_RANGE: u8 = 0x40;

    fn is_number(self) -> bool {
        self.0 & Self::NUMBER != 0
    }
    fn is_letter(self) -> bool {
        self.0 & Self::LETTER != 0
    }
    fn is_whitespace(self) -> bool {
        self.0 & Self::WHITESPACE != 0
    }
    fn in_range(self) -> bool {
        self.0 & Self::IN_RANGE != 0
    }
}

/// The Unicode `White_Space` property, the set llama.cpp treats as whitespace.
fn is_white_space(c: u32) -> bool {
    matches!(
        c,
        0x09..=0x0D
            | 0x20
            | 0x85
            | 0xA0
            | 0x1680
            | 0x2000..=0x200A
            | 0x2028
            | 0x2029
            | 0x202F
            | 0x205F
            | 0x3000
    )
}

/// Sorted, disjoint ranges of the general categories the splitters need, taken from the Unicode
/// tables that ship with `regex-syntax` so no table of our own has to be maintained.
struct CategoryTable {
    ranges: Vec<(u32, u32, u8)>,
}

fn category_table() -> &'static CategoryTable {
    static TABLE: OnceLock<CategoryTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut ranges = Vec::new();
        for (class, flag) in [
            (r"\p{N}", CptFlags::NUMBER),
            (r"\p{L}", CptFlags::LETTER),
            (r"\p{P}", CptFlags::PUNCTUATION),
            (r"\p{M}", CptFlags::MARK),
            (r"\p{S}", CptFlags::SYMBOL),
        ] {
            // These patterns are fixed and valid; a failure would only drop a category.
            if let Ok(hir) = regex_syntax::Parser::new().parse(class) {
                if let regex_syntax::hir::HirKind::Class(regex_syntax::hir::Class::Unicode(c)) =
                    hir.kind()
                {
                    for r in c.ranges() {
                        ranges.push((r.start() as u32, r.end() as u32, flag));
                    }
                }
            }
        }
        ranges.sort_unstable_by_key(|r| r.0);
        CategoryTable { ranges }
    })
}

pub(crate) fn cpt_flags(c: char) -> CptFlags {
    let cp = c as u32;
    let mut flags = CptFlags::IN_RANGE;
    if is_white_space(cp) {
        flags |= CptFlags::WHITESPACE;
    }
    let table = &category_table().ranges;
    let idx = table.partition_point(|r| r.0 <= cp);
    if idx > 0 {
        let (start, end, flag) = table[idx - 1];
        if start <= cp && cp <= end {
            flags |= flag;
        }
    }
    CptFlags(flags)
}

impl std::ops::BitOrAssign<u8> for CptFlags {
    fn bitor_assign(&mut self, rhs: u8) {
        self.0 |= rhs;
    }
}

impl std::ops::BitOr<u8> for CptFlags {
    type Output = CptFlags;
    fn bitor(self, rhs: u8) -> CptFlags {
        CptFlags(self.0 | rhs)
    }
}

const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_PATTERN: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_PATTERN: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// What a `tokenizer.ggml.pre` value selects, besides the regexes.
#[derive(Clone, Debug)]
pub(crate) struct PreConfig {
    /// The name the pre-tokenizer is known by (the value of `tokenizer.ggml.pre`, or `default`).
    pub name: String,
    pub regexes: Vec<&'static str>,
    /// Whether `tokenizer.ggml.pre` named a known pre-tokenizer.
    pub recognized: bool,
    /// A word that is a whole token skips the merges (llama.cpp's `ignore_merges`).
    pub ignore_merges: bool,
    /// Default for `add_bos_token` when the metadata has no such key.
    pub add_bos: bool,
    /// llama.cpp's `clean_spaces` (detokenizer clean-up of spaces before punctuation).
    pub clean_spaces: bool,
}

/// Chooses the regex list for a `tokenizer.ggml.pre` value, mirroring llama.cpp's table.
/// An unknown or missing value falls back to llama.cpp's `default` list (not GPT-2's), as llama.cpp
/// does; `recognized` then says so.
pub(crate) fn pre_config(pre: Option<&str>) -> PreConfig {
    let name = pre.unwrap_or("default");
    let mut cfg = PreConfig {
        name: name.to_string(),
        regexes: Vec::new(),
        recognized: true,
        ignore_merges: false,
        add_bos: false,
        clean_spaces: true,
    };
    let default_list = vec![
        r"[\p{P}\$\+<=>\^~\|]+",
        GPT2_PATTERN,
        r"\p{N}+",
        r"[0-9][0-9][0-9]",
    ];
    cfg.regexes = match name {
        "default" => default_list.clone(),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" => {
            cfg.ignore_merges = true;
            cfg.add_bos = true;
            vec![LLAMA3_PATTERN]
        }
        "dbrx" | "smaug-bpe" => vec![LLAMA3_PATTERN],
        "deepseek-llm" => {
            cfg.clean_spaces = false;
            vec![
                "[\r\n]",
                r"\s?[A-Za-z\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF}\x{1C4}-\x{293}\x{295}-\x{2AF}\x{370}-\x{373}\x{376}\x{377}\x{37B}-\x{37D}\x{37F}\x{386}\x{388}-\x{38A}\x{38C}\x{38E}-\x{3A1}\x{3A3}-\x{3F5}\x{3F7}-\x{481}\x{48A}-\x{52F}\x{531}-\x{556}\x{10A0}-\x{10C5}\x{13A0}-\x{13F5}\x{13F8}-\x{13FD}\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF}\x{1D00}-\x{1D2B}\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A}\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D}\x{1F20}-\x{1F45}\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}\x{1F59}\x{1F5B}\x{1F5D}\x{1F5F}-\x{1F7D}\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4}\x{1FC6}-\x{1FCC}\x{1FD0}-\x{1FD3}\x{1FD6}-\x{1FDB}\x{1FE0}-\x{1FEC}\x{1FF2}-\x{1FF4}\x{1FF6}-\x{1FFC}\x{2102}\x{2107}\x{210A}-\x{2113}\x{2115}\x{2119}-\x{211D}\x{2124}\x{2126}\x{2128}\x{212A}-\x{212D}\x{212F}-\x{2134}\x{2139}\x{213C}-\x{213F}\x{2145}-\x{2149}\x{214E}\x{2183}\x{2184}\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4}\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}\x{A640}-\x{A66D}\x{A680}-\x{A69B}\x{A722}-\x{A76F}\x{A771}-\x{A787}\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF}\x{FB00}-\x{FB06}\x{FB13}-\x{FB17}\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A}\x{10400}-\x{1044F}\x{104B0}-\x{104D3}\x{104D8}-\x{104FB}\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2}\x{118A0}-\x{118DF}\x{1E900}-\x{1E943}]+",
                r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
                r"\s+$",
                "[一-龥ࠀ-一가-퟿]+",
                r"\p{N}+",
            ]
        }
        "deepseek-coder" => {
            cfg.clean_spaces = false;
            vec![
                "[\r\n]",
                r"\s?\p{L}+",
                r"\s?\p{P}+",
                "[一-龥ࠀ-一가-퟿]+",
                r"\p{N}",
            ]
        }
        "deepseek-v3" => {
            cfg.clean_spaces = false;
            vec![
                r"\p{N}{1,3}",
                "[一-龥぀-ゟ゠-ヿ]+",
                "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
            ]
        }
        "falcon" => vec![r"[\p{P}\$\+<=>\^~\|`]+", GPT2_PATTERN, r"[0-9][0-9][0-9]"],
        "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" => {
            vec![r"\p{N}", GPT2_PATTERN]
        }
        "command-r" | "smollm" => {
            cfg.clean_spaces = false;
            vec![r"\p{N}", GPT2_PATTERN]
        }
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de"
        | "a.x-4.0" | "mellum" | "modern-bert" | "jina-v1-en" | "jina-v2-code" | "roberta-bpe"
        | "mpt" | "olmo" | "jais" | "exaone4" => vec![GPT2_PATTERN],
        "trillion" | "granite-docling" => {
            cfg.clean_spaces = false;
            vec![GPT2_PATTERN]
        }
        "stablelm2" | "megrez" => vec![QWEN2_PATTERN],
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "hunyuan" => {
            cfg.clean_spaces = false;
            vec![QWEN2_PATTERN]
        }
        "poro-chat" => {
            cfg.clean_spaces = false;
            vec![r" ?[^(\s|.,!?…。，、।۔،)]+"]
        }
        "bloom" | "gpt3-finnish" => vec![r" ?[^(\s|.,!?…。，、।۔،)]+"],
        "viking" => {
            cfg.clean_spaces = false;
            vec![r" ?[^(\s|.,!?…。，、।۔،)]+", r"\p{N}"]
        }
        "glm4" | "chatglm-bpe" => vec![
            r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ],
        "tekken" => {
            cfg.clean_spaces = false;
            cfg.ignore_merges = true;
            cfg.add_bos = true;
            vec![TEKKEN_PATTERN]
        }
        "gpt-4o" | "llama4" => {
            cfg.clean_spaces = false;
            vec![GPT4O_PATTERN]
        }
        _ => {
            cfg.recognized = false;
            cfg.name = "default".to_string();
            default_list
        }
    };
    cfg
}

/// One step of the split list.
enum SplitRule {
    Gpt2,
    Llama3,
    /// A regex over the collapsed text (the pattern used Unicode categories).
    Collapsed(Regex),
    /// A regex over the text with non-ASCII whitespace replaced by U+000B.
    Plain(Regex),
}

/// Stand-ins for the collapsed representation. llama.cpp uses the bytes 0xD0..=0xD5; a Rust string
/// cannot hold those alone, so private-use code points take their place.
const COLLAPSED_OTHER: char = '\u{E0D0}';
const COLLAPSED_NUMBER: char = '\u{E0D1}';
const COLLAPSED_LETTER: char = '\u{E0D2}';
const COLLAPSED_PUNCT: char = '\u{E0D3}';
const COLLAPSED_MARK: char = '\u{E0D4}';
const COLLAPSED_SYMBOL: char = '\u{E0D5}';

/// The category escapes llama.cpp recognises, with the class content each becomes.
fn category_replacement(escape: &str) -> Option<String> {
    let (stand_in, ascii) = match escape {
        r"\p{N}" => (COLLAPSED_NUMBER, "0-9"),
        r"\p{L}" | r"\p{Lu}" | r"\p{Ll}" | r"\p{Lt}" | r"\p{Lm}" | r"\p{Lo}" => {
            (COLLAPSED_LETTER, "A-Za-z")
        }
        r"\p{P}" => (COLLAPSED_PUNCT, r"!-#%-*,-/:-;?-@\[-\]_\{\}"),
        r"\p{M}" => (COLLAPSED_MARK, ""),
        r"\p{S}" => (COLLAPSED_SYMBOL, r"\$\+<->\^`\|"),
        _ => return None,
    };
    Some(format!("\\x{{{:X}}}{}", stand_in as u32, ascii))
}

const CATEGORY_ESCAPES: [&str; 10] = [
    r"\p{N}", r"\p{L}", r"\p{P}", r"\p{M}", r"\p{S}", r"\p{Lu}", r"\p{Ll}", r"\p{Lt}", r"\p{Lm}",
    r"\p{Lo}",
];

fn uses_categories(pattern: &str) -> bool {
    CATEGORY_ESCAPES.iter().any(|e| pattern.contains(e))
}

/// Rewrites the category escapes of `pattern` into classes over the collapsed stand-ins, tracking
/// whether the escape sits inside `[...]` the same way llama.cpp does.
fn collapse_pattern(pattern: &str) -> String {
    let bytes = pattern.as_bytes();
    let mut out = String::with_capacity(pattern.len() * 2);
    let mut inside = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'[' && (i == 0 || bytes[i - 1] != b'\\') {
            out.push('[');
            inside = true;
            i += 1;
            continue;
        }
        if inside && b == b']' && i > 0 && bytes[i - 1] != b'\\' {
            out.push(']');
            inside = false;
            i += 1;
            continue;
        }
        if b == b'\\' && i + 3 < bytes.len() && bytes[i + 1] == b'p' && bytes[i + 2] == b'{' {
            if let Some(close) = pattern[i + 3..].find('}').map(|p| p + i + 3) {
                if close <= i + 10 {
                    if let Some(rep) = category_replacement(&pattern[i..=close]) {
                        if !inside {
                            out.push('[');
                        }
                        out.push_str(&rep);
                        if !inside {
                            out.push(']');
                        }
                        i = close + 1;
                        continue;
                    }
                }
            }
        }
        // Copy one whole UTF-8 character.
        let ch_len = pattern[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&pattern[i..i + ch_len]);
        i += ch_len;
    }
    out
}

fn collapse_char(c: char) -> char {
    if c.is_ascii() {
        return c;
    }
    let f = cpt_flags(c);
    if f.is_whitespace() {
        return '\u{0B}';
    }
    match f.0 & !(CptFlags::IN_RANGE | CptFlags::WHITESPACE) {
        CptFlags::NUMBER => COLLAPSED_NUMBER,
        CptFlags::LETTER => COLLAPSED_LETTER,
        CptFlags::PUNCTUATION => COLLAPSED_PUNCT,
        CptFlags::MARK => COLLAPSED_MARK,
        CptFlags::SYMBOL => COLLAPSED_SYMBOL,
        _ => COLLAPSED_OTHER,
    }
}

/// The compiled pre-tokenizer.
pub(crate) struct PreTokenizer {
    rules: Vec<SplitRule>,
}

impl std::fmt::Debug for PreTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreTokenizer")
            .field("rules", &self.rules.len())
            .finish()
    }
}

impl PreTokenizer {
    pub(crate) fn new(patterns: &[&str]) -> Result<Self, TokenizerError> {
        let mut rules = Vec::with_capacity(patterns.len());
        for &p in patterns {
            let rule = if p == GPT2_PATTERN {
                SplitRule::Gpt2
            } else if p == LLAMA3_PATTERN {
                SplitRule::Llama3
            } else if uses_categories(p) {
                let collapsed = collapse_pattern(p);
                SplitRule::Collapsed(Regex::new(&collapsed).map_err(|e| TokenizerError::Regex {
                    pattern: p.to_string(),
                    message: e.to_string(),
                })?)
            } else {
                SplitRule::Plain(Regex::new(p).map_err(|e| TokenizerError::Regex {
                    pattern: p.to_string(),
                    message: e.to_string(),
                })?)
            };
            rules.push(rule);
        }
        Ok(PreTokenizer { rules })
    }

    /// Splits `text` into words (as slices of `text`), before byte encoding.
    pub(crate) fn split<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let cpts: Vec<char> = text.chars().collect();
        if cpts.is_empty() {
            return Vec::new();
        }
        // Chunk lengths in code points, as llama.cpp keeps them.
        let mut offsets = vec![cpts.len()];
        let mut collapsed: Option<Vec<char>> = None;
        let mut plain: Option<Vec<char>> = None;
        for rule in &self.rules {
            offsets = match rule {
                SplitRule::Gpt2 => split_gpt2(&cpts, &offsets),
                SplitRule::Llama3 => split_llama3(&cpts, &offsets),
                SplitRule::Collapsed(re) => {
                    let c = collapsed
                        .get_or_insert_with(|| cpts.iter().map(|&c| collapse_char(c)).collect());
                    split_regex(re, c, &offsets)
                }
                SplitRule::Plain(re) => {
                    let c = plain.get_or_insert_with(|| {
                        cpts.iter()
                            .map(|&c| {
                                if !c.is_ascii() && cpt_flags(c).is_whitespace() {
                                    '\u{0B}'
                                } else {
                                    c
                                }
                            })
                            .collect()
                    });
                    split_regex(re, c, &offsets)
                }
            };
        }
        // Code point lengths back to byte slices of the original text.
        let mut words = Vec::with_capacity(offsets.len());
        let mut byte_pos = 0;
        let mut cpt_pos = 0;
        for len in offsets {
            let start = byte_pos;
            for c in &cpts[cpt_pos..cpt_pos + len] {
                byte_pos += c.len_utf8();
            }
            cpt_pos += len;
            if byte_pos > start {
                words.push(&text[start..byte_pos]);
            }
        }
        words
    }
}

/// Runs `re` over each chunk of `cpts` given by `offsets`; matches and the gaps between them become
/// chunks. The regex sees only the chunk, so anchors and look-arounds stop at its edges.
fn split_regex(re: &Regex, cpts: &[char], offsets: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(offsets.len());
    let mut start = 0;
    let mut chunk = String::new();
    // Byte offset in `chunk` of each code point, to turn match positions into code point counts.
    let mut byte_to_cpt: Vec<usize> = Vec::new();
    for &len in offsets {
        chunk.clear();
        byte_to_cpt.clear();
        for (i, &c) in cpts[start..start + len].iter().enumerate() {
            for _ in 0..c.len_utf8() {
                byte_to_cpt.push(i);
            }
            chunk.push(c);
        }
        byte_to_cpt.push(len);
        let mut prev = 0usize;
        for m in re.find_iter(&chunk) {
            // A regex that gives up (backtrack limit) leaves the rest of the chunk unsplit
            // rather than failing the whole encode.
            let Ok(m) = m else { break };
            let (ms, me) = (byte_to_cpt[m.start()], byte_to_cpt[m.end()]);
            if me == ms {
                continue;
            }
            if ms > prev {
                out.push(ms - prev);
            }
            out.push(me - ms);
            prev = me;
        }
        if prev < len {
            out.push(len - prev);
        }
        start += len;
    }
    out
}

/// Shared scaffolding of the hand-written splitters: code point access limited to the chunk.
struct Chunk<'a> {
    cpts: &'a [char],
    ini: usize,
    end: usize,
    prev_end: usize,
    out: &'a mut Vec<usize>,
}

const OUT_OF_RANGE: u32 = u32::MAX;

impl Chunk<'_> {
    fn cpt(&self, pos: usize) -> u32 {
        if self.ini <= pos && pos < self.end {
            self.cpts[pos] as u32
        } else {
            OUT_OF_RANGE
        }
    }
    fn flags(&self, pos: usize) -> CptFlags {
        if self.ini <= pos && pos < self.end {
            cpt_flags(self.cpts[pos])
        } else {
            CptFlags::default()
        }
    }
    fn add(&mut self, end: usize) -> usize {
        let len = end - self.prev_end;
        if len > 0 {
            self.out.push(len);
        }
        self.prev_end = end;
        len
    }
}

/// `'re`, `'ve` or `'ll` after the apostrophe.
fn is_two_letter_contraction(a: u32, b: u32) -> bool {
    let pair = (char::from_u32(a), char::from_u32(b));
    matches!(
        pair,
        (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l'))
    )
}

fn not_word(f: CptFlags) -> bool {
    !(f.is_whitespace() || f.is_letter() || f.is_number()) && f.in_range()
}

/// llama.cpp's hand-written form of
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
fn split_gpt2(cpts: &[char], offsets: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(offsets.len());
    let mut start = 0;
    for &len in offsets {
        let mut ch = Chunk {
            cpts,
            ini: start,
            end: start + len,
            prev_end: start,
            out: &mut out,
        };
        start += len;
        let end = ch.end;
        let mut pos = ch.ini;
        while pos < end {
            let cpt = ch.cpt(pos);
            let flags = ch.flags(pos);
            if cpt == '\'' as u32 && pos + 1 < end {
                let next = ch.cpt(pos + 1);
                if [b's', b't', b'm', b'd'].iter().any(|&b| next == b as u32) {
                    pos += ch.add(pos + 2);
                    continue;
                }
                if pos + 2 < end {
                    let nn = ch.cpt(pos + 2);
                    if is_two_letter_contraction(next, nn) {
                        pos += ch.add(pos + 3);
                        continue;
                    }
                }
            }
            let space = cpt == ' ' as u32;
            let mut f2 = if space { ch.flags(pos + 1) } else { flags };
            if f2.is_letter() {
                pos += usize::from(space);
                while f2.is_letter() {
                    pos += 1;
                    f2 = ch.flags(pos);
                }
                ch.add(pos);
                continue;
            }
            if f2.is_number() {
                pos += usize::from(space);
                while f2.is_number() {
                    pos += 1;
                    f2 = ch.flags(pos);
                }
                ch.add(pos);
                continue;
            }
            if not_word(f2) {
                pos += usize::from(space);
                while not_word(f2) {
                    pos += 1;
                    f2 = ch.flags(pos);
                }
                ch.add(pos);
                continue;
            }
            let mut n_ws = 0;
            while ch.flags(pos + n_ws).is_whitespace() {
                n_ws += 1;
            }
            if n_ws > 1 && ch.cpt(pos + n_ws) != OUT_OF_RANGE {
                pos += n_ws - 1;
                ch.add(pos);
                continue;
            }
            if n_ws > 0 {
                pos += n_ws;
                ch.add(pos);
                continue;
            }
            pos += 1;
            ch.add(pos);
        }
    }
    out
}

/// llama.cpp's hand-written form of the Llama 3 pattern.
fn split_llama3(cpts: &[char], offsets: &[usize]) -> Vec<usize> {
    let is_cr_lf = |c: u32| c == '\r' as u32 || c == '\n' as u32;
    let lower = |c: u32| {
        char::from_u32(c)
            .and_then(|c| c.to_lowercase().next())
            .map_or(c, |l| l as u32)
    };
    let mut out = Vec::with_capacity(offsets.len());
    let mut start = 0;
    for &len in offsets {
        let mut ch = Chunk {
            cpts,
            ini: start,
            end: start + len,
            prev_end: start,
            out: &mut out,
        };
        start += len;
        let end = ch.end;
        let mut pos = ch.ini;
        while pos < end {
            let cpt = ch.cpt(pos);
            let flags = ch.flags(pos);
            if cpt == '\'' as u32 && pos + 1 < end {
                let next = lower(ch.cpt(pos + 1));
                if [b's', b't', b'm', b'd'].iter().any(|&b| next == b as u32) {
                    pos += ch.add(pos + 2);
                    continue;
                }
                if pos + 2 < end {
                    let nn = lower(ch.cpt(pos + 2));
                    if is_two_letter_contraction(next, nn) {
                        pos += ch.add(pos + 3);
                        continue;
                    }
                }
            }
            // [^\r\n\p{L}\p{N}]?\p{L}+
            if !(is_cr_lf(cpt) || flags.is_number())
                && (flags.is_letter() || ch.flags(pos + 1).is_letter())
            {
                pos += 1;
                while ch.flags(pos).is_letter() {
                    pos += 1;
                }
                ch.add(pos);
                continue;
            }
            // \p{N}{1,3}
            if flags.is_number() {
                let mut ini = pos;
                while ch.flags(pos).is_number() {
                    pos += 1;
                    if pos - ini >= 3 {
                        ch.add(pos);
                        ini = pos;
                    }
                }
                ch.add(pos);
                continue;
            }
            // <space>?[^\s\p{L}\p{N}]+[\r\n]*
            let space = cpt == ' ' as u32;
            let mut f2 = if space { ch.flags(pos + 1) } else { flags };
            if !(f2.is_whitespace() || f2.is_letter() || f2.is_number()) && flags.in_range() {
                pos += usize::from(space);
                while not_word(f2) {
                    pos += 1;
                    f2 = ch.flags(pos);
                }
                while is_cr_lf(ch.cpt(pos)) {
                    pos += 1;
                }
                ch.add(pos);
                continue;
            }
            let mut n_ws = 0;
            let mut last_cr_lf_end = 0;
            while ch.flags(pos + n_ws).is_whitespace() {
                if is_cr_lf(ch.cpt(pos + n_ws)) {
                    last_cr_lf_end = pos + n_ws + 1;
                }
                n_ws += 1;
            }
            // \s*[\r\n]+
            if last_cr_lf_end > 0 {
                pos = last_cr_lf_end;
                ch.add(pos);
                continue;
            }
            // \s+(?!\S)
            if n_ws > 1 && ch.cpt(pos + n_ws) != OUT_OF_RANGE {
                pos += n_ws - 1;
                ch.add(pos);
                continue;
            }
            if n_ws > 0 {
                pos += n_ws;
                ch.add(pos);
                continue;
            }
            pos += 1;
            ch.add(pos);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(pre: &str, text: &str) -> Vec<String> {
        let cfg = pre_config(Some(pre));
        let p = PreTokenizer::new(&cfg.regexes).expect("compiles");
        p.split(text).into_iter().map(str::to_string).collect()
    }

    #[test]
    fn every_known_list_compiles() {
        for pre in [
            "default",
            "llama-bpe",
            "deepseek-llm",
            "deepseek-coder",
            "deepseek-v3",
            "falcon",
            "smollm",
            "gpt-2",
            "qwen2",
            "poro-chat",
            "viking",
            "glm4",
            "tekken",
            "gpt-4o",
            "stablelm2",
        ] {
            let cfg = pre_config(Some(pre));
            assert!(cfg.recognized, "{pre}");
            let p = PreTokenizer::new(&cfg.regexes).unwrap_or_else(|e| panic!("{pre}: {e}"));
            let _ = p.split("Hello world 123 ~~ 東京\n\n  x's");
        }
    }

    #[test]
    fn unknown_pre_falls_back_to_default() {
        let cfg = pre_config(Some("no-such-thing"));
        assert!(!cfg.recognized);
        assert_eq!(cfg.name, "default");
        assert_eq!(cfg.regexes.len(), 4);
    }

    #[test]
    fn gpt2_split() {
        assert_eq!(
            split("gpt-2", "Hello, world!  it's  x"),
            ["Hello", ",", " world", "!", " ", " it", "'s", " ", " x"]
        );
        assert_eq!(split("gpt-2", "a\t\tb"), ["a", "\t", "\t", "b"]);
        assert_eq!(split("gpt-2", "end  "), ["end", "  "]);
    }

    #[test]
    fn smollm_splits_digits_first() {
        assert_eq!(
            split("smollm", "Numbers: 1234 -42"),
            ["Numbers", ":", " ", "1", "2", "3", "4", " -", "4", "2"]
        );
    }

    #[test]
    fn llama3_split() {
        assert_eq!(
            split("llama-bpe", "Hello 12345 world!\n\n  x"),
            ["Hello", " ", "123", "45", " world", "!\n\n", " ", " x"]
        );
        assert_eq!(split("llama-bpe", "I'M"), ["I", "'M"]);
    }

    #[test]
    fn qwen2_regex_path() {
        assert_eq!(
            split("qwen2", "Hello 123 東京!\n\n x"),
            ["Hello", " ", "1", "2", "3", " 東京", "!\n\n", " x"]
        );
    }

    #[test]
    fn collapsed_pattern_rewrites_categories() {
        assert_eq!(split("default", "a~b"), ["a", "~", "b"]);
        assert_eq!(collapse_pattern(r"[^\s\p{L}]"), "[^\\s\\x{E0D2}A-Za-z]");
    }
}
