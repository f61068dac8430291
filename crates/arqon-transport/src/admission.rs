//! Who may open a connection: total and per-IP connection limits, and the
//! browser `Origin` check.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::{Refusal, TransportConfig};

/// Live connection counts. Touched once per accept and once per close, never
/// per frame.
#[derive(Debug, Default)]
pub(crate) struct Admission {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Holds one connection slot; frees it when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.total.fetch_sub(1, Ordering::AcqRel);
        let mut per_ip = self.admission.per_ip.lock();
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

impl Admission {
    /// Connections holding a slot now (upgrades under way included).
    pub(crate) fn live(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Takes a slot for a connection from `ip` (half-open upgrades count
    /// too, so a flood of them cannot crowd out the limit's purpose), or says
    /// which limit refuses it.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr, config: &TransportConfig) -> Result<Slot, Refusal> {
        let total = self.total.fetch_add(1, Ordering::AcqRel) + 1;
        let mut per_ip = self.per_ip.lock();
        let count = per_ip.entry(ip).or_insert(0);
        *count += 1;
        let this_ip = *count;
        drop(per_ip);
        let slot = Slot { admission: Arc::clone(self), ip };
        if config.max_connections > 0 && total > config.max_connections {
            return Err(Refusal {
                status: 503,
                code: "UNAVAILABLE",
                message: format!("the server is at its connection limit ({})", config.max_connections),
            });
        }
        if config.max_connections_per_ip > 0 && this_ip > config.max_connections_per_ip {
            return Err(Refusal {
                status: 429,
                code: "RATE_LIMITED",
                message: format!("too many connections from {ip} (at most {})", config.max_connections_per_ip),
            });
        }
        Ok(slot)
    }
}

/// Checks a browser's `Origin` against the allow-list. No `Origin` header
/// (non-browser clients) and an empty list both pass.
pub(crate) fn check_origin(origin: Option<&str>, allowed: &[String]) -> Result<(), Refusal> {
    match origin {
        Some(origin) if !allowed.is_empty() && !allowed.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(origin)) => {
            Err(Refusal { status: 403, code: "FORBIDDEN", message: format!("origin {origin} is not allowed") })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_refuse_and_slots_free_on_drop() {
        let admission = Arc::new(Admission::default());
        let config = TransportConfig { max_connections: 2, max_connections_per_ip: 1, ..TransportConfig::default() };
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let first = admission.admit(a, &config).unwrap();
        assert_eq!(admission.admit(a, &config).unwrap_err().status, 429);
        let _second = admission.admit(b, &config).unwrap();
        assert_eq!(admission.admit(c, &config).unwrap_err().status, 503);
        drop(first);
        assert!(admission.admit(a, &config).is_ok());
        assert_eq!(admission.total.load(Ordering::Acquire), 1);
    }

    #[test]
    fn origins() {
        let allowed = vec!["https://app.example".to_owned()];
        assert!(check_origin(None, &allowed).is_ok());
        assert!(check_origin(Some("https://app.example"), &allowed).is_ok());
        assert_eq!(check_origin(Some("https://evil.example"), &allowed).unwrap_err().status, 403);
        assert!(check_origin(Some("https://evil.example"), &[]).is_ok());
    }
}
