//! The response body of [`CacheService`](crate::CacheService), and buffering
//! an origin body up to a size limit.

use std::{
    collections::VecDeque,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

/// The body of a response from [`CacheService`](crate::CacheService): either
/// complete bytes (hits, stored misses: a reference-counted [`Bytes`], never a
/// copy), or the origin's body streamed through (responses too large to
/// store, pass-through requests), after any part already read.
#[derive(Debug)]
pub struct CacheBody<B> {
    kind: Kind<B>,
}

#[derive(Debug)]
enum Kind<B> {
    Full(Option<Bytes>),
    Streaming {
        buffered: VecDeque<Bytes>,
        inner: Pin<Box<B>>,
    },
}

impl<B> CacheBody<B> {
    /// A complete body.
    pub fn full(bytes: Bytes) -> Self {
        Self {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
        }
    }

    /// An empty body (HEAD, 304).
    pub fn empty() -> Self {
        Self {
            kind: Kind::Full(None),
        }
    }

    /// The origin's body, streamed through.
    pub fn streaming(inner: B) -> Self {
        Self::prefixed(VecDeque::new(), Box::pin(inner))
    }

    pub(crate) fn prefixed(buffered: VecDeque<Bytes>, inner: Pin<Box<B>>) -> Self {
        Self {
            kind: Kind::Streaming { buffered, inner },
        }
    }
}

impl<B> Body for CacheBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Streaming { buffered, inner } => match buffered.pop_front() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None => inner.as_mut().poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Streaming { buffered, inner } => buffered.is_empty() && inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Streaming { buffered, inner } => {
                let prefix: u64 = buffered.iter().map(|b| b.len() as u64).sum();
                let rest = inner.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(prefix));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(prefix));
                }
                hint
            }
        }
    }
}

/// The outcome of reading an origin body up to a limit.
pub(crate) enum Collected<B: Body> {
    /// The whole body, within the limit.
    Complete(Bytes),
    /// Over the limit: what was read so far, and the rest still to stream.
    TooLarge {
        buffered: VecDeque<Bytes>,
        rest: Pin<Box<B>>,
    },
    /// The body failed while being read.
    Failed(B::Error),
    /// The body paused longer than the idle timeout, or was not complete by
    /// the deadline.
    TimedOut,
}

/// Reads `body` into memory unless it grows past `limit` bytes, in which case
/// reading stops and the caller streams the rest. Trailers are not kept.
/// Each chunk must arrive within `idle`, and the whole read end by
/// `deadline`.
pub(crate) async fn collect_limited<B>(
    body: B,
    limit: usize,
    idle: std::time::Duration,
    deadline: tokio::time::Instant,
) -> Collected<B>
where
    B: Body<Data = Bytes>,
{
    let mut body = Box::pin(body);
    if body.size_hint().lower() > limit as u64 {
        return Collected::TooLarge {
            buffered: VecDeque::new(),
            rest: body,
        };
    }
    let mut chunks: VecDeque<Bytes> = VecDeque::new();
    let mut total = 0usize;
    loop {
        let wait = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .min(idle);
        let Ok(frame) = tokio::time::timeout(wait, body.frame()).await else {
            return Collected::TimedOut;
        };
        match frame {
            None => break,
            Some(Err(error)) => return Collected::Failed(error),
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue; // trailers are not stored
                };
                total = total.saturating_add(data.len());
                chunks.push_back(data);
                if total > limit {
                    return Collected::TooLarge {
                        buffered: chunks,
                        rest: body,
                    };
                }
            }
        }
    }
    Collected::Complete(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop_front().unwrap_or_default(),
        _ => {
            let mut joined = bytes::BytesMut::with_capacity(total);
            for chunk in chunks {
                joined.extend_from_slice(&chunk);
            }
            joined.freeze()
        }
    })
}
