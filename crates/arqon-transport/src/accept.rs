//! The accept loop both listeners share.

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Accepts on `listener` until `shutdown` resolves, spawning
/// `serve(stream, peer)` into `connections` for each connection and reaping
/// finished ones so the set stays as small as the live count. An accept
/// error (running out of file descriptors, say) must not end the server: it
/// is logged, and accepting resumes after a short pause.
pub(crate) async fn accept_until<F, Fut>(
    listener: &TcpListener,
    shutdown: impl Future<Output = ()>,
    connections: &mut JoinSet<()>,
    what: &'static str,
    mut serve: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve(stream, peer));
                }
                Err(e) => {
                    tracing::warn!(error = %e, listener = what, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}
