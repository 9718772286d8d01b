use super::*;

fn s(v: &str) -> MetaValue {
    MetaValue::String(v.to_string())
}

fn strings(v: &[String]) -> MetaValue {
    MetaValue::Array(v.iter().map(|t| s(t)).collect())
}

/// A byte-level vocabulary: the 256 byte symbols, a few merged words and three special tokens.
fn bpe_metadata(extra: Vec<(&str, MetaValue)>) -> Metadata {
    let mut tokens: Vec<String> = (0..=255u8)
        .map(|b| bpe::byte_to_char(b).to_string())
        .collect();
    let merges = [
        "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d",
    ];
    for m in merges {
        tokens.push(m.replace(' ', ""));
    }
    let specials = ["<|im_start|>", "<|im_end|>", "<tool>", "<|im_start|>x"];
    tokens.extend(specials.iter().map(|t| t.to_string()));
    let mut types = vec![MetaValue::I32(1); tokens.len()];
    let n = tokens.len();
    types[n - 4] = MetaValue::I32(3);
    types[n - 3] = MetaValue::I32(3);
    types[n - 2] = MetaValue::I32(4);
    types[n - 1] = MetaValue::I32(3);
    let mut entries: Vec<(String, MetaValue)> = vec![
        (KEY_MODEL.into(), s("gpt2")),
        (KEY_PRE.into(), s("gpt-2")),
        (KEY_TOKENS.into(), strings(&tokens)),
        (KEY_TOKEN_TYPE.into(), MetaValue::Array(types)),
        (
            KEY_MERGES.into(),
            MetaValue::Array(merges.iter().map(|m| s(m)).collect()),
        ),
        (
            "tokenizer.ggml.bos_token_id".into(),
            MetaValue::U32(n as u32 - 4),
        ),
        (
            "tokenizer.ggml.eos_token_id".into(),
            MetaValue::U32(n as u32 - 3),
        ),
        (KEY_ADD_BOS.into(), MetaValue::Bool(false)),
    ];
    for (k, v) in extra {
        entries.push((k.to_string(), v));
    }
    Metadata::from_entries(entries)
}

fn bpe() -> Tokenizer {
    Tokenizer::from_metadata(&bpe_metadata(vec![])).expect("valid vocabulary")
}

#[test]
fn bpe_encodes_with_merges() {
    let t = bpe();
    let hello = t.token_id("hello").expect("token");
    let world = t.token_id("Ġworld").expect("token");
    assert_eq!(t.encode("hello world", false), [hello, world]);
    let bang = t.token_id("!").expect("token");
    assert_eq!(t.encode("hello!", false), [hello, bang]);
    assert!(t.warnings().is_empty());
    assert_eq!(t.pre_tokenizer(), "gpt-2");
}

#[test]
fn special_tokens_are_split_longest_first() {
    let t = bpe();
    let start = t.token_id("<|im_start|>").expect("token");
    let startx = t.token_id("<|im_start|>x").expect("token");
    let end = t.token_id("<|im_end|>").expect("token");
    let hello = t.token_id("hello").expect("token");
    assert_eq!(
        t.encode("<|im_start|>hello<|im_end|>", true),
        [start, hello, end]
    );
    assert_eq!(t.encode("<|im_start|>x<|im_end|>", true), [startx, end]);
    // Control tokens stay text without parse_special; user-defined ones are always split.
    let plain = t.encode("<|im_end|>", false);
    assert!(!plain.contains(&end));
    assert!(plain.len() > 1);
    let tool = t.token_id("<tool>").expect("token");
    assert_eq!(t.encode("<tool>hello", false), [tool, hello]);
}

#[test]
fn bos_follows_add_bos_token() {
    let t = bpe();
    assert_eq!(t.bos_to_add(), None);
    assert_eq!(t.encode_with_special("hello", true, false).len(), 1);
    let t = Tokenizer::from_metadata(&bpe_metadata(vec![(KEY_ADD_BOS, MetaValue::Bool(true))]))
        .expect("valid");
    let bos = t.bos().expect("bos");
    assert_eq!(t.bos_to_add(), Some(bos));
    assert_eq!(t.encode_with_special("hello", true, false)[0], bos);
}

#[test]
fn decode_hides_control_tokens_unless_asked() {
    let t = bpe();
    let ids = t.encode("<|im_start|>hello world<|im_end|>\n", true);
    assert_eq!(t.decode(&ids), "hello world\n");
    assert_eq!(
        t.decode_with(&ids, true),
        "<|im_start|>hello world<|im_end|>\n"
    );
    let end = t.token_id("<|im_end|>").expect("token");
    assert!(t.token_bytes(end).is_empty());
    assert_eq!(t.token_piece(end, true), b"<|im_end|>");
    assert_eq!(t.token_bytes(u32::MAX), b"");
    // Multi-byte characters come back byte by byte.
    let ids = t.encode("é", false);
    assert_eq!(ids.len(), 2);
    let bytes: Vec<u8> = ids
        .iter()
        .flat_map(|&i| t.token_bytes(i).to_vec())
        .collect();
    assert_eq!(bytes, "é".as_bytes());
}

#[test]
fn end_of_generation_tokens() {
    let t = bpe();
    let end = t.token_id("<|im_end|>").expect("token");
    assert!(t.is_end_of_generation(end));
    assert_eq!(t.eot(), Some(end));
    assert!(!t.is_end_of_generation(t.token_id("hello").expect("token")));
}

#[test]
fn unknown_pre_tokenizer_warns() {
    let t =
        Tokenizer::from_metadata(&bpe_metadata(vec![(KEY_PRE, s("brand-new"))])).expect("valid");
    assert_eq!(t.pre_tokenizer(), "default");
    assert_eq!(t.warnings().len(), 1);
}

#[test]
fn out_of_range_special_id_warns_and_keeps_default() {
    let t = Tokenizer::from_metadata(&bpe_metadata(vec![(
        "tokenizer.ggml.padding_token_id",
        MetaValue::U32(1_000_000),
    )]))
    .expect("valid");
    assert_eq!(t.pad(), None);
    assert_eq!(t.warnings().len(), 1);
}

#[test]
fn bad_metadata_is_a_typed_error() {
    let err = |extra: Vec<(&str, MetaValue)>| Tokenizer::from_metadata(&bpe_metadata(extra)).err();
    assert!(matches!(
        err(vec![(KEY_MODEL, s("bert"))]),
        Some(TokenizerError::UnsupportedModel(_))
    ));
    assert!(matches!(
        err(vec![(KEY_MODEL, MetaValue::U8(1))]),
        Some(TokenizerError::WrongType { .. })
    ));
    assert!(matches!(
        err(vec![(KEY_MERGES, MetaValue::Array(vec![s("nospace")]))]),
        Some(TokenizerError::MalformedMerge { index: 0, .. })
    ));
    assert!(matches!(
        err(vec![(
            KEY_TOKEN_TYPE,
            MetaValue::Array(vec![MetaValue::I32(1)])
        )]),
        Some(TokenizerError::LengthMismatch { .. })
    ));
    assert!(matches!(
        err(vec![(KEY_TOKENS, MetaValue::Array(vec![s("a"), s("a")]))]),
        Some(TokenizerError::DuplicateToken {
            id: 1,
            first: 0,
            ..
        })
    ));
    assert!(matches!(
        err(vec![(KEY_TOKENS, MetaValue::Array(vec![]))]),
        Some(TokenizerError::EmptyVocabulary)
    ));
    assert!(matches!(
        err(vec![(KEY_ADD_BOS, s("yes"))]),
        Some(TokenizerError::WrongType { .. })
    ));
    assert!(matches!(
        err(vec![("tokenizer.ggml.bos_token_id", s("1"))]),
        Some(TokenizerError::WrongType { .. })
    ));
    let no_merges = Metadata::from_entries([
        (KEY_MODEL.to_string(), s("gpt2")),
        (KEY_TOKENS.to_string(), MetaValue::Array(vec![s("a")])),
    ]);
    assert!(matches!(
        Tokenizer::from_metadata(&no_merges),
        Err(TokenizerError::MissingKey(KEY_MERGES))
    ));
    assert!(matches!(
        Tokenizer::from_metadata(&Metadata::default()),
        Err(TokenizerError::MissingKey(KEY_MODEL))
    ));
}

/// A SentencePiece vocabulary: `<unk> <s> </s>`, the 256 byte tokens, then scored pieces.
fn spm() -> Tokenizer {
    let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
    let mut types = vec![MetaValue::I32(2), MetaValue::I32(3), MetaValue::I32(3)];
    let mut scores = vec![MetaValue::F32(0.0); 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(MetaValue::I32(6));
        scores.push(MetaValue::F32(0.0));
    }
    let pieces = [
        ("▁", -1.0),
        ("h", -2.0),
        ("e", -2.0),
        ("l", -2.0),
        ("o", -2.0),
        ("w", -2.0),
        ("r", -2.0),
        ("d", -2.0),
        ("▁h", -3.0),
        ("he", -1.5),
        ("ll", -1.2),
        ("llo", -1.1),
        ("hello", -0.5),
        ("▁hello", -0.2),
        ("or", -1.0),
        ("▁w", -1.0),
        ("▁wor", -0.9),
        ("ld", -1.0),
        ("▁world", -0.1),
    ];
    for (p, sc) in pieces {
        tokens.push(p.to_string());
        types.push(MetaValue::I32(1));
        scores.push(MetaValue::F32(sc));
    }
    let md = Metadata::from_entries([
        (KEY_MODEL.to_string(), s("llama")),
        (KEY_TOKENS.to_string(), strings(&tokens)),
        (KEY_TOKEN_TYPE.to_string(), MetaValue::Array(types)),
        (KEY_SCORES.to_string(), MetaValue::Array(scores)),
    ]);
    Tokenizer::from_metadata(&md).expect("valid vocabulary")
}

#[test]
fn spm_encodes_with_space_prefix_and_scores() {
    let t = spm();
    assert_eq!(t.kind(), VocabKind::Spm);
    let hello = t.token_id("▁hello").expect("token");
    let world = t.token_id("▁world").expect("token");
    assert_eq!(t.encode("hello world", false), [hello, world]);
    assert_eq!(t.bos_to_add(), Some(1));
    assert_eq!(t.encode_with_special("hello", true, false), [1, hello]);
    // After a special token the space prefix is added again.
    assert_eq!(
        t.encode("<s>hello", true),
        [1, hello],
        "prefix after special"
    );
}

#[test]
fn spm_byte_fallback_and_decode() {
    let t = spm();
    let ids = t.encode("hé", false);
    let h = t.token_id("▁h").expect("token");
    assert_eq!(ids, [h, 3 + 0xC3, 3 + 0xA9]);
    assert_eq!(t.decode(&ids), "hé");
    let ids = t.encode("hello world", false);
    assert_eq!(t.decode(&ids), "hello world");
    assert!(t.is_end_of_generation(2));
    assert_eq!(t.unk(), Some(0));
}

#[test]
fn clean_spaces_matches_llama_cpp() {
    let mut v = b"a , b ' c it 's we 're x 'll".to_vec();
    clean_up_spaces(&mut v);
    assert_eq!(String::from_utf8_lossy(&v), "a, b'c it's we're x 'll");
}
