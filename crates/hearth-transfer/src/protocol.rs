//! Wire messages: a compact binary encoding, one message per frame of the channel.
//!
//! Every message starts with `version: u8`, `kind: u8`, `id: u32`; integers are big-endian, as
//! in hearth-net's frame prefix. The decoders take bytes from a peer, so every length and count
//! is checked before use and every failure is a [`ProtocolError`]; nothing panics.

use crate::manifest::{Digest, Manifest, ManifestError, MAX_NAME_LEN};

/// Version byte of every message. A peer speaking another version is answered with
/// [`ErrorCode::Unsupported`].
pub const VERSION: u8 = 1;

/// Bytes before the data in a chunk response; a piece must fit in `max_frame - CHUNK_HEADER_LEN`.
pub const CHUNK_HEADER_LEN: usize = 14;

/// Longest error text carried in an error response.
pub const MAX_ERROR_TEXT: usize = 1024;

const HEADER_LEN: usize = 6;

const KIND_GET_MANIFEST: u8 = 0x01;
const KIND_GET_CHUNK: u8 = 0x02;
const KIND_MANIFEST: u8 = 0x81;
const KIND_CHUNK: u8 = 0x82;
const KIND_ERROR: u8 = 0xFF;

const REF_SHA256: u8 = 1;
const REF_NAME: u8 = 2;

/// Which model a manifest request is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    /// SHA-256 of the whole file: the identity of its content.
    Sha256(Digest),
    /// A catalog name such as `smollm2-135m`; trusted no more than the peer that answers.
    Name(String),
}

/// Part of a chunk: `len` bytes from `offset` within the chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PieceRange {
    pub offset: u32,
    pub len: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    GetManifest {
        id: u32,
        model: ModelRef,
    },
    /// Chunk `index` of the file whose whole-file hash is `file`; all of it, or `range`.
    GetChunk {
        id: u32,
        file: Digest,
        index: u32,
        range: Option<PieceRange>,
    },
}

impl Request {
    pub fn id(&self) -> u32 {
        match self {
            Request::GetManifest { id, .. } | Request::GetChunk { id, .. } => *id,
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// No such model, or this peer does not serve it.
    NotFound,
    /// Well-formed but impossible: chunk index or byte range outside the file.
    BadRequest,
    /// The answer would not fit in one frame; ask for a smaller piece.
    TooLarge,
    /// Malformed message or another protocol version; the server closes the stream after it.
    Unsupported,
    /// The server could not read its own file.
    Internal,
}

impl ErrorCode {
    fn to_byte(self) -> u8 {
        match self {
            ErrorCode::NotFound => 1,
            ErrorCode::BadRequest => 2,
            ErrorCode::TooLarge => 3,
            ErrorCode::Unsupported => 4,
            ErrorCode::Internal => 5,
        }
    }

    fn from_byte(b: u8) -> Option<ErrorCode> {
        Some(match b {
            1 => ErrorCode::NotFound,
            2 => ErrorCode::BadRequest,
            3 => ErrorCode::TooLarge,
            4 => ErrorCode::Unsupported,
            5 => ErrorCode::Internal,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Manifest {
        id: u32,
        manifest: Manifest,
    },
    /// `data` is the piece of chunk `index` that starts `offset` bytes into the chunk.
    Chunk {
        id: u32,
        index: u32,
        offset: u32,
        data: Vec<u8>,
    },
    Error {
        id: u32,
        code: ErrorCode,
        message: String,
    },
}

impl Response {
    pub fn id(&self) -> u32 {
        match self {
            Response::Manifest { id, .. }
            | Response::Chunk { id, .. }
            | Response::Error { id, .. } => *id,
        }
    }
}

/// Why bytes from a peer are not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("empty message")]
    Empty,
    #[error("protocol version {0} is not supported (this side speaks version {VERSION})")]
    Version(u8),
    #[error("unknown message kind {0:#04x}")]
    UnknownKind(u8),
    #[error("a {0} was sent where the other direction's message was expected")]
    WrongDirection(&'static str),
    #[error("message ends inside {what}: {needed} bytes needed, {available} left")]
    Truncated {
        what: &'static str,
        needed: usize,
        available: usize,
    },
    #[error("{extra} bytes follow a complete {what}")]
    TrailingBytes { what: &'static str, extra: usize },
    #[error("unknown model reference tag {0}")]
    UnknownRefTag(u8),
    #[error("{what} is empty")]
    EmptyField { what: &'static str },
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{0} is not valid UTF-8")]
    BadUtf8(&'static str),
    #[error("range flag must be 0 or 1, found {0}")]
    BadFlag(u8),
    #[error("unknown error code {0}")]
    UnknownErrorCode(u8),
    #[error("invalid manifest: {0}")]
    Manifest(#[from] ManifestError),
}

/// A bounds-checked reader over one message.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        let available = self.bytes.len() - self.pos;
        if n > available {
            return Err(ProtocolError::Truncated {
                what,
                needed: n,
                available,
            });
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], ProtocolError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, ProtocolError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, ProtocolError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, ProtocolError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    fn digest(&mut self, what: &'static str) -> Result<Digest, ProtocolError> {
        Ok(Digest(self.array(what)?))
    }

    fn text(&mut self, len: usize, what: &'static str) -> Result<String, ProtocolError> {
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| ProtocolError::BadUtf8(what))
    }

    fn rest(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn finish(&self, what: &'static str) -> Result<(), ProtocolError> {
        match self.rest() {
            0 => Ok(()),
            extra => Err(ProtocolError::TrailingBytes { what, extra }),
        }
    }
}

/// Reads the common header: version, kind, id.
fn header(bytes: &[u8]) -> Result<(Reader<'_>, u8, u32), ProtocolError> {
    let mut r = Reader { bytes, pos: 0 };
    let version = r.u8("version").map_err(|_| ProtocolError::Empty)?;
    if version != VERSION {
        return Err(ProtocolError::Version(version));
    }
    let kind = r.u8("message kind")?;
    let id = r.u32("request id")?;
    Ok((r, kind, id))
}

/// The request id of a message, if its header is readable: lets a server answer a malformed
/// request so the peer can match the error to what it sent.
pub fn peek_id(bytes: &[u8]) -> u32 {
    match bytes.get(2..HEADER_LEN) {
        Some(b) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        None => 0,
    }
}

fn put_header(out: &mut Vec<u8>, kind: u8, id: u32) {
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&id.to_be_bytes());
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        match self {
            Request::GetManifest { id, model } => {
                put_header(&mut out, KIND_GET_MANIFEST, *id);
                match model {
                    ModelRef::Sha256(d) => {
                        out.push(REF_SHA256);
                        out.extend_from_slice(&d.0);
                    }
                    ModelRef::Name(name) => {
                        out.push(REF_NAME);
                        // Names longer than the limit cannot be sent; cutting them (at a
                        // character boundary) keeps the encoder total, and the server then
                        // finds no such model. `request_manifest` refuses them before this.
                        let cut = truncate_utf8(name, MAX_NAME_LEN);
                        out.push(cut.len() as u8);
                        out.extend_from_slice(cut.as_bytes());
                    }
                }
            }
            Request::GetChunk {
                id,
                file,
                index,
                range,
            } => {
                put_header(&mut out, KIND_GET_CHUNK, *id);
                out.extend_from_slice(&file.0);
                out.extend_from_slice(&index.to_be_bytes());
                match range {
                    None => out.push(0),
                    Some(r) => {
                        out.push(1);
                        out.extend_from_slice(&r.offset.to_be_bytes());
                        out.extend_from_slice(&r.len.to_be_bytes());
                    }
                }
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Request, ProtocolError> {
        let (mut r, kind, id) = header(bytes)?;
        let req = match kind {
            KIND_GET_MANIFEST => {
                let model = match r.u8("model reference tag")? {
                    REF_SHA256 => ModelRef::Sha256(r.digest("model sha256")?),
                    REF_NAME => {
                        let len = r.u8("model name length")? as usize;
                        if len == 0 {
                            return Err(ProtocolError::EmptyField { what: "model name" });
                        }
                        ModelRef::Name(r.text(len, "model name")?)
                    }
                    tag => return Err(ProtocolError::UnknownRefTag(tag)),
                };
                r.finish("manifest request")?;
                Request::GetManifest { id, model }
            }
            KIND_GET_CHUNK => {
                let file = r.digest("file sha256")?;
                let index = r.u32("chunk index")?;
                let range = match r.u8("range flag")? {
                    0 => None,
                    1 => Some(PieceRange {
                        offset: r.u32("range offset")?,
                        len: r.u32("range length")?,
                    }),
                    f => return Err(ProtocolError::BadFlag(f)),
                };
                r.finish("chunk request")?;
                Request::GetChunk {
                    id,
                    file,
                    index,
                    range,
                }
            }
            KIND_MANIFEST | KIND_CHUNK | KIND_ERROR => {
                return Err(ProtocolError::WrongDirection("response"))
            }
            k => return Err(ProtocolError::UnknownKind(k)),
        };
        Ok(req)
    }
}

/// A chunk response with room for `len` data bytes after its header, so a server can read the
/// file straight into the frame it sends.
pub fn chunk_frame(id: u32, index: u32, offset: u32, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(CHUNK_HEADER_LEN + len);
    put_header(&mut out, KIND_CHUNK, id);
    out.extend_from_slice(&index.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    out.resize(CHUNK_HEADER_LEN + len, 0);
    out
}

impl Response {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Response::Manifest { id, manifest } => {
                let n = manifest.n_chunks() as usize;
                let mut out = Vec::with_capacity(64 + manifest.name().len() + 32 * n);
                put_header(&mut out, KIND_MANIFEST, *id);
                out.extend_from_slice(&manifest.size().to_be_bytes());
                out.extend_from_slice(&manifest.chunk_size().to_be_bytes());
                out.extend_from_slice(&manifest.sha256().0);
                // Manifest::new bounds the name to MAX_NAME_LEN (255) bytes.
                out.push(manifest.name().len() as u8);
                out.extend_from_slice(manifest.name().as_bytes());
                out.extend_from_slice(&manifest.n_chunks().to_be_bytes());
                for h in manifest.chunk_hashes() {
                    out.extend_from_slice(&h.0);
                }
                out
            }
            Response::Chunk {
                id,
                index,
                offset,
                data,
            } => {
                let mut out = chunk_frame(*id, *index, *offset, 0);
                out.extend_from_slice(data);
                out
            }
            Response::Error { id, code, message } => {
                let mut out = Vec::with_capacity(HEADER_LEN + 3 + message.len());
                put_header(&mut out, KIND_ERROR, *id);
                out.push(code.to_byte());
                let text = truncate_utf8(message, MAX_ERROR_TEXT);
                out.extend_from_slice(&(text.len() as u16).to_be_bytes());
                out.extend_from_slice(text.as_bytes());
                out
            }
        }
    }

    /// Takes the frame by value so a chunk's data keeps the frame's allocation.
    pub fn decode(bytes: Vec<u8>) -> Result<Response, ProtocolError> {
        let (mut r, kind, id) = header(&bytes)?;
        match kind {
            KIND_MANIFEST => {
                let size = r.u64("file size")?;
                let chunk_size = r.u32("chunk size")?;
                let sha256 = r.digest("file sha256")?;
                let name_len = r.u8("name length")? as usize;
                let name = r.text(name_len, "model name")?;
                let count = r.u32("chunk count")?;
                // Checked against the bytes present before anything is allocated for it.
                let want = count as usize * 32;
                if want > r.rest() {
                    return Err(ProtocolError::Truncated {
                        what: "chunk hashes",
                        needed: want,
                        available: r.rest(),
                    });
                }
                let chunks = (0..count)
                    .map(|_| r.digest("chunk hash"))
                    .collect::<Result<Vec<_>, _>>()?;
                r.finish("manifest")?;
                let manifest = Manifest::new(name, size, chunk_size, sha256, chunks)?;
                Ok(Response::Manifest { id, manifest })
            }
            KIND_CHUNK => {
                let index = r.u32("chunk index")?;
                let offset = r.u32("piece offset")?;
                let mut data = bytes;
                data.drain(..CHUNK_HEADER_LEN);
                Ok(Response::Chunk {
                    id,
                    index,
                    offset,
                    data,
                })
            }
            KIND_ERROR => {
                let byte = r.u8("error code")?;
                let code =
                    ErrorCode::from_byte(byte).ok_or(ProtocolError::UnknownErrorCode(byte))?;
                let len = r.u16("error text length")? as usize;
                if len > MAX_ERROR_TEXT {
                    return Err(ProtocolError::TooLong {
                        what: "error text",
                        len,
                        max: MAX_ERROR_TEXT,
                    });
                }
                let message = r.text(len, "error text")?;
                r.finish("error response")?;
                Ok(Response::Error { id, code, message })
            }
            KIND_GET_MANIFEST | KIND_GET_CHUNK => Err(ProtocolError::WrongDirection("request")),
            k => Err(ProtocolError::UnknownKind(k)),
        }
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
