//! Adapts the router to the transport: who may connect, and where frames go.

use std::sync::Arc;

use arqon_routing::Identity;
use arqon_routing::{Arrival, Router, Session};
use arqon_transport::{
    Accepted, Acceptor, ApiFuture, ApiRequest, Connection, Refusal, UpgradeRequest, VetFuture, VetRequest, Vetted,
};
use tracing::Instrument;

use crate::api::ApiKeys;
use crate::auth::Authenticator;
use crate::connect_hook::ConnectHook;

/// Admits WebSocket clients into the bus.
#[derive(Debug)]
pub(crate) struct BusAcceptor {
    router: Router,
    authenticator: Arc<Authenticator>,
    api_keys: Arc<ApiKeys>,
    /// When set, the application decides who connects ([`Acceptor::vet`]).
    connect_hook: Option<Arc<ConnectHook>>,
}

impl BusAcceptor {
    pub(crate) fn new(
        router: Router,
        authenticator: Arc<Authenticator>,
        api_keys: ApiKeys,
        connect_hook: Option<Arc<ConnectHook>>,
    ) -> Self {
        BusAcceptor { router, authenticator, api_keys: Arc::new(api_keys), connect_hook }
    }

    /// Registers a client with `identity`.
    fn connect(&self, request: &UpgradeRequest<'_>, identity: Identity) -> Result<Accepted<SessionConn>, Refusal> {
        // Every connection gets a fresh id, so a refusal here is the bus's
        // own trouble, not the client's.
        let (session, inbox) = self.router.connect(identity).map_err(|e| Refusal {
            status: 503,
            code: "INTERNAL",
            message: e.to_string(),
        })?;
        let span = tracing::info_span!("connection", client_id = %session.client_id(), peer = %request.peer);
        span.in_scope(|| tracing::debug!(role = %session.role(), "client connected"));
        Ok(Accepted { conn: SessionConn { session, span, arrival: Arrival::now() }, frames: inbox.frames })
    }
}

/// One client's session, driven by the transport, inside a span that
/// carries the client id (so every log line of the connection names it).
#[derive(Debug)]
pub(crate) struct SessionConn {
    session: Session,
    span: tracing::Span,
    /// When the last read from the socket returned: the frames it completed
    /// arrived then.
    arrival: Arrival,
}

impl Acceptor for BusAcceptor {
    type Conn = SessionConn;

    fn accept(&self, request: &UpgradeRequest<'_>) -> Result<Accepted<SessionConn>, Refusal> {
        self.accept_vetted(request, None)
    }

    fn vets(&self) -> bool {
        self.connect_hook.is_some()
    }

    fn vet(&self, request: VetRequest) -> VetFuture {
        let hook = self.connect_hook.clone();
        Box::pin(async move {
            match hook {
                Some(hook) => hook.ask(request).await.map(|identity| Box::new(identity) as Vetted),
                None => Ok(Box::new(()) as Vetted),
            }
        })
    }

    fn accept_vetted(
        &self,
        request: &UpgradeRequest<'_>,
        vetted: Option<Vetted>,
    ) -> Result<Accepted<SessionConn>, Refusal> {
        let identity = match (&self.connect_hook, vetted.and_then(|v| v.downcast::<Identity>().ok())) {
            (_, Some(identity)) => *identity,
            (None, None) => self.authenticator.identify(request)?,
            // An upgrade that reached the acceptor without the hook's answer
            // (no path of this crate or of `Endpoint` does that): fail
            // closed rather than let it in unasked.
            (Some(_), None) => {
                return Err(Refusal {
                    status: 503,
                    code: "INTERNAL",
                    message: "this bus asks a connect hook, which was not asked about this connection".to_owned(),
                });
            }
        };
        self.connect(request, identity)
    }

    /// Always: with no key configured, every call gets 401.
    fn serves_api(&self) -> bool {
        true
    }

    fn api(&self, request: ApiRequest) -> ApiFuture {
        let router = self.router.clone();
        let keys = Arc::clone(&self.api_keys);
        Box::pin(async move { crate::api::call(&router, &keys, request).await })
    }
}

impl Connection for SessionConn {
    fn on_read(&mut self) {
        self.arrival = Arrival::now();
    }

    async fn on_text(&mut self, text: &str) {
        if let Some(rest) = self.on_text_now(text) {
            rest.await;
        }
    }

    /// A message to a channel the client sent to before is routed here,
    /// with no future at all.
    fn on_text_now(&mut self, text: &str) -> Option<impl Future<Output = ()> + Send> {
        let _entered = self.span.enter();
        let rest = self.session.handle_text_now(text, self.arrival)?;
        Some(rest.instrument(self.span.clone()))
    }

    fn on_binary(&mut self, data: &[u8]) {
        let _entered = self.span.enter();
        self.session.handle_binary(data.len());
    }

    fn on_ping(&mut self, payload: &[u8]) -> bool {
        let _entered = self.span.enter();
        self.session.handle_ping(payload.len())
    }

    fn on_oversize(&mut self) {
        let _entered = self.span.enter();
        tracing::debug!("frame over max_message_bytes; closing with 1009");
        self.session.handle_oversize();
    }
}

impl Drop for SessionConn {
    fn drop(&mut self) {
        let _entered = self.span.enter();
        tracing::debug!("client disconnected");
    }
}
