//! Wire messages of the pipeline: compact, versioned, little-endian, and decoded without trust.
//!
//! Every message starts with the version byte and a tag. Strings are a `u16` length and UTF-8;
//! token lists a `u32` count and `u32`s; hidden states a dtype byte, a `u32` count and the raw
//! values. A message is one frame of a data stream, so there is no outer length.

use half::f16;
use hearth_engine::SamplerConfig;

use crate::error::ProtocolError;

pub const VERSION: u8 = 1;

/// Longest instance id or node id accepted.
pub const MAX_NAME: usize = 512;
/// Longest failure reason accepted.
pub const MAX_REASON: usize = 4096;
/// Most tokens one forward message may carry.
pub const MAX_TOKENS: usize = 1 << 16;
/// Most hidden-state values one forward message may carry (64 MiB of f32).
pub const MAX_HIDDEN: usize = 1 << 24;

/// A sequence's id, chosen by its owner and unique across the cluster.
pub type SequenceKey = u64;

/// Which instance a message is for, which sequence of it, and which node to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub instance: String,
    pub sequence: SequenceKey,
    /// The node that drives the sequence and receives its tokens.
    pub owner: String,
}

/// Hidden states between stages, in the plan's activation dtype.
#[derive(Debug, Clone, PartialEq)]
pub enum Hidden {
    /// The first stage takes token ids only.
    None,
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl Hidden {
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Hidden::None => Vec::new(),
            Hidden::F32(v) => v.clone(),
            Hidden::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
        }
    }
}

/// Activation dtype between stages: f32 is exact, f16 halves the bytes on slow links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActDtype {
    F32,
    F16,
}

impl ActDtype {
    pub fn encode(self, values: &[f32]) -> Hidden {
        match self {
            ActDtype::F32 => Hidden::F32(values.to_vec()),
            ActDtype::F16 => Hidden::F16(values.iter().map(|&x| f16::from_f32(x)).collect()),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Starts a sequence on a stage (each stage passes it on before any forward of it). The
    /// last stage builds its sampler from `sampling`, advanced by `draws` samples already made
    /// elsewhere (a sequence resumed on a new placement).
    Open {
        header: Header,
        sampling: SamplerConfig,
        draws: u64,
    },
    /// New positions of a sequence: `tokens` always (the last stage's sampler remembers them),
    /// `hidden` from the previous stage. The last stage answers with a token when `sample`.
    Forward {
        header: Header,
        tokens: Vec<u32>,
        hidden: Hidden,
        sample: bool,
    },
    /// Ends a sequence; each stage frees its cache and passes it on.
    Close { header: Header },
    /// The next token, from the last stage to the owner.
    Token { sequence: SequenceKey, token: u32 },
    /// A stage could not go on with the sequence.
    Failed {
        sequence: SequenceKey,
        reason: String,
    },
}

const OPEN: u8 = 1;
const FORWARD: u8 = 2;
const CLOSE: u8 = 3;
const TOKEN: u8 = 4;
const FAILED: u8 = 5;

const HIDDEN_NONE: u8 = 0;
const HIDDEN_F32: u8 = 1;
const HIDDEN_F16: u8 = 2;

impl Message {
    /// The owner a failure about this message should go to, when it names one.
    pub fn header(&self) -> Option<&Header> {
        match self {
            Message::Open { header, .. }
            | Message::Forward { header, .. }
            | Message::Close { header } => Some(header),
            _ => None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.push(VERSION);
        match self {
            Message::Open {
                header,
                sampling,
                draws,
            } => {
                out.push(OPEN);
                put_header(&mut out, header);
                out.extend(sampling.temperature.to_le_bytes());
                out.extend((sampling.top_k as u32).to_le_bytes());
                out.extend(sampling.top_p.to_le_bytes());
                out.extend(sampling.min_p.to_le_bytes());
                out.extend(sampling.repeat_penalty.to_le_bytes());
                out.extend((sampling.repeat_last_n as u32).to_le_bytes());
                out.extend(sampling.seed.to_le_bytes());
                out.extend(draws.to_le_bytes());
            }
            Message::Forward {
                header,
                tokens,
                hidden,
                sample,
            } => {
                out.push(FORWARD);
                put_header(&mut out, header);
                out.push(u8::from(*sample));
                out.extend((tokens.len() as u32).to_le_bytes());
                out.reserve(tokens.len() * 4);
                for t in tokens {
                    out.extend(t.to_le_bytes());
                }
                match hidden {
                    Hidden::None => out.push(HIDDEN_NONE),
                    Hidden::F32(v) => {
                        out.push(HIDDEN_F32);
                        out.extend((v.len() as u32).to_le_bytes());
                        out.reserve(v.len() * 4);
                        for x in v {
                            out.extend(x.to_le_bytes());
                        }
                    }
                    Hidden::F16(v) => {
                        out.push(HIDDEN_F16);
                        out.extend((v.len() as u32).to_le_bytes());
                        out.reserve(v.len() * 2);
                        for x in v {
                            out.extend(x.to_bits().to_le_bytes());
                        }
                    }
                }
            }
            Message::Close { header } => {
                out.push(CLOSE);
                put_header(&mut out, header);
            }
            Message::Token { sequence, token } => {
                out.push(TOKEN);
                out.extend(sequence.to_le_bytes());
                out.extend(token.to_le_bytes());
            }
            Message::Failed { sequence, reason } => {
                out.push(FAILED);
                out.extend(sequence.to_le_bytes());
                put_str(&mut out, truncate(reason, MAX_REASON));
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Message, ProtocolError> {
        let mut r = Reader { bytes, at: 0 };
        let version = r.u8()?;
        if version != VERSION {
            return Err(ProtocolError::Version(version));
        }
        let msg = match r.u8()? {
            OPEN => {
                let header = r.header()?;
                let sampling = SamplerConfig {
                    temperature: r.f32()?,
                    top_k: r.u32()? as usize,
                    top_p: r.f32()?,
                    min_p: r.f32()?,
                    repeat_penalty: r.f32()?,
                    repeat_last_n: r.u32()? as usize,
                    seed: r.u64()?,
                };
                let finite = [
                    sampling.temperature,
                    sampling.top_p,
                    sampling.min_p,
                    sampling.repeat_penalty,
                ]
                .iter()
                .all(|x| x.is_finite());
                if !finite {
                    return Err(ProtocolError::Invalid("sampling figures must be finite"));
                }
                Message::Open {
                    header,
                    sampling,
                    draws: r.u64()?,
                }
            }
            FORWARD => {
                let header = r.header()?;
                let sample = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(ProtocolError::Invalid("sample flag")),
                };
                let n = r.count(MAX_TOKENS, "tokens")?;
                let raw = r.take(n * 4)?;
                let tokens = raw
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                let hidden = match r.u8()? {
                    HIDDEN_NONE => Hidden::None,
                    HIDDEN_F32 => {
                        let n = r.count(MAX_HIDDEN, "hidden")?;
                        let raw = r.take(n * 4)?;
                        Hidden::F32(
                            raw.chunks_exact(4)
                                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                                .collect(),
                        )
                    }
                    HIDDEN_F16 => {
                        let n = r.count(MAX_HIDDEN, "hidden")?;
                        let raw = r.take(n * 2)?;
                        Hidden::F16(
                            raw.chunks_exact(2)
                                .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                                .collect(),
                        )
                    }
                    other => return Err(ProtocolError::UnknownDtype(other)),
                };
                Message::Forward {
                    header,
                    tokens,
                    hidden,
                    sample,
                }
            }
            CLOSE => Message::Close {
                header: r.header()?,
            },
            TOKEN => Message::Token {
                sequence: r.u64()?,
                token: r.u32()?,
            },
            FAILED => Message::Failed {
                sequence: r.u64()?,
                reason: r.string(MAX_REASON)?,
            },
            other => return Err(ProtocolError::UnknownTag(other)),
        };
        if r.at != bytes.len() {
            return Err(ProtocolError::Trailing(bytes.len() - r.at));
        }
        Ok(msg)
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u16).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_header(out: &mut Vec<u8>, h: &Header) {
    put_str(out, truncate(&h.instance, MAX_NAME));
    out.extend(h.sequence.to_le_bytes());
    put_str(out, truncate(&h.owner, MAX_NAME));
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(ProtocolError::Truncated)?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, ProtocolError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, ProtocolError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn f32(&mut self) -> Result<f32, ProtocolError> {
        Ok(f32::from_bits(self.u32()?))
    }

    fn count(&mut self, max: usize, what: &'static str) -> Result<usize, ProtocolError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(ProtocolError::TooMany { what, n, max });
        }
        Ok(n)
    }

    fn string(&mut self, max: usize) -> Result<String, ProtocolError> {
        let b = self.take(2)?;
        let n = u16::from_le_bytes([b[0], b[1]]) as usize;
        if n > max {
            return Err(ProtocolError::TooMany {
                what: "string bytes",
                n,
                max,
            });
        }
        let raw = self.take(n)?;
        String::from_utf8(raw.to_vec()).map_err(|_| ProtocolError::Utf8)
    }

    fn header(&mut self) -> Result<Header, ProtocolError> {
        Ok(Header {
            instance: self.string(MAX_NAME)?,
            sequence: self.u64()?,
            owner: self.string(MAX_NAME)?,
        })
    }
}
