//! Length-prefixed frames: a big-endian `u32` length, then that many bytes. Every reader is
//! given a maximum, checked before any allocation, so a peer cannot make us allocate more.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::FrameError;

pub const LEN_PREFIX: usize = 4;

/// Pure decoder over a buffer: `Ok(None)` when more bytes are needed, else the payload and the
/// number of bytes consumed.
pub fn decode_frame(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some(prefix) = buf.get(..LEN_PREFIX) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if len > max {
        return Err(FrameError::TooLarge {
            size: len,
            limit: max,
        });
    }
    match buf.get(LEN_PREFIX..LEN_PREFIX + len) {
        Some(payload) => Ok(Some((payload, LEN_PREFIX + len))),
        None => Ok(None),
    }
}

pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    let len = u32::try_from(payload.len()).map_err(|_| FrameError::TooLarge {
        size: payload.len(),
        limit: u32::MAX as usize,
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Reads one frame. `Ok(None)` on a clean end of stream before the first prefix byte.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut prefix = [0u8; LEN_PREFIX];
    let mut got = 0;
    while got < LEN_PREFIX {
        let n = r.read(&mut prefix[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(FrameError::TooLarge {
            size: len,
            limit: max,
        });
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    })?;
    Ok(Some(buf))
}

/// Writes one frame as a single buffer so small frames leave in one write, then flushes.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    payload: &[u8],
) -> Result<(), FrameError> {
    let mut buf = Vec::with_capacity(LEN_PREFIX + payload.len());
    encode_frame(payload, &mut buf)?;
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn round_trip_and_partial() {
        let mut buf = Vec::new();
        encode_frame(b"hello", &mut buf).unwrap();
        assert_eq!(decode_frame(&buf, 16).unwrap(), Some((&b"hello"[..], 9)));
        for cut in 0..buf.len() {
            assert_eq!(decode_frame(&buf[..cut], 16).unwrap(), None);
        }
        assert!(matches!(
            decode_frame(&buf, 4),
            Err(FrameError::TooLarge { size: 5, limit: 4 })
        ));
    }

    #[test]
    fn mutation_loop_never_panics() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut seed = Vec::new();
        encode_frame(&[0xAB; 100], &mut seed).unwrap();
        for _ in 0..20_000 {
            let mut b = seed.clone();
            for _ in 0..rng.gen_range(1..6) {
                match rng.gen_range(0..3) {
                    0 if !b.is_empty() => {
                        let i = rng.gen_range(0..b.len());
                        b[i] = rng.gen();
                    }
                    1 => b.truncate(rng.gen_range(0..=b.len())),
                    _ => b.extend((0..rng.gen_range(0..8)).map(|_| rng.gen::<u8>())),
                }
            }
            if let Ok(Some((p, used))) = decode_frame(&b, 1 << 20) {
                assert!(used <= b.len() && p.len() + LEN_PREFIX == used);
            }
        }
    }

    #[test]
    fn async_reader_rejects_oversize_and_truncation() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut big = Vec::new();
            encode_frame(&[1u8; 64], &mut big).unwrap();
            let mut r = futures::io::Cursor::new(big.clone());
            assert!(matches!(
                read_frame(&mut r, 63).await,
                Err(FrameError::TooLarge { .. })
            ));
            let mut r = futures::io::Cursor::new(big[..10].to_vec());
            assert!(matches!(
                read_frame(&mut r, 64).await,
                Err(FrameError::Truncated)
            ));
            let mut r = futures::io::Cursor::new(Vec::new());
            assert!(matches!(read_frame(&mut r, 64).await, Ok(None)));
            let mut r = futures::io::Cursor::new(big);
            assert_eq!(read_frame(&mut r, 64).await.unwrap().unwrap().len(), 64);
        });
    }
}
