//! The layer order of the workspace: a lower layer never depends on a higher
//! one, and protocol depends on no other arqon crate.

use std::path::Path;

/// Which arqon crates each library crate may depend on (normal dependencies;
/// dev-dependencies are free to use test support).
const ALLOWED: &[(&str, &[&str])] = &[
    ("arqon-protocol", &[]),
    ("arqon-config", &["arqon-protocol"]),
    ("arqon-storage", &["arqon-protocol"]),
    ("arqon-storage-conformance", &["arqon-protocol", "arqon-storage"]),
    // A backend crate: the trait and the protocol types, nothing above.
    ("arqon-storage-redb", &["arqon-protocol", "arqon-storage"]),
    ("arqon-telemetry", &["arqon-protocol"]),
    ("arqon-outbound", &["arqon-protocol"]),
    ("arqon-routing", &["arqon-protocol", "arqon-outbound", "arqon-storage"]),
    ("arqon-transport", &["arqon-protocol", "arqon-outbound"]),
    ("arqon-client", &["arqon-protocol"]),
    ("arqon-cluster", &["arqon-protocol", "arqon-routing"]),
];

/// The arqon crates named in the `[dependencies]` table of a manifest.
fn arqon_dependencies(manifest: &str) -> Vec<String> {
    let mut in_dependencies = false;
    let mut found = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_dependencies = line == "[dependencies]";
            continue;
        }
        if in_dependencies && line.starts_with("arqon-") {
            let name = line.split(['=', '.', ' ']).next().unwrap_or_default();
            found.push(name.to_owned());
        }
    }
    found
}

#[test]
fn lower_layers_never_depend_on_higher_ones() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates");
    let mut checked = 0;
    for (name, allowed) in ALLOWED {
        let manifest = crates.join(name).join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            assert_ne!(*name, "arqon-protocol", "protocol crate missing");
            continue;
        };
        for dep in arqon_dependencies(&text) {
            assert!(allowed.contains(&dep.as_str()), "{name} must not depend on {dep} (allowed: {allowed:?})");
        }
        checked += 1;
    }
    assert!(checked >= 7, "only {checked} crates checked");
}

#[test]
fn the_parser_sees_dependencies_but_not_dev_dependencies() {
    let manifest = "[package]\nname = \"x\"\n\n[dependencies]\narqon-protocol.workspace = true\narqon-storage = { path = \"../s\" }\nserde = \"1\"\n\n[dev-dependencies]\narqon-server.workspace = true\n";
    assert_eq!(arqon_dependencies(manifest), ["arqon-protocol", "arqon-storage"]);
}
