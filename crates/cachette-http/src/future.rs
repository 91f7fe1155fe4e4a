//! The response future of [`CacheService`](crate::CacheService).

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::Response;

use crate::CacheBody;

type Boxed<B, E> = Pin<Box<dyn Future<Output = Result<Response<CacheBody<B>>, E>> + Send>>;

enum Inner<B, E> {
    /// Answered already (a fresh hit from an in-process tier): taken at
    /// the first poll.
    Ready(Option<Result<Response<CacheBody<B>>, E>>),
    /// The lookup, and whatever follows it, still to run.
    Boxed(Boxed<B, E>),
}

/// The response future of [`CacheService`](crate::CacheService).
///
/// A fresh hit from an in-process tier is answered before the future is
/// made (nothing is allocated for it); otherwise the lookup awaits the
/// tiers before (maybe) calling the inner service, and the work is one
/// boxed async state machine, as in axum's own futures.
pub struct ResponseFuture<B, E> {
    inner: Inner<B, E>,
}

impl<B, E> ResponseFuture<B, E> {
    pub(crate) fn new(
        future: impl Future<Output = Result<Response<CacheBody<B>>, E>> + Send + 'static,
    ) -> Self {
        Self {
            inner: Inner::Boxed(Box::pin(future)),
        }
    }

    /// A future answering `result` at its first poll.
    pub(crate) fn ready(result: Result<Response<CacheBody<B>>, E>) -> Self {
        Self {
            inner: Inner::Ready(Some(result)),
        }
    }
}

// The answer held is only ever moved out whole, never pinned: the future
// is movable whatever the body and error types are (as the boxed one was).
impl<B, E> Unpin for ResponseFuture<B, E> {}

impl<B, E> Future for ResponseFuture<B, E> {
    type Output = Result<Response<CacheBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().inner {
            Inner::Boxed(future) => future.as_mut().poll(cx),
            // Polled again after it answered: a contract breach by the
            // caller; it gets nothing more (as a fused future would).
            Inner::Ready(result) => match result.take() {
                Some(result) => Poll::Ready(result),
                None => Poll::Pending,
            },
        }
    }
}

impl<B, E> fmt::Debug for ResponseFuture<B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
