//! The binary encoding of [`Entry`] used by the Redis tiers and the journal.
//!
//! ```text
//! magic "CHTE" | version u8 | kind u8 | flags u8
//! stored_at ms u64 | fresh_until ms u64 | keep_until ms u64
//! swr s u32 | sie s u32 | initial_age s u32
//! tags: u16 count, each u16 len + UTF-8
//! payload: response = status u16, u16 header count, each (u16 name len + name,
//!                     u32 value len + value), u32 body len + body
//!          value    = u32 len + bytes
//!          variants = u16 count, each u16 len + name
//!          counter  = i64
//! crc32 u32 over everything before it
//! ```
//! All integers are big-endian. Lengths that do not fit their field are an
//! encoding invariant the constructors cannot violate for sane data; the
//! encoder saturates rather than panicking and the checksum then rejects it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::{DecodeError, Entry, EntryMeta, Payload, StoredResponse, unix_millis};

/// The four bytes every encoded entry starts with.
pub const MAGIC: [u8; 4] = *b"CHTE";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;

const KIND_RESPONSE: u8 = 0;
const KIND_VALUE: u8 = 1;
const KIND_VARIANTS: u8 = 2;
const KIND_COUNTER: u8 = 3;
const FLAG_MUST_REVALIDATE: u8 = 0b0000_0001;
const FLAG_PERSISTENT: u8 = 0b0000_0010;
const KNOWN_FLAGS: u8 = FLAG_MUST_REVALIDATE | FLAG_PERSISTENT;
const HEADER_LEN: usize = 4 + 3 + 3 * 8 + 3 * 4;
const CRC_LEN: usize = 4;

fn from_millis(ms: u64) -> Result<SystemTime, DecodeError> {
    UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .ok_or(DecodeError::Invalid { field: "timestamp" })
}

fn secs_u32(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

fn put_u16_len(buf: &mut BytesMut, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    buf.put_u16(len);
    buf.put_slice(&bytes[..usize::from(len)]);
}

fn put_u32_len(buf: &mut BytesMut, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    buf.put_u32(len);
    // u32 -> usize never truncates on the 32/64-bit targets cachette supports.
    buf.put_slice(&bytes[..len as usize]);
}

pub(crate) fn encode(entry: &Entry) -> Bytes {
    let meta = entry.meta();
    let mut buf = BytesMut::with_capacity(entry.weight() + HEADER_LEN + CRC_LEN);
    buf.put_slice(&MAGIC);
    buf.put_u8(FORMAT_VERSION);
    buf.put_u8(match entry.payload() {
        Payload::Response(_) => KIND_RESPONSE,
        Payload::Value(_) => KIND_VALUE,
        Payload::Variants(_) => KIND_VARIANTS,
        Payload::Counter(_) => KIND_COUNTER,
    });
    let mut flags = 0;
    if meta.must_revalidate {
        flags |= FLAG_MUST_REVALIDATE;
    }
    if meta.persistent {
        flags |= FLAG_PERSISTENT;
    }
    buf.put_u8(flags);
    buf.put_u64(unix_millis(meta.stored_at));
    buf.put_u64(unix_millis(meta.fresh_until));
    buf.put_u64(unix_millis(meta.keep_until));
    buf.put_u32(secs_u32(meta.stale_while_revalidate));
    buf.put_u32(secs_u32(meta.stale_if_error));
    buf.put_u32(secs_u32(meta.initial_age));
    let tag_count = u16::try_from(meta.tags.len()).unwrap_or(u16::MAX);
    buf.put_u16(tag_count);
    for tag in meta.tags.iter().take(usize::from(tag_count)) {
        put_u16_len(&mut buf, tag.as_bytes());
    }
    match entry.payload() {
        Payload::Response(response) => {
            buf.put_u16(response.status.as_u16());
            let count = u16::try_from(response.headers.len()).unwrap_or(u16::MAX);
            buf.put_u16(count);
            for (name, value) in response.headers.iter().take(usize::from(count)) {
                put_u16_len(&mut buf, name.as_str().as_bytes());
                put_u32_len(&mut buf, value.as_bytes());
            }
            put_u32_len(&mut buf, &response.body);
        }
        Payload::Value(value) => put_u32_len(&mut buf, value),
        Payload::Variants(names) => {
            let count = u16::try_from(names.len()).unwrap_or(u16::MAX);
            buf.put_u16(count);
            for name in names.iter().take(usize::from(count)) {
                put_u16_len(&mut buf, name.as_str().as_bytes());
            }
        }
        Payload::Counter(value) => buf.put_i64(*value),
    }
    let crc = crc32fast::hash(&buf);
    buf.put_u32(crc);
    buf.freeze()
}

/// A bounds-checked cursor over the input.
struct Reader {
    bytes: Bytes,
    pos: usize,
}

impl Reader {
    fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len());
        match end {
            Some(end) => {
                let out = self.bytes.slice(self.pos..end);
                self.pos = end;
                Ok(out)
            }
            None => Err(DecodeError::Truncated {
                offset: self.pos,
                needed: self.pos.saturating_add(n) - self.bytes.len(),
            }),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&bytes);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn u16_bytes(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }
    fn u32_bytes(&mut self) -> Result<Bytes, DecodeError> {
        let len =
            usize::try_from(self.u32()?).map_err(|_| DecodeError::Invalid { field: "length" })?;
        self.take(len)
    }
    fn header_name(&mut self) -> Result<HeaderName, DecodeError> {
        let raw = self.u16_bytes()?;
        HeaderName::from_bytes(&raw).map_err(|_| DecodeError::Invalid {
            field: "header name",
        })
    }
}

pub(crate) fn decode(bytes: Bytes) -> Result<Entry, DecodeError> {
    if bytes.len() < MAGIC.len() {
        return Err(DecodeError::Truncated {
            offset: 0,
            needed: MAGIC.len() - bytes.len(),
        });
    }
    if bytes[..4] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if bytes.len() < HEADER_LEN + CRC_LEN {
        return Err(DecodeError::Truncated {
            offset: bytes.len(),
            needed: HEADER_LEN + CRC_LEN - bytes.len(),
        });
    }
    let version = bytes[4];
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let (content, crc) = bytes.split_at(bytes.len() - CRC_LEN);
    let mut stored = [0u8; 4];
    stored.copy_from_slice(crc);
    let stored = u32::from_be_bytes(stored);
    let computed = crc32fast::hash(content);
    if stored != computed {
        return Err(DecodeError::Checksum { stored, computed });
    }
    let content_len = content.len();
    let mut r = Reader {
        bytes: bytes.slice(..content_len),
        pos: 5,
    };
    let kind = r.u8()?;
    let flags = r.u8()?;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(DecodeError::Invalid { field: "flags" });
    }
    let stored_at = from_millis(r.u64()?)?;
    let fresh_until = from_millis(r.u64()?)?;
    let keep_until = from_millis(r.u64()?)?;
    let stale_while_revalidate = Duration::from_secs(u64::from(r.u32()?));
    let stale_if_error = Duration::from_secs(u64::from(r.u32()?));
    let initial_age = Duration::from_secs(u64::from(r.u32()?));
    let tag_count = r.u16()?;
    let mut tags = Vec::with_capacity(usize::from(tag_count).min(64));
    for _ in 0..tag_count {
        let raw = r.u16_bytes()?;
        let tag = std::str::from_utf8(&raw).map_err(|_| DecodeError::Invalid { field: "tag" })?;
        tags.push(tag.to_owned());
    }
    let payload = match kind {
        KIND_RESPONSE => {
            let status = StatusCode::from_u16(r.u16()?)
                .map_err(|_| DecodeError::Invalid { field: "status" })?;
            let count = r.u16()?;
            let mut headers = HeaderMap::with_capacity(usize::from(count).min(128));
            for _ in 0..count {
                let name = r.header_name()?;
                let raw = r.u32_bytes()?;
                let value =
                    HeaderValue::from_maybe_shared(raw).map_err(|_| DecodeError::Invalid {
                        field: "header value",
                    })?;
                // More fields than a map holds (32,768) is not an entry
                // cachette wrote: an error, not a panic.
                headers
                    .try_append(name, value)
                    .map_err(|_| DecodeError::Invalid {
                        field: "header count",
                    })?;
            }
            let body = r.u32_bytes()?;
            Payload::Response(StoredResponse {
                status,
                headers,
                body,
            })
        }
        KIND_VALUE => Payload::Value(r.u32_bytes()?),
        KIND_VARIANTS => {
            let count = r.u16()?;
            let mut names = Vec::with_capacity(usize::from(count).min(64));
            for _ in 0..count {
                names.push(r.header_name()?);
            }
            Payload::Variants(names)
        }
        KIND_COUNTER => Payload::Counter(i64::from_be_bytes(r.array()?)),
        _ => return Err(DecodeError::Invalid { field: "kind" }),
    };
    if r.pos != content_len {
        return Err(DecodeError::Trailing(content_len - r.pos));
    }
    let meta = EntryMeta {
        stored_at,
        fresh_until,
        keep_until,
        stale_while_revalidate,
        stale_if_error,
        initial_age,
        must_revalidate: flags & FLAG_MUST_REVALIDATE != 0,
        tags,
        persistent: flags & FLAG_PERSISTENT != 0,
    };
    Ok(Entry::new(payload, meta))
}
