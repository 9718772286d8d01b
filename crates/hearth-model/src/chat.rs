//! Chat templates: the Jinja template a GGUF file carries in `tokenizer.chat_template`, rendered
//! the way Hugging Face and llama.cpp's Jinja engine render it (`trim_blocks` and
//! `lstrip_blocks` on, with `messages`, `add_generation_prompt`, `bos_token` and `eos_token` in
//! the context, and `raise_exception` / `strftime_now` available).
//!
//! A model without a template gets ChatML ([`CHATML_TEMPLATE`]), the format most small instruct
//! models use:
//! `<|im_start|>{role}\n{content}<|im_end|>\n` per message, then `<|im_start|>assistant\n` when a
//! generation prompt is asked for.

use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::Value;
use minijinja::{Environment, ErrorKind};

use crate::gguf::Metadata;

/// The fallback template for models that carry none.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const KEY_TEMPLATE: &str = "tokenizer.chat_template";
const TEMPLATE_NAME: &str = "chat_template";

/// Why a chat template could not be loaded or rendered.
#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    #[error("metadata key `{key}` has type {found}, expected string")]
    WrongType {
        key: &'static str,
        found: &'static str,
    },
    #[error("chat template does not parse: {0}")]
    Syntax(String),
    #[error("chat template raised an exception: {0}")]
    Raised(String),
    #[error("chat template failed to render: {0}")]
    Render(String),
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template plus the BOS/EOS texts it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
    is_fallback: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("is_fallback", &self.is_fallback)
            .finish()
    }
}

impl ChatTemplate {
    /// The template in `tokenizer.chat_template` (ChatML when absent), with `bos_token` and
    /// `eos_token` taken from the vocabulary's BOS/EOS token texts (empty when unknown).
    pub fn from_metadata(md: &Metadata) -> Result<ChatTemplate, ChatTemplateError> {
        let token_text = |key: &str| -> String {
            let id = md.get_u32(key);
            let tokens = md.get_array("tokenizer.ggml.tokens");
            match (id, tokens) {
                (Some(id), Some(tokens)) => tokens
                    .get(id as usize)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string(),
                _ => String::new(),
            }
        };
        let bos = token_text("tokenizer.ggml.bos_token_id");
        let eos = token_text("tokenizer.ggml.eos_token_id");
        match md.get(KEY_TEMPLATE) {
            None => {
                let mut t = ChatTemplate::new(CHATML_TEMPLATE, bos, eos)?;
                t.is_fallback = true;
                Ok(t)
            }
            Some(v) => {
                let src = v.as_str().ok_or(ChatTemplateError::WrongType {
                    key: KEY_TEMPLATE,
                    found: v.type_name(),
                })?;
                ChatTemplate::new(src, bos, eos)
            }
        }
    }

    /// The ChatML fallback with the given BOS/EOS texts.
    pub fn chatml(bos_token: impl Into<String>, eos_token: impl Into<String>) -> ChatTemplate {
        let mut t = ChatTemplate::new(CHATML_TEMPLATE, bos_token, eos_token)
            .unwrap_or_else(|_| unreachable!("the ChatML template is valid"));
        t.is_fallback = true;
        t
    }

    /// Compiles `source`.
    pub fn new(
        source: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<ChatTemplate, ChatTemplateError> {
        let source = source.into();
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| ChatTemplateError::Syntax(describe(&e)))?;
        env.set_syntax(syntax);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.set_unknown_method_callback(python_methods);
        env.add_template_owned(TEMPLATE_NAME, source.clone())
            .map_err(|e| ChatTemplateError::Syntax(describe(&e)))?;
        Ok(ChatTemplate {
            env,
            source,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
            is_fallback: false,
        })
    }

    /// The template source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether this is the ChatML fallback because the model had no template.
    pub fn is_fallback(&self) -> bool {
        self.is_fallback
    }

    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// Renders the conversation with the template's own BOS/EOS texts.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        self.render_with(
            messages,
            add_generation_prompt,
            &self.bos_token,
            &self.eos_token,
        )
    }

    /// Renders the conversation with explicit BOS/EOS texts.
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<String, ChatTemplateError> {
        let msgs: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_pairs([
                    ("role", Value::from(m.role.as_str())),
                    ("content", Value::from(m.content.as_str())),
                ])
            })
            .collect();
        let ctx = Value::from_pairs([
            ("messages", Value::from(msgs)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("bos_token", Value::from(bos_token)),
            ("eos_token", Value::from(eos_token)),
        ]);
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ChatTemplateError::Render(describe(&e)))?;
        tmpl.render(ctx).map_err(|e| {
            if let Some(msg) = raised_message(&e) {
                ChatTemplateError::Raised(msg)
            } else {
                ChatTemplateError::Render(describe(&e))
            }
        })
    }
}

const RAISED_PREFIX: &str = "raise_exception: ";

fn raise_exception(msg: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("{RAISED_PREFIX}{msg}"),
    ))
}

fn raised_message(e: &minijinja::Error) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(je) = err.downcast_ref::<minijinja::Error>() {
            if let Some(detail) = je.detail() {
                if let Some(msg) = detail.strip_prefix(RAISED_PREFIX) {
                    return Some(msg.to_string());
                }
            }
        }
        cur = err.source();
    }
    None
}

fn describe(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(err) = cur {
        s.push_str(": ");
        s.push_str(&err.to_string());
        cur = err.source();
    }
    s
}

/// `strftime_now(format)`: the current time (UTC) in strftime notation, for templates that put
/// today's date in the system prompt. Supports the common conversions.
fn strftime_now(format: String) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_time(secs, &format)
}

fn format_time(secs: u64, format: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (hour, minute, second) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let (year, month, day) = civil_from_days(days as i64);
    let weekday = DAYS[(days % 7) as usize];
    let month_name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('-') => match chars.next() {
                Some('d') => out.push_str(&day.to_string()),
                Some('m') => out.push_str(&month.to_string()),
                Some(o) => {
                    out.push_str("%-");
                    out.push(o);
                }
                None => out.push_str("%-"),
            },
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(weekday),
            Some('a') => out.push_str(&weekday[..3]),
            Some('H') => out.push_str(&format!("{hour:02}")),
            Some('M') => out.push_str(&format!("{minute:02}")),
            Some('S') => out.push_str(&format!("{second:02}")),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The Python string and dict methods chat templates commonly call (`.strip()`,
/// `.startswith()`, `.items()`...), which Jinja inherits from Python and minijinja does not have.
fn python_methods(
    state: &mut minijinja::State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, minijinja::Error> {
    use minijinja::value::ValueKind;
    let unknown = || minijinja::Error::from(ErrorKind::UnknownMethod);
    let arg_str =
        |i: usize| -> Option<String> { args.get(i).and_then(|v| v.as_str()).map(str::to_string) };
    if let Some(s) = value.as_str() {
        let chars_arg = arg_str(0);
        let strip_set = |c: char| match &chars_arg {
            Some(set) => set.contains(c),
            None => c.is_whitespace(),
        };
        return Ok(match method {
            "strip" => Value::from(s.trim_matches(strip_set)),
            "lstrip" => Value::from(s.trim_start_matches(strip_set)),
            "rstrip" => Value::from(s.trim_end_matches(strip_set)),
            "upper" => Value::from(s.to_uppercase()),
            "lower" => Value::from(s.to_lowercase()),
            "title" => state.apply_filter("title", std::slice::from_ref(value))?,
            "capitalize" => state.apply_filter("capitalize", std::slice::from_ref(value))?,
            "startswith" => Value::from(arg_str(0).is_some_and(|p| s.starts_with(p.as_str()))),
            "endswith" => Value::from(arg_str(0).is_some_and(|p| s.ends_with(p.as_str()))),
            "replace" => match (arg_str(0), arg_str(1)) {
                (Some(from), Some(to)) => Value::from(s.replace(from.as_str(), to.as_str())),
                _ => return Err(unknown()),
            },
            "split" => {
                let parts: Vec<Value> = match arg_str(0) {
                    Some(sep) if !sep.is_empty() => {
                        s.split(sep.as_str()).map(Value::from).collect()
                    }
                    _ => s.split_whitespace().map(Value::from).collect(),
                };
                Value::from(parts)
            }
            "find" => match arg_str(0) {
                Some(p) => Value::from(
                    s.find(p.as_str())
                        .map_or(-1, |i| s[..i].chars().count() as i64),
                ),
                None => return Err(unknown()),
            },
            "count" => match arg_str(0) {
                Some(p) if !p.is_empty() => Value::from(s.matches(p.as_str()).count()),
                _ => return Err(unknown()),
            },
            _ => return Err(unknown()),
        });
    }
    if value.kind() == ValueKind::Map {
        return match method {
            "items" => state.apply_filter("items", std::slice::from_ref(value)),
            "keys" => Ok(Value::from(value.try_iter()?.collect::<Vec<_>>())),
            "values" => {
                let mut vals = Vec::new();
                for k in value.try_iter()? {
                    vals.push(value.get_item(&k)?);
                }
                Ok(Value::from(vals))
            }
            "get" => {
                let key = args.first().cloned().unwrap_or_default();
                let v = value.get_item(&key)?;
                if v.is_undefined() {
                    Ok(args.get(1).cloned().unwrap_or(Value::from(())))
                } else {
                    Ok(v)
                }
            }
            _ => Err(unknown()),
        };
    }
    Err(unknown())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::MetaValue;

    const SMOLLM: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn smollm_template_renders() {
        let t = ChatTemplate::new(SMOLLM, "<|im_start|>", "<|im_end|>").expect("parses");
        let out = t
            .render(&[ChatMessage::new("user", "hi")], true)
            .expect("renders");
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn fallback_is_chatml() {
        let md = Metadata::from_entries([]);
        let t = ChatTemplate::from_metadata(&md).expect("fallback");
        assert!(t.is_fallback());
        let out = t
            .render(
                &[
                    ChatMessage::new("system", "s"),
                    ChatMessage::new("user", "u"),
                ],
                false,
            )
            .expect("renders");
        assert_eq!(
            out,
            "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nu<|im_end|>\n"
        );
    }

    #[test]
    fn trim_and_lstrip_blocks_like_jinja_in_hf() {
        let src = "{% for m in messages %}\n  {% if m.role == 'user' %}\n[{{ m.content | trim }}]\n  {% endif %}\n{% endfor %}";
        let t = ChatTemplate::new(src, "", "").expect("parses");
        let out = t
            .render(&[ChatMessage::new("user", "  a ")], false)
            .expect("renders");
        assert_eq!(out, "[a]\n");
    }

    #[test]
    fn raise_exception_is_typed() {
        let src = "{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('bad order') }}{% endif %}";
        let t = ChatTemplate::new(src, "", "").expect("parses");
        match t.render(&[ChatMessage::new("assistant", "x")], false) {
            Err(ChatTemplateError::Raised(m)) => assert_eq!(m, "bad order"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn python_methods_and_tojson() {
        let src = "{{ messages[0].content.strip() }}|{{ messages[0].content.startswith('  he') }}|{{ messages[0] | tojson }}|{{ bos_token }}";
        let t = ChatTemplate::new(src, "<s>", "</s>").expect("parses");
        let out = t
            .render(&[ChatMessage::new("user", "  hello ")], false)
            .expect("renders");
        assert_eq!(
            out,
            r#"hello|True|{"role": "user", "content": "  hello "}|<s>"#
        );
    }

    #[test]
    fn syntax_errors_are_typed() {
        assert!(matches!(
            ChatTemplate::new("{% for %}", "", ""),
            Err(ChatTemplateError::Syntax(_))
        ));
        let md = Metadata::from_entries([(KEY_TEMPLATE.to_string(), MetaValue::U32(3))]);
        assert!(matches!(
            ChatTemplate::from_metadata(&md),
            Err(ChatTemplateError::WrongType { .. })
        ));
    }

    #[test]
    fn bos_eos_texts_come_from_the_vocabulary() {
        let md = Metadata::from_entries([
            (
                "tokenizer.ggml.tokens".to_string(),
                MetaValue::Array(vec![
                    MetaValue::String("<s>".into()),
                    MetaValue::String("</s>".into()),
                ]),
            ),
            ("tokenizer.ggml.bos_token_id".to_string(), MetaValue::U32(0)),
            ("tokenizer.ggml.eos_token_id".to_string(), MetaValue::U32(1)),
            (
                KEY_TEMPLATE.to_string(),
                MetaValue::String("{{ bos_token }}{{ eos_token }}".into()),
            ),
        ]);
        let t = ChatTemplate::from_metadata(&md).expect("loads");
        assert_eq!(t.render(&[], false).expect("renders"), "<s></s>");
    }

    #[test]
    fn dates_format() {
        // 2024-07-26 is a Friday.
        let secs = 1_721_952_000 + 3 * 3600 + 4 * 60 + 5;
        assert_eq!(
            format_time(secs, "%d %b %Y %A %H:%M:%S %-d %B %%"),
            "26 Jul 2024 Friday 03:04:05 26 July %"
        );
    }
}
