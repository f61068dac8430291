//! The stream of incoming messages and events.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::mpsc;

use crate::Incoming;

/// Every [`Incoming`] item of one client, in arrival order: a [`Stream`], and
/// also readable with [`Events::recv`].
///
/// Backed by a bounded queue of
/// [`ClientOptions::event_capacity`](crate::ClientOptions::event_capacity)
/// items; see there for what happens when it is full. The stream ends after
/// the client closes.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Incoming>,
}

impl Events {
    pub(crate) fn new(rx: mpsc::Receiver<Incoming>) -> Self {
        Events { rx }
    }

    /// The next item; `None` once the client has closed and everything
    /// queued was read.
    pub async fn recv(&mut self) -> Option<Incoming> {
        self.rx.recv().await
    }

    /// The next item if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Incoming> {
        self.rx.try_recv().ok()
    }
}

impl Stream for Events {
    type Item = Incoming;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Incoming>> {
        self.rx.poll_recv(cx)
    }
}
