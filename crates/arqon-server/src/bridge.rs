//! Adapts the router to the transport: who may connect, and where frames go.

use arqon_protocol::Role;
use arqon_routing::{Identity, Router, Session};
use arqon_transport::{Accepted, Acceptor, Connection, Refusal, UpgradeRequest};

/// Admits WebSocket clients into the bus.
#[derive(Debug)]
pub(crate) struct BusAcceptor {
    router: Router,
    default_role: Role,
}

impl BusAcceptor {
    pub(crate) fn new(router: Router, default_role: Role) -> Self {
        BusAcceptor { router, default_role }
    }
}

/// One client's session, driven by the transport.
#[derive(Debug)]
pub(crate) struct SessionConn(Session);

impl Acceptor for BusAcceptor {
    type Conn = SessionConn;

    fn accept(&self, _request: &UpgradeRequest<'_>) -> Result<Accepted<SessionConn>, Refusal> {
        let identity = Identity {
            role: self.default_role,
            client_id: None,
        };
        let (session, inbox) = self.router.connect(identity).map_err(|e| Refusal {
            status: 409,
            code: "FORBIDDEN",
            message: e.to_string(),
        })?;
        tracing::debug!(client_id = %session.client_id(), "client connected");
        Ok(Accepted {
            conn: SessionConn(session),
            frames: inbox.frames,
            close: inbox.close,
        })
    }
}

impl Connection for SessionConn {
    async fn on_text(&mut self, text: &str) {
        self.0.handle_text(text).await;
    }

    fn on_binary(&mut self) {
        self.0.handle_binary();
    }

    fn on_oversize(&mut self) {
        self.0.handle_oversize();
    }
}
