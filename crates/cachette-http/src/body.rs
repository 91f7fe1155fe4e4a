//! The response body of [`CacheService`](crate::CacheService), and buffering
//! an origin body up to a size limit.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
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
        /// The share of the buffer budget the buffered part holds, given
        /// back once it is sent.
        hold: Option<Reservation>,
    },
}

/// Bytes of origin bodies being read into memory to be stored, across all
/// requests of a layer, and the most allowed: over it, a response streams
/// through uncached instead of adding to memory (N concurrent large misses
/// would otherwise hold N × `max_body_bytes`).
#[derive(Debug)]
pub(crate) struct BufferBudget {
    used: AtomicUsize,
    max: AtomicUsize,
}

impl BufferBudget {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
        })
    }

    pub(crate) fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// Bytes held now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// A share of a [`BufferBudget`], given back on drop.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<BufferBudget>,
    bytes: usize,
}

impl Reservation {
    pub(crate) fn empty(budget: &Arc<BufferBudget>) -> Self {
        Self {
            budget: budget.clone(),
            bytes: 0,
        }
    }

    /// Takes `more` bytes of the budget, or says no (nothing taken).
    fn grow(&mut self, more: usize) -> bool {
        let max = self.budget.max.load(Ordering::Relaxed);
        let taken = self
            .budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(more).filter(|total| *total <= max)
            })
            .is_ok();
        if taken {
            self.bytes += more;
        }
        taken
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
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
        Self::holding(buffered, inner, None)
    }

    pub(crate) fn holding(
        buffered: VecDeque<Bytes>,
        inner: Pin<Box<B>>,
        hold: Option<Reservation>,
    ) -> Self {
        Self {
            kind: Kind::Streaming {
                buffered,
                inner,
                hold,
            },
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
            Kind::Streaming {
                buffered,
                inner,
                hold,
            } => match buffered.pop_front() {
                Some(chunk) => {
                    if buffered.is_empty() {
                        *hold = None;
                    }
                    Poll::Ready(Some(Ok(Frame::data(chunk))))
                }
                None => inner.as_mut().poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Streaming {
                buffered, inner, ..
            } => buffered.is_empty() && inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Streaming {
                buffered, inner, ..
            } => {
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

/// Why a body being read to be stored streams on uncached instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Uncached {
    /// Larger than `max_body_bytes`.
    TooLarge,
    /// The layer's buffer budget is spent (other bodies are being read).
    OverBudget,
    /// Still arriving at the fill deadline: healthy but slow.
    TooSlow,
}

/// The outcome of reading an origin body up to a limit.
pub(crate) enum Collected<B: Body> {
    /// The whole body, within the limit.
    Complete(Bytes),
    /// Not to be stored after all (see [`Uncached`]): what was read so far
    /// (and its share of the budget), and the rest still to stream.
    TooLarge {
        buffered: VecDeque<Bytes>,
        rest: Pin<Box<B>>,
        hold: Reservation,
        why: Uncached,
    },
    /// The body failed while being read.
    Failed(B::Error),
    /// The body paused longer than the idle timeout.
    TimedOut,
}

/// Reads `body` into memory unless it grows past `limit` bytes, in which case
/// reading stops and the caller streams the rest. Trailers are not kept.
/// Each chunk must arrive within `idle` (else the call failed); a body
/// still arriving at `deadline` streams on uncached (the fill is over, the
/// client still gets everything).
pub(crate) async fn collect_limited<B>(
    body: B,
    limit: usize,
    idle: std::time::Duration,
    deadline: tokio::time::Instant,
    budget: &Arc<BufferBudget>,
) -> Collected<B>
where
    B: Body<Data = Bytes>,
{
    let mut body = Box::pin(body);
    let mut hold = Reservation::empty(budget);
    if body.size_hint().lower() > limit as u64 {
        return Collected::TooLarge {
            buffered: VecDeque::new(),
            rest: body,
            hold,
            why: Uncached::TooLarge,
        };
    }
    let mut chunks: VecDeque<Bytes> = VecDeque::new();
    let mut total = 0usize;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Ok(frame) = tokio::time::timeout(left.min(idle), body.frame()).await else {
            if left <= idle {
                return Collected::TooLarge {
                    buffered: chunks,
                    rest: body,
                    hold,
                    why: Uncached::TooSlow,
                };
            }
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
                let within_budget = hold.grow(data.len());
                chunks.push_back(data);
                if total > limit || !within_budget {
                    return Collected::TooLarge {
                        buffered: chunks,
                        rest: body,
                        hold,
                        why: if within_budget {
                            Uncached::TooLarge
                        } else {
                            Uncached::OverBudget
                        },
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
