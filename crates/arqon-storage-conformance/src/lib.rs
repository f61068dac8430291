//! The storage conformance kit for ArqonBus: every rule of the
//! [`Storage`](arqon_storage::Storage) contract as a check, for any backend
//! crate to run in its own tests with one line.
//!
//! This crate owns the checks and the test fixtures they use (real message
//! envelopes, ids appended out of id order). It depends only on
//! `arqon-storage`, `arqon-protocol` and tokio, never on routing, the server
//! or a particular backend; `arqon-storage` runs its own backends (memory,
//! Redis, the degradation wrapper, with and without its journal file)
//! through it, as a dev-dependency.
//!
//! # Layout
//!
//! - [`conformance!`]: one `#[test]` per check for a backend, in a module
//!   named after it, so that a failure names the rule it broke
//!   (`my_backend::history_is_bounded`). The tests need no tokio of their
//!   own: each runs on a fresh multi-threaded runtime.
//! - [`checks`]: the checks themselves, `async fn check(&factory)`, and
//!   [`CHECKS`], their names.
//! - [`fixtures`]: helpers for a backend's further tests.
//!
//! # Usage
//!
//! In the backend crate's `Cargo.toml`:
//!
//! ```toml
//! [dev-dependencies]
//! arqon-storage-conformance = "0.1"
//! ```
//!
//! and in a test file, e.g. `tests/conformance.rs`, one line: a name for the
//! module of tests, and a factory, `async |capacity|` to a fresh, empty
//! backend that keeps at most `capacity` messages per channel:
//!
//! ```
//! use std::sync::Arc;
//! use arqon_storage::{MemoryStorage, Storage};
//!
//! arqon_storage_conformance::conformance!(memory, async |capacity| {
//!     Arc::new(MemoryStorage::new(capacity)) as Arc<dyn Storage>
//! });
//! # fn main() {}
//! ```
//!
//! A backend that needs an outside service can skip when it is missing:
//! `conformance!(name, requires AVAILABLE, factory)` calls
//! `AVAILABLE(test_name) -> bool` first, and a test whose `AVAILABLE` says
//! false returns at once (print why, so that the skip is seen).
//!
//! A crate with no fallible API of its own, this one has no error type: a
//! check that finds the contract broken panics, naming what it expected.

pub mod checks;
pub mod fixtures;

/// The name of every check in [`checks`], in the order
/// [`conformance!`] generates them.
pub const CHECKS: &[&str] = &[
    "append_order_is_kept",
    "duplicate_changes_nothing",
    "history_is_bounded",
    "history_limit_and_before",
    "since_returns_what_follows",
    "stats_count_and_newest",
    "create_channel_is_idempotent",
    "channels_lists_every_record",
    "delete_channel_forgets_everything",
    "unknown_channel_is_empty",
    "channels_are_isolated",
    "concurrent_appends_all_land",
    "append_now_keeps_the_append_rules",
    "fresh_backend_is_healthy",
    "positions_are_consistent",
];

/// One `#[test]` per check of [`checks`] for a backend, in a module named
/// after it.
///
/// - `conformance!(name, factory)`: `factory` is `async |capacity: usize|`
///   to a fresh, empty `Arc<dyn Storage>` keeping at most `capacity`
///   messages per channel. It is called once or more per test.
/// - `conformance!(name, requires AVAILABLE, factory)`: each test first calls
///   `AVAILABLE("name::check")` and returns early (skips) when it is false.
///
/// The module glob-imports its parent (`use super::*`), so the factory may
/// name anything the calling file can.
#[macro_export]
macro_rules! conformance {
    ($backend:ident, requires $available:expr, $factory:expr $(,)?) => {
        $crate::conformance!(@list $backend, $available, $factory);
    };
    ($backend:ident, $factory:expr $(,)?) => {
        $crate::conformance!(@list $backend, (|_: &str| true), $factory);
    };
    // Keep in step with `CHECKS` (a test of this crate compares them).
    (@list $backend:ident, $available:expr, $factory:expr) => {
        $crate::conformance!(@each $backend, $available, $factory, [
            append_order_is_kept,
            duplicate_changes_nothing,
            history_is_bounded,
            history_limit_and_before,
            since_returns_what_follows,
            stats_count_and_newest,
            create_channel_is_idempotent,
            channels_lists_every_record,
            delete_channel_forgets_everything,
            unknown_channel_is_empty,
            channels_are_isolated,
            concurrent_appends_all_land,
            append_now_keeps_the_append_rules,
            fresh_backend_is_healthy,
            positions_are_consistent,
        ]);
    };
    (@each $backend:ident, $available:expr, $factory:expr, [$($check:ident),* $(,)?]) => {
        #[allow(unused_imports)]
        mod $backend {
            use super::*;
            $(
                #[test]
                fn $check() {
                    if !($available)(concat!(stringify!($backend), "::", stringify!($check))) {
                        return;
                    }
                    $crate::__private::block_on(async { $crate::checks::$check(&$factory).await });
                }
            )*
        }
    };
}

/// What [`conformance!`] expands to needs; not a public API.
#[doc(hidden)]
pub mod __private {
    use std::future::Future;

    /// Runs a check on a fresh multi-threaded runtime (two workers: the
    /// concurrency check needs tasks that really interleave, and a factory
    /// may block a worker briefly, e.g. to start a server).
    pub fn block_on<F: Future<Output = ()>>(check: F) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot start a tokio runtime for the check: {e}"));
        runtime.block_on(check);
    }
}
