//! Building a [`Tokenizer`] from GGUF metadata: every field checked, nothing sized by an
//! unchecked number.

use super::*;

fn wrong_type(key: &'static str, expected: &'static str, v: &MetaValue) -> TokenizerError {
    TokenizerError::WrongType {
        key,
        expected,
        found: v.type_name(),
    }
}

fn opt_str<'m>(md: &'m Metadata, key: &'static str) -> Result<Option<&'m str>, TokenizerError> {
    match md.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| wrong_type(key, "string", v)),
    }
}

fn opt_bool(md: &Metadata, key: &'static str) -> Result<Option<bool>, TokenizerError> {
    match md.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| wrong_type(key, "bool", v)),
    }
}

fn opt_array<'m>(
    md: &'m Metadata,
    key: &'static str,
) -> Result<Option<&'m [MetaValue]>, TokenizerError> {
    match md.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_array()
            .map(Some)
            .ok_or_else(|| wrong_type(key, "array", v)),
    }
}

fn is_integer(v: &MetaValue) -> bool {
    matches!(
        v,
        MetaValue::U8(_)
            | MetaValue::I8(_)
            | MetaValue::U16(_)
            | MetaValue::I16(_)
            | MetaValue::U32(_)
            | MetaValue::I32(_)
            | MetaValue::U64(_)
            | MetaValue::I64(_)
    )
}

impl Tokenizer {
    /// Builds the tokenizer from `tokenizer.ggml.*` metadata.
    pub fn from_metadata(md: &Metadata) -> Result<Tokenizer, TokenizerError> {
        let mut warnings = Vec::new();
        let model = opt_str(md, KEY_MODEL)?.ok_or(TokenizerError::MissingKey(KEY_MODEL))?;
        let kind = match model {
            "gpt2" => VocabKind::Bpe,
            "llama" => VocabKind::Spm,
            other => return Err(TokenizerError::UnsupportedModel(other.to_string())),
        };
        let pre_key = opt_str(md, KEY_PRE)?;

        // Vocabulary.
        let raw_tokens =
            opt_array(md, KEY_TOKENS)?.ok_or(TokenizerError::MissingKey(KEY_TOKENS))?;
        let n = raw_tokens.len();
        if n == 0 {
            return Err(TokenizerError::EmptyVocabulary);
        }
        if u32::try_from(n).is_err() {
            return Err(TokenizerError::VocabularyTooLarge(n));
        }
        let mut tokens = Vec::with_capacity(n);
        let mut token_to_id = HashMap::with_capacity(n);
        for (i, v) in raw_tokens.iter().enumerate() {
            let s = v
                .as_str()
                .ok_or_else(|| wrong_type(KEY_TOKENS, "array of string", v))?;
            // llama.cpp renames empty tokens so they can never match.
            let text = if s.is_empty() {
                format!("[EMPTY_{i}]")
            } else {
                s.to_string()
            };
            let id = i as u32;
            if let Some(&first) = token_to_id.get(&text) {
                return Err(TokenizerError::DuplicateToken { id, first, text });
            }
            token_to_id.insert(text.clone(), id);
            tokens.push(text);
        }

        let mut attrs = vec![ATTR_NORMAL; n];
        if let Some(types) = opt_array(md, KEY_TOKEN_TYPE)? {
            if types.len() != n {
                return Err(TokenizerError::LengthMismatch {
                    key: KEY_TOKEN_TYPE,
                    expected: n,
                    found: types.len(),
                });
            }
            for (a, v) in attrs.iter_mut().zip(types) {
                let t = v
                    .as_i64()
                    .ok_or_else(|| wrong_type(KEY_TOKEN_TYPE, "array of integer", v))?;
                *a = attr_of(TokenType::from_gguf(t));
            }
        }

        // Missing or short score arrays read as 0, as llama.cpp does.
        let mut scores = vec![0.0f32; n];
        if let Some(raw) = opt_array(md, KEY_SCORES)? {
            for (s, v) in scores.iter_mut().zip(raw) {
                *s = v
                    .as_f32()
                    .ok_or_else(|| wrong_type(KEY_SCORES, "array of float", v))?;
            }
        }

        let mut merges = bpe::MergeRanks::default();
        let mut pre = None;
        let pre_name;
        let (mut add_bos, mut add_eos, mut add_space_prefix);
        let (ignore_merges, clean_spaces);
        let (mut bos, mut eos, mut unk): (Option<u32>, Option<u32>, Option<u32>);
        match kind {
            VocabKind::Bpe => {
                let raw =
                    opt_array(md, KEY_MERGES)?.ok_or(TokenizerError::MissingKey(KEY_MERGES))?;
                for (index, v) in raw.iter().enumerate() {
                    let line = v
                        .as_str()
                        .ok_or_else(|| wrong_type(KEY_MERGES, "array of string", v))?;
                    // Split at the first space after the first character, like llama.cpp.
                    let first_len = line.chars().next().map_or(0, char::len_utf8);
                    let split = line[first_len..].find(' ').map(|p| p + first_len);
                    let Some(pos) = split.filter(|_| first_len > 0) else {
                        return Err(TokenizerError::MalformedMerge {
                            index,
                            text: line.to_string(),
                        });
                    };
                    let rank = u32::try_from(index)
                        .map_err(|_| TokenizerError::VocabularyTooLarge(raw.len()))?;
                    merges.insert(&line[..pos], &line[pos + 1..], rank);
                }
                let cfg = pretokenize::pre_config(pre_key);
                if !cfg.recognized {
                    warnings.push(format!(
                        "unrecognized pre-tokenizer {:?}; using llama.cpp's 'default' regexes",
                        pre_key.unwrap_or("")
                    ));
                }
                pre = Some(PreTokenizer::new(&cfg.regexes)?);
                pre_name = cfg.name;
                add_bos = cfg.add_bos;
                add_eos = false;
                add_space_prefix = false;
                ignore_merges = cfg.ignore_merges;
                clean_spaces = cfg.clean_spaces;
                bos = Some(11);
                eos = Some(11);
                unk = None;
            }
            VocabKind::Spm => {
                pre_name = "default".to_string();
                add_bos = true;
                add_eos = false;
                add_space_prefix = true;
                ignore_merges = false;
                clean_spaces = false;
                bos = Some(1);
                eos = Some(2);
                unk = Some(0);
            }
        }
        if let Some(v) = opt_bool(md, KEY_ADD_PREFIX)? {
            add_space_prefix = v;
        }
        // Defaults that point outside a small vocabulary are treated as absent.
        for id in [&mut bos, &mut eos, &mut unk] {
            if id.is_some_and(|i| i as usize >= n) {
                *id = None;
            }
        }

        let special_id = |key: &'static str,
                          default: Option<u32>,
                          warnings: &mut Vec<String>|
         -> Result<Option<u32>, TokenizerError> {
            let Some(v) = md.get(key) else {
                return Ok(default);
            };
            if !is_integer(v) {
                return Err(wrong_type(key, "integer", v));
            }
            match v.as_u32() {
                Some(id) if (id as usize) < n => Ok(Some(id)),
                _ => {
                    warnings.push(format!(
                        "bad special token: {key} = {v:?} is outside the vocabulary of {n}; keeping the default"
                    ));
                    Ok(default)
                }
            }
        };
        let bos = special_id("tokenizer.ggml.bos_token_id", bos, &mut warnings)?;
        let eos = special_id("tokenizer.ggml.eos_token_id", eos, &mut warnings)?;
        let mut eot = special_id("tokenizer.ggml.eot_token_id", None, &mut warnings)?;
        let mut eom = special_id("tokenizer.ggml.eom_token_id", None, &mut warnings)?;
        let unk = special_id("tokenizer.ggml.unknown_token_id", unk, &mut warnings)?;
        let pad = special_id("tokenizer.ggml.padding_token_id", None, &mut warnings)?;
        let mut fim_pad = special_id("tokenizer.ggml.fim_pad_token_id", None, &mut warnings)?;
        let mut fim_rep = special_id("tokenizer.ggml.fim_rep_token_id", None, &mut warnings)?;
        let mut fim_sep = special_id("tokenizer.ggml.fim_sep_token_id", None, &mut warnings)?;
        if let Some(v) = opt_bool(md, KEY_ADD_BOS)? {
            add_bos = v;
        }
        if let Some(v) = opt_bool(md, KEY_ADD_EOS)? {
            add_eos = v;
        }

        // Text-based detection of turn-ending tokens. llama.cpp walks a hash map and takes the
        // first hit; the lowest id is taken here so the choice is deterministic.
        let find = |texts: &[&str]| -> Option<u32> {
            tokens
                .iter()
                .position(|t| texts.contains(&t.as_str()))
                .map(|i| i as u32)
        };
        let mark_control = |id: Option<u32>, attrs: &mut Vec<u8>| {
            if let Some(i) = id {
                attrs[i as usize] |= ATTR_CONTROL;
            }
        };
        if eot.is_none() {
            eot = find(EOT_TEXTS);
            mark_control(eot, &mut attrs);
        }
        if eom.is_none() {
            eom = find(&["<|eom_id|>"]);
            mark_control(eom, &mut attrs);
        }
        if fim_pad.is_none() {
            fim_pad = find(FIM_PAD_TEXTS);
            mark_control(fim_pad, &mut attrs);
        }
        if fim_rep.is_none() {
            fim_rep = find(FIM_REP_TEXTS);
            mark_control(fim_rep, &mut attrs);
        }
        if fim_sep.is_none() {
            fim_sep = find(FIM_SEP_TEXTS);
            mark_control(fim_sep, &mut attrs);
        }

        let mut eog: BTreeSet<u32> = [fim_pad, fim_rep, fim_sep].into_iter().flatten().collect();
        for (i, t) in tokens.iter().enumerate() {
            if EOG_TEXTS.contains(&t.as_str()) {
                eog.insert(i as u32);
                attrs[i] |= ATTR_CONTROL;
            }
        }
        // Tokens gpt-oss needs rendered in the output.
        for (i, t) in tokens.iter().enumerate() {
            if matches!(
                t.as_str(),
                "<|channel|>" | "<|message|>" | "<|start|>" | "<|constrain|>"
            ) {
                attrs[i] = ATTR_USER_DEFINED;
            }
        }
        eog.extend([eos, eot, eom].into_iter().flatten());
        // Harmony-style vocabularies end turns with <|return|>/<|call|>, not <|end|>.
        {
            let has = |s: &str| eog.iter().any(|&i| tokens[i as usize] == s);
            let end_id = eog
                .iter()
                .copied()
                .find(|&i| tokens[i as usize] == "<|end|>");
            if let Some(end_id) = end_id {
                if (has("<|return|>") && (has("<|call|>") || has("<|calls|>")))
                    || ((has("<|call|>") || has("<|calls|>")) && has("<|flush|>"))
                {
                    eog.remove(&end_id);
                    attrs[end_id as usize] = ATTR_USER_DEFINED;
                }
            }
        }

        let mut special_tokens: Vec<u32> = (0..n as u32)
            .filter(|&i| attrs[i as usize] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN) != 0)
            .collect();
        special_tokens.sort_by(|&a, &b| tokens[b as usize].len().cmp(&tokens[a as usize].len()));

        let mut tok = Tokenizer {
            kind,
            pre_name,
            pre,
            tokens,
            attrs,
            scores,
            token_to_id,
            merges,
            special_tokens,
            piece_data: Vec::new(),
            piece_ends: Vec::with_capacity(n),
            eog,
            bos,
            eos,
            eot,
            eom,
            unk,
            pad,
            add_bos,
            add_eos,
            add_space_prefix,
            ignore_merges,
            clean_spaces,
            warnings,
        };
        tok.build_pieces();
        Ok(tok)
    }

    fn build_pieces(&mut self) {
        let mut data = Vec::new();
        let mut ends = Vec::with_capacity(self.tokens.len());
        for (text, &attr) in self.tokens.iter().zip(&self.attrs) {
            if attr & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED) != 0 {
                data.extend_from_slice(text.as_bytes());
            } else if attr & ATTR_NORMAL != 0 {
                match self.kind {
                    VocabKind::Bpe => decode_byte_level(text, &mut data),
                    VocabKind::Spm => {
                        data.extend_from_slice(text.replace('\u{2581}', " ").as_bytes())
                    }
                }
            } else if attr & ATTR_BYTE != 0 && self.kind == VocabKind::Spm {
                data.push(parse_byte_token(text));
            }
            ends.push(data.len());
        }
        data.shrink_to_fit();
        self.piece_data = data;
        self.piece_ends = ends;
    }
}
