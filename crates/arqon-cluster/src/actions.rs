//! The application's actions on clients of other nodes, as requests with
//! answers: each request gets an id, the nodes asked answer it on the
//! asking node's topic, and [`PendingActions`] gathers their reports until
//! every node asked has answered or the wait is over.

use std::collections::HashMap;

use arqon_routing::ActionReport;
use parking_lot::Mutex;
use tokio::sync::oneshot;

/// Requests waiting for answers, by id.
#[derive(Debug, Default)]
pub(crate) struct PendingActions {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    waiting: HashMap<u64, Pending>,
}

#[derive(Debug)]
struct Pending {
    /// Nodes yet to answer.
    left: usize,
    report: ActionReport,
    done: oneshot::Sender<ActionReport>,
}

impl PendingActions {
    /// A new request to `nodes` nodes: its id, and where the gathered report
    /// arrives once all of them answered.
    pub(crate) fn register(&self, nodes: usize) -> (u64, oneshot::Receiver<ActionReport>) {
        let (done, answered) = oneshot::channel();
        let mut inner = self.inner.lock();
        inner.next += 1;
        let id = inner.next;
        inner.waiting.insert(id, Pending { left: nodes, report: ActionReport::default(), done });
        (id, answered)
    }

    /// One node's answer to request `id` (an unknown id, whose wait is over
    /// or which was never made here, is ignored).
    pub(crate) fn answered(&self, id: u64, report: ActionReport) {
        let mut inner = self.inner.lock();
        let Some(pending) = inner.waiting.get_mut(&id) else { return };
        pending.report.merge(report);
        pending.left = pending.left.saturating_sub(1);
        if pending.left == 0
            && let Some(pending) = inner.waiting.remove(&id)
        {
            let _ = pending.done.send(pending.report);
        }
    }

    /// Stops waiting for request `id`: what its nodes reported so far, with
    /// those that did not answer counted as `unanswered`; `None` if it was
    /// complete already.
    pub(crate) fn give_up(&self, id: u64) -> Option<ActionReport> {
        let pending = self.inner.lock().waiting.remove(&id)?;
        let mut report = pending.report;
        report.unanswered += pending.left;
        Some(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_completes_when_every_node_asked_answered() {
        let pending = PendingActions::default();
        let (id, mut answered) = pending.register(2);
        pending.answered(id, ActionReport { touched: 1, ..ActionReport::default() });
        assert!(answered.try_recv().is_err(), "one node of two answered");
        pending.answered(id, ActionReport { touched: 2, answer: Some("{}".into()), ..ActionReport::default() });
        let report = answered.try_recv().unwrap();
        assert_eq!((report.touched, report.answer.as_deref(), report.unanswered), (3, Some("{}"), 0));
        // A late or unknown answer changes nothing.
        pending.answered(id, ActionReport { touched: 5, ..ActionReport::default() });
        pending.answered(999, ActionReport::default());
        assert!(pending.give_up(id).is_none());
    }

    #[test]
    fn giving_up_reports_what_came_and_who_did_not_answer() {
        let pending = PendingActions::default();
        let (id, _answered) = pending.register(3);
        pending.answered(id, ActionReport { touched: 1, ..ActionReport::default() });
        let report = pending.give_up(id).unwrap();
        assert_eq!((report.touched, report.unanswered), (1, 2));
        assert!(pending.give_up(id).is_none(), "forgotten");
    }
}
