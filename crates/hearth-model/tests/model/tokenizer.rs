//! Tokenizer and chat template of the test model against llama.cpp's outputs.

use hearth_model::chat::{ChatMessage, ChatTemplate};
use hearth_model::gguf::GgufFile;
use hearth_model::tokenizer::{Tokenizer, VocabKind};

use crate::{model_path, reference};

fn load() -> (Tokenizer, ChatTemplate) {
    let file = GgufFile::open(model_path()).expect("test model opens");
    let md = file.metadata();
    let tok = Tokenizer::from_metadata(md).expect("tokenizer loads");
    let tmpl = ChatTemplate::from_metadata(md).expect("chat template loads");
    (tok, tmpl)
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("token array")
        .iter()
        .map(|t| t.as_u64().expect("token id") as u32)
        .collect()
}

#[test]
fn vocabulary_is_smollm() {
    let (tok, tmpl) = load();
    assert_eq!(tok.kind(), VocabKind::Bpe);
    assert_eq!(tok.pre_tokenizer(), "smollm");
    assert!(tok.warnings().is_empty(), "{:?}", tok.warnings());
    assert_eq!(tok.n_vocab(), 49152);
    // llama.cpp's /tokenize adds BOS only when add_bos_token is set; it is not for this model.
    assert_eq!(tok.bos_to_add(), None);
    let im_end = tok.token_id("<|im_end|>").expect("<|im_end|>");
    assert!(tok.is_end_of_generation(im_end));
    assert!(tok.is_end_of_generation(tok.eos().expect("eos")));
    assert!(!tok.is_end_of_generation(tok.token_id("Hello").expect("Hello")));
    assert!(!tmpl.is_fallback());
}

#[test]
fn tokenization_matches_llama_cpp() {
    let (tok, _) = load();
    let reference = reference();
    let cases = reference["tokenization"].as_array().expect("tokenization");
    assert!(!cases.is_empty());
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let expected = ids(&case["tokens"]);
        assert_eq!(tok.encode(text, true), expected, "tokens of {text:?}");
        // Control tokens only come back when asked for.
        assert_eq!(
            tok.decode_with(&expected, true),
            text,
            "round trip of {text:?}"
        );
        let streamed: Vec<u8> = expected
            .iter()
            .flat_map(|&id| tok.token_piece(id, true).to_vec())
            .collect();
        assert_eq!(streamed, text.as_bytes(), "streamed bytes of {text:?}");
    }
}

#[test]
fn chat_prompts_match_llama_cpp() {
    let (tok, tmpl) = load();
    let reference = reference();
    let chats = reference["chats"].as_array().expect("chats");
    assert!(!chats.is_empty());
    for chat in chats {
        let messages: Vec<ChatMessage> = chat["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| {
                ChatMessage::new(
                    m["role"].as_str().expect("role"),
                    m["content"].as_str().expect("content"),
                )
            })
            .collect();
        let templated = chat["templated"].as_str().expect("templated");
        let rendered = tmpl.render(&messages, true).expect("template renders");
        assert_eq!(rendered, templated);
        assert_eq!(
            tok.encode(templated, true),
            ids(&chat["prompt_tokens"]),
            "prompt tokens of {templated:?}"
        );
    }
}

#[test]
fn generated_text_decodes_like_llama_cpp() {
    let (tok, _) = load();
    let reference = reference();
    for chat in reference["chats"].as_array().expect("chats") {
        let generated = ids(&chat["generated_tokens"]);
        let text = chat["generated_text"].as_str().expect("generated_text");
        assert_eq!(tok.decode(&generated), text);
    }
}

#[test]
fn completion_prompts_and_outputs_match_llama_cpp() {
    let (tok, _) = load();
    let reference = reference();
    for c in reference["completions"].as_array().expect("completions") {
        let prompt = c["prompt"].as_str().expect("prompt");
        assert_eq!(
            tok.encode(prompt, true),
            ids(&c["prompt_tokens"]),
            "{prompt:?}"
        );
        assert_eq!(tok.decode(&ids(&c["prompt_tokens"])), prompt);
        let generated = ids(&c["generated_tokens"]);
        assert_eq!(
            tok.decode(&generated),
            c["generated_text"].as_str().expect("generated_text")
        );
    }
}
