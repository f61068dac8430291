//! `help`: the command table itself, with what the caller may run.

use arqon_protocol::Role;
use serde::Serialize;

use super::{ArgSpec, COMMANDS, Ctx, Kind, Spec};
use crate::RoutingError;

pub(crate) static SPEC: Spec = Spec {
    name: "help",
    description: "Lists every command, its arguments, the role it needs and whether you may run it.",
    role: Role::Guest,
    args: &[],
    kind: Kind::Help,
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
    allowed: bool,
}

pub(crate) fn run(ctx: &mut Ctx<'_>) -> Result<(), RoutingError> {
    let role = ctx.session.role();
    let commands = COMMANDS
        .iter()
        .map(|spec| Entry {
            name: spec.name,
            description: spec.description,
            args: spec.args,
            role: spec.role,
            allowed: role >= spec.role,
        })
        .collect();
    ctx.respond(&Help { commands });
    Ok(())
}
