//! Starting a source per sandbox, and reading how each one ended.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::client::{format_time, Client, OrgPoller, SocketGate, StartAt, TailOptions, Transport};
use crate::config::PipelineConfig;
use crate::source::{self, SourceEnd, SourceKind, SourceMsg, SourceReport};
use crate::store::SavedPosition;

use super::positions::start_for;
use super::{Mode, PipelineError, RunReport};

/// The sources of a run: one task per followed sandbox, each with its own stop (discovery stops
/// sandboxes that leave the list), and the count of those that ended.
pub(super) struct Sources<'a> {
    client: Client,
    p: &'a PipelineConfig,
    mode: &'a Mode,
    /// Committed positions, where each source resumes.
    loaded: &'a HashMap<String, SavedPosition>,
    org_poller: Option<OrgPoller>,
    socket_gate: Option<SocketGate>,
    /// The batcher's queue; `None` once the run stops taking events (the batcher ends when
    /// every sender is gone).
    tx: Option<mpsc::Sender<SourceMsg>>,
    tasks: JoinSet<SourceReport>,
    /// Stops every source; each has a child of it.
    stop_all: CancellationToken,
    /// The sandboxes followed now, with their stops.
    active: HashMap<String, CancellationToken>,
    /// Every sandbox followed in this run, in the order it was first followed, and as a set.
    followed: Vec<String>,
    ever: HashSet<String>,
    /// Sources that ended while the run went on (not in the drain).
    ended: usize,
}

impl<'a> Sources<'a> {
    /// Start a source for each of `sandboxes`.
    pub(super) fn start(
        client: &Client,
        p: &'a PipelineConfig,
        mode: &'a Mode,
        loaded: &'a HashMap<String, SavedPosition>,
        tx: mpsc::Sender<SourceMsg>,
        sandboxes: Vec<String>,
    ) -> Self {
        // Tails on the polling fallback share one org-wide list request per interval.
        let org_poller = (matches!(mode, Mode::Live)
            && p.transport != Transport::WebSocket
            && p.org_poll.applies(sandboxes.len()))
        .then(|| OrgPoller::start(client.clone(), p.poll_interval, p.page_limit, p.dedupe_window));
        // With a shared poll, socket attempts are shared too: one probe every 30 s while they fail.
        let socket_gate = org_poller
            .as_ref()
            .map(|_| SocketGate::new(Duration::from_secs(30)));
        let mut sources = Sources {
            client: client.clone(),
            p,
            mode,
            loaded,
            org_poller,
            socket_gate,
            tx: Some(tx),
            tasks: JoinSet::new(),
            stop_all: CancellationToken::new(),
            active: HashMap::new(),
            followed: Vec::new(),
            ever: HashSet::new(),
            ended: 0,
        };
        for rid in &sandboxes {
            sources.follow(rid);
        }
        sources
    }

    /// Every sandbox followed in this run.
    pub(super) fn followed(&self) -> &[String] {
        &self.followed
    }

    /// Sandboxes followed now.
    pub(super) fn active(&self) -> usize {
        self.active.len()
    }

    /// Whether every source started has ended while the run went on.
    pub(super) fn all_ended(&self) -> bool {
        self.ended == self.followed.len()
    }

    /// Start following `rid`, unless this run followed it before: one that left the list and
    /// came back is followed again after a restart (its in-flight events must commit first).
    pub(super) fn follow(&mut self, rid: &str) -> bool {
        let Some(tx) = &self.tx else { return false };
        if self.ever.contains(rid) {
            return false;
        }
        self.ever.insert(rid.to_string());
        let stop = self.stop_all.child_token();
        self.tasks.spawn(source::run(
            self.client.clone(),
            Arc::from(rid),
            self.kind(rid),
            tx.clone(),
            stop.clone(),
        ));
        self.active.insert(rid.to_string(), stop);
        self.followed.push(rid.to_string());
        true
    }

    /// Stop following `rid` (it left the sandbox list); its checkpoint stays.
    pub(super) fn unfollow(&mut self, rid: &str) -> bool {
        match self.active.remove(rid) {
            Some(stop) => {
                stop.cancel();
                true
            }
            None => false,
        }
    }

    /// Sandboxes followed now that `listed` does not hold.
    pub(super) fn not_in(&self, listed: &[String]) -> Vec<String> {
        let now: HashSet<&String> = listed.iter().collect();
        self.active.keys().filter(|k| !now.contains(k)).cloned().collect()
    }

    /// The next source to end, once every source started has not ended yet; pending forever
    /// when all have (so a `select!` waits on its other branches).
    pub(super) async fn next_ended(&mut self) -> Option<SourceReport> {
        if self.all_ended() {
            return std::future::pending().await;
        }
        let joined = self.tasks.join_next().await;
        self.ended += 1;
        let r = joined?.ok()?;
        self.active.remove(&*r.resource_id);
        Some(r)
    }

    /// Start no more sources, and let go of the batcher's queue: once every source has ended,
    /// the queue closes.
    pub(super) fn close(&mut self) {
        self.tx = None;
    }

    /// [`Sources::close`], and stop every source; their reports then come from
    /// [`Sources::drain`].
    pub(super) fn stop(&mut self) {
        self.close();
        self.stop_all.cancel();
    }

    /// Wait for every source to end, and hand back how each did.
    pub(super) async fn join_all(&mut self) -> Vec<SourceReport> {
        let mut reports = Vec::new();
        while let Some(joined) = self.tasks.join_next().await {
            if let Ok(r) = joined {
                reports.push(r);
            }
        }
        reports
    }

    /// Wait for every source to end, recording how each did.
    pub(super) async fn drain(&mut self, report: &mut RunReport, fatal: &mut Option<PipelineError>) {
        for r in self.join_all().await {
            record_source(report, r, fatal);
        }
    }

    /// What a source of `rid` does in this mode, from where it stands.
    fn kind(&self, rid: &str) -> SourceKind {
        let p = self.p;
        if let Mode::Given(g) = self.mode {
            return SourceKind::Given(g.events.get(rid).cloned().unwrap_or_default());
        }
        let start = start_for(
            self.loaded.get(rid),
            match self.mode {
                Mode::Live => p.start.clone(),
                Mode::Backfill(w) => StartAt::Time(w.since_us),
                Mode::Given(_) => p.start.clone(),
            },
        );
        match self.mode {
            Mode::Live => SourceKind::Live(TailOptions {
                poll_interval: p.poll_interval,
                transport: p.transport,
                start,
                page_limit: p.page_limit,
                dedupe_window: p.dedupe_window,
                socket_retry_max: p.socket_retry_max,
                org_poller: self.org_poller.clone(),
                socket_gate: self.socket_gate.clone(),
                ..TailOptions::default()
            }),
            Mode::Backfill(w) => SourceKind::Window {
                start,
                until: Some(format_time(
                    w.until_us
                        .unwrap_or_else(|| chrono::Utc::now().timestamp_micros()),
                )),
                page_limit: p.page_limit,
            },
            Mode::Given(_) => SourceKind::Given(Vec::new()),
        }
    }
}

/// Record how a source ended in `report`; the first fatal end becomes the run's error.
pub(super) fn record_source(report: &mut RunReport, r: SourceReport, fatal: &mut Option<PipelineError>) {
    if let Some(t) = r.transport {
        report.transports.insert(r.resource_id.to_string(), t);
    }
    match r.end {
        SourceEnd::Stopped | SourceEnd::Finished => {}
        SourceEnd::Deleted => {
            report
                .stopped
                .insert(r.resource_id.to_string(), "sandbox not found (deleted?)".into());
        }
        SourceEnd::Unfinished(e) => {
            report
                .stopped
                .insert(r.resource_id.to_string(), format!("the listing stopped: {e}"));
        }
        SourceEnd::Fatal(e) => {
            report.stopped.insert(r.resource_id.to_string(), e.to_string());
            if fatal.is_none() {
                *fatal = Some(PipelineError::Source {
                    resource_id: r.resource_id.to_string(),
                    source: e,
                });
            }
        }
    }
}
