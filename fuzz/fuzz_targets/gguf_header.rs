//! Any byte string handed to the GGUF header parser, and to the config and tokenizer loaders
//! when the header is accepted, must come back as a value or a typed error, never a panic.

#![no_main]

use hearth_model::config::ModelConfig;
use hearth_model::gguf::parse_header;
use hearth_model::tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let header = match parse_header(data) {
        Ok(header) => header,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let tensor = |name: &str| header.tensors.iter().find(|t| t.name == name);
    if let Err(e) = ModelConfig::from_metadata(&header.metadata, tensor) {
        assert!(!e.to_string().is_empty());
    }
    if let Err(e) = Tokenizer::from_metadata(&header.metadata) {
        assert!(!e.to_string().is_empty());
    }
});
