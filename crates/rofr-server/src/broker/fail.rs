//! Named failure points, one at each durable step. They exist only in this crate's own
//! tests: there a child process is armed (`ROFR_FAIL_AT=point:n`) to die at the n-th
//! time it reaches one, as a crash would, and the test restarts a broker on what it
//! left behind (`crash_tests.rs`). Everywhere else [`reached`] is an empty function.

/// A durable step a broker can die at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailPoint {
    /// A batch is built and about to be written.
    BeforeCommit,
    /// A batch is written; its leaves are not yet in the ledger's tree.
    BeforeLedgerAppend,
    /// A batch is written and in the tree; none of its commands is answered yet.
    AfterCommit,
    /// The committer thread holds a batch from the writer and has not begun writing it.
    InCommitter,
    /// A checkpoint is signed and not yet stored.
    SigningCheckpoint,
    /// A webhook delivery is being staged beside the event it announces.
    QueueingWebhook,
}

impl FailPoint {
    #[cfg(test)]
    pub(crate) const ALL: [FailPoint; 6] = [
        FailPoint::BeforeCommit,
        FailPoint::BeforeLedgerAppend,
        FailPoint::AfterCommit,
        FailPoint::InCommitter,
        FailPoint::SigningCheckpoint,
        FailPoint::QueueingWebhook,
    ];

    #[cfg(test)]
    pub(crate) fn name(self) -> &'static str {
        match self {
            FailPoint::BeforeCommit => "before-commit",
            FailPoint::BeforeLedgerAppend => "before-ledger-append",
            FailPoint::AfterCommit => "after-commit",
            FailPoint::InCommitter => "in-committer",
            FailPoint::SigningCheckpoint => "signing-checkpoint",
            FailPoint::QueueingWebhook => "queueing-webhook",
        }
    }
}

/// The broker has reached `point`.
#[cfg(not(test))]
#[inline(always)]
pub(crate) fn reached(_point: FailPoint) {}

/// The broker has reached `point`: a process armed to die there at this time aborts.
#[cfg(test)]
pub(crate) fn reached(point: FailPoint) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static ARMED: OnceLock<Option<(FailPoint, u64)>> = OnceLock::new();
    static TIMES: AtomicU64 = AtomicU64::new(0);
    let armed = ARMED.get_or_init(|| {
        let armed = std::env::var("ROFR_FAIL_AT").ok()?;
        let (name, nth) = armed.split_once(':')?;
        let point = FailPoint::ALL.into_iter().find(|p| p.name() == name)?;
        Some((point, nth.parse().ok()?))
    });
    if let Some((at, nth)) = *armed {
        if at == point && TIMES.fetch_add(1, Ordering::SeqCst) + 1 == nth {
            eprintln!("failing at {}", point.name());
            std::process::abort();
        }
    }
}
