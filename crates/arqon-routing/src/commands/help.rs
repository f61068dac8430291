//! `help`: the command table itself, with what the caller may run.

use arqon_protocol::Role;
use serde::Serialize;

use super::{ArgSpec, COMMANDS, Ctx, Kind, Spec, Surface};
use crate::RoutingError;

pub(crate) static SPEC: Spec = Spec {
    name: "help",
    description: "Lists every command, its arguments, the role it needs, whether only the server API has it and \
                  whether you may run it.",
    role: Role::Guest,
    args: &[],
    kind: Kind::Help,
    surface: Surface::Both,
};

#[derive(Serialize)]
struct Help {
    commands: Vec<Entry>,
}

#[derive(Serialize)]
struct Entry {
    name: &'static str,
    description: &'static str,
    args: &'static [ArgSpec],
    role: Role,
    /// Only the server API has it (`POST /api/<name>`).
    api_only: bool,
    allowed: bool,
}

pub(crate) fn run(ctx: &mut Ctx<'_>) -> Result<(), RoutingError> {
    let role = ctx.session.role();
    let server = ctx.session.client.server;
    let commands = COMMANDS
        .iter()
        .map(|spec| Entry {
            name: spec.name,
            description: spec.description,
            args: spec.args,
            role: spec.role,
            api_only: spec.surface == Surface::Api,
            allowed: role >= spec.role && (server || spec.surface == Surface::Both),
        })
        .collect();
    ctx.respond(&Help { commands });
    Ok(())
}
