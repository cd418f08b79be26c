//! A deadline on reading a request body: a client that sends its body
//! slowly (or never) holds a connection, a task and a buffer; after
//! `server.body_timeout` the read fails with [`BodyTimeout`], and the
//! handler answers 408.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body did not arrive within its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within server.body_timeout")]
pub struct BodyTimeout;

impl BodyTimeout {
    /// Whether `e` (or anything it wraps) is a [`BodyTimeout`].
    pub fn caused(e: &(dyn std::error::Error + 'static)) -> bool {
        let mut next = Some(e);
        while let Some(e) = next {
            if e.is::<BodyTimeout>() {
                return true;
            }
            next = e.source();
        }
        false
    }
}

/// `inner`, failing with [`BodyTimeout`] once `timeout` has passed since
/// the request arrived.
pub struct Deadline<B> {
    inner: B,
    sleep: Pin<Box<Sleep>>,
}

impl<B> Deadline<B> {
    /// Wraps `inner` with a deadline `timeout` from now.
    pub fn new(inner: B, timeout: Duration) -> Deadline<B> {
        Deadline {
            inner,
            sleep: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

impl<B> Body for Deadline<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match this.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimeout.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body that never sends anything.
    struct Silent;

    impl Body for Silent {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_silent_body_times_out_and_a_whole_one_does_not() {
        let slow = axum::body::Body::new(Deadline::new(Silent, Duration::from_millis(50)));
        let e = axum::body::to_bytes(slow, 1024)
            .await
            .expect_err("times out");
        assert!(BodyTimeout::caused(&e), "{e:?}");

        let whole = axum::body::Body::new(Deadline::new(
            http_body_util::Full::new(Bytes::from_static(b"hello")),
            Duration::from_secs(5),
        ));
        let bytes = axum::body::to_bytes(whole, 1024).await.expect("arrives");
        assert_eq!(&bytes[..], b"hello");

        let big = axum::body::Body::new(Deadline::new(
            http_body_util::Full::new(Bytes::from_static(b"hello")),
            Duration::from_secs(5),
        ));
        let e = axum::body::to_bytes(big, 2)
            .await
            .expect_err("over the limit");
        assert!(!BodyTimeout::caused(&e), "a size error is not a timeout");
    }
}
