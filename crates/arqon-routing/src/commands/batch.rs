//! `batch`: several API commands in one request, answered in order (server
//! API only).

use std::borrow::Cow;
use std::fmt::Write as _;

use arqon_protocol::{ErrorCode, ProtocolError, RawJson, RawValue, Role};
use serde::{Deserialize, Serialize};

use super::{ArgKind, ArgSpec, Args, Ctx, Kind, Spec, Surface};
use crate::RoutingError;

/// Commands one batch may hold.
pub(crate) const MAX_BATCH: usize = 100;

pub(crate) static SPEC: Spec = Spec {
    name: "batch",
    description: "Runs up to 100 commands ({\"command\", \"args\"}) in order; each is checked against the key's \
                  role on its own, and `results` holds each payload or {\"error\"}.",
    role: Role::Guest,
    args: &[ArgSpec::required("commands", ArgKind::Json, "a list of {\"command\", \"args\"}")],
    kind: Kind::Batch,
    surface: Surface::Api,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Item<'a> {
    #[serde(borrow)]
    command: Cow<'a, str>,
    #[serde(default, borrow)]
    args: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'static str,
    message: &'a str,
}

#[derive(Serialize)]
struct Failed<'a> {
    error: ErrorBody<'a>,
}

fn invalid(message: impl Into<String>) -> ProtocolError {
    ProtocolError::new(ErrorCode::InvalidArgs, message)
}

pub(crate) async fn run(ctx: &mut Ctx<'_>, args: &Args<'_>) -> Result<(), RoutingError> {
    let raw = args.raw("commands").map(|r| r.get()).unwrap_or("null");
    let items: Vec<Item<'_>> = serde_json::from_str(raw)
        .map_err(|e| invalid(format!("commands must be a list of {{\"command\", \"args\"}}: {e}")))?;
    if items.len() > MAX_BATCH {
        return Err(
            invalid(format!("a batch holds at most {MAX_BATCH} commands (this one has {})", items.len())).into()
        );
    }
    if items.iter().any(|item| item.command == SPEC.name) {
        return Err(invalid("a batch cannot hold another batch").into());
    }
    let mut results = String::from("{\"results\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            results.push(',');
        }
        // Boxed: the batch's future holds each command's.
        match Box::pin(ctx.session.call(&item.command, item.args.map(RawJson::from))).await {
            Ok(payload) => results.push_str(&payload),
            Err(error) => {
                let failed = Failed { error: ErrorBody { code: error.code.as_str(), message: &error.message } };
                let _ = write!(results, "{}", serde_json::to_string(&failed).unwrap_or_else(|_| "null".to_owned()));
            }
        }
    }
    results.push_str("]}");
    ctx.session.captured = Some(results);
    Ok(())
}
