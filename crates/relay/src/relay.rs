//! One running relay: its publish endpoint, its delivery streams and, in `failover`
//! mode, the choice of target (failover after `failover_after` consecutive failures,
//! failback after the preferred target has been healthy for `failback_after`, manual
//! switchover and switchback). The choice is kept in the outbox, so a restarted relay
//! goes on where it was.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use georep_api::{
    RelayActionReport, RelayDeadLetter, RelayFailover, RelayStatus, RelayTargetStatus,
};
use georep_core::{Accept, Relay, RelayMode, RelayTarget};
use rand::Rng;
use tokio::sync::{watch, Notify};

use crate::deliver::{Outcome, Sender};
use crate::error::{RelayError, Result};
use crate::events;
use crate::outbox::{now_ms, Failover, Outbox, Stored};

/// The stream of `failover` mode (one cursor, whichever target is current).
const ACTIVE: &str = "active";

/// Events a target may refuse as bad data in a row before it counts as failing.
const REFUSED_IN_A_ROW: u32 = 10;

/// Rounds a target may refuse the same batch whole before it goes to the dead letters
/// (a target that refuses everything is taken to be misconfigured and retried, but no
/// batch may hold a stream up forever: records too old for Loki, say).
const GIVE_UP_ROUNDS: u32 = 5;

/// Why a delivery did not go through.
enum Fail {
    /// The target's fault: retried with backoff, counted towards a failover.
    Target(String),
    /// The target refused the whole batch as bad data: a failure too, until the same
    /// batch has been refused [`GIVE_UP_ROUNDS`] times; then dead letters.
    Refused(String),
    /// The relay's own outbox: retried, never a failover.
    Local(String),
}

/// What is known of a target now.
#[derive(Debug, Clone, Default)]
struct Health {
    failures: u32,
    last_error: Option<String>,
    /// Since when probes have found it healthy (failover mode, targets before the
    /// current one).
    healthy_since: Option<Instant>,
}

struct Routing {
    current: usize,
    pinned: bool,
    health: Vec<Health>,
}

/// A relay at work.
pub(crate) struct Running {
    pub(crate) cfg: Relay,
    outbox: Arc<Outbox>,
    sender: Sender,
    routing: Mutex<Routing>,
    /// Woken when events are appended.
    arrived: Notify,
    /// The outbox's last failure, shown in status until a restart.
    local_error: Mutex<Option<String>>,
    /// `dead_letters`: where a copy of each dead letter is written, in another region.
    dead_store: Option<georep_storage::Store>,
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

impl Running {
    /// Opens the outbox and restores the routing it recorded.
    pub(crate) fn open(
        cfg: Relay,
        outbox: Outbox,
        dead_store: Option<georep_storage::Store>,
        archives: std::collections::HashMap<String, georep_storage::Store>,
    ) -> Result<Arc<Self>> {
        let n = cfg.targets.len();
        let current = outbox
            .meta("current")?
            .and_then(|name| cfg.targets.iter().position(|t| t.name == name))
            .unwrap_or(0);
        let pinned = outbox.meta("pinned")?.as_deref() == Some("1");
        let instance = outbox.meta("instance")?.unwrap_or_default();
        let sender = Sender::new(&cfg.name, &format!("{}-{instance}", cfg.name), archives);
        Ok(Arc::new(Self {
            cfg,
            outbox: Arc::new(outbox),
            sender,
            routing: Mutex::new(Routing {
                current,
                pinned,
                health: vec![Health::default(); n],
            }),
            arrived: Notify::new(),
            local_error: Mutex::new(None),
            dead_store,
        }))
    }

    fn routing(&self) -> std::sync::MutexGuard<'_, Routing> {
        self.routing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The most a request body may hold on the wire.
    fn body_limit(&self) -> usize {
        if self.cfg.accept.is_logs() {
            crate::logs::MAX_DECODED
        } else {
            events::MAX_REQUEST + 64 * 1024
        }
    }

    fn streams(&self) -> Vec<String> {
        match self.cfg.mode {
            RelayMode::Failover => vec![ACTIVE.to_string()],
            RelayMode::Replicate => self.cfg.targets.iter().map(|t| t.name.clone()).collect(),
        }
    }

    /// Starts the publish endpoint on `listener` and every delivery task; all stop
    /// when `stop` turns true.
    pub(crate) fn start(
        self: &Arc<Self>,
        listener: std::net::TcpListener,
        tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
        stop: watch::Receiver<bool>,
    ) -> Result<Vec<tokio::task::JoinHandle<()>>> {
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let listen_err = |e: std::io::Error| RelayError::Listen {
            relay: self.cfg.name.clone(),
            addr: addr.clone(),
            detail: e.to_string(),
        };
        listener.set_nonblocking(true).map_err(listen_err)?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(listen_err)?;
        let listener =
            georep_http::Guarded::new(listener, tls, stop.clone()).map_err(listen_err)?;
        let key = axum::middleware::from_fn_with_state(self.clone(), check_key);
        let app = match self.cfg.accept {
            Accept::EventGrid => axum::Router::new()
                .route("/api/events", axum::routing::post(publish))
                .route_layer(key),
            Accept::Logs => axum::Router::new()
                .route(
                    "/dataCollectionRules/{dcr}/streams/{stream}",
                    axum::routing::post(publish_monitor),
                )
                .route_layer(key),
            Accept::Loki => axum::Router::new()
                .route("/loki/api/v1/push", axum::routing::post(publish_loki))
                .route_layer(key)
                .route("/ready", axum::routing::get(|| async { "ready" })),
            Accept::Elasticsearch => axum::Router::new()
                .route("/_bulk", axum::routing::post(publish_bulk))
                .route("/{index}/_bulk", axum::routing::post(publish_bulk_to))
                .route("/", axum::routing::get(es_info))
                .route_layer(key),
        };
        let app = app
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .layer(axum::extract::DefaultBodyLimit::max(self.body_limit()))
            .with_state(self.clone());
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(listener.serve(app, stop.clone())));
        match self.cfg.mode {
            RelayMode::Failover => {
                let me = self.clone();
                tasks.push(tokio::spawn(me.deliver(None, stop.clone())));
                let me = self.clone();
                tasks.push(tokio::spawn(me.failback(stop)));
            }
            RelayMode::Replicate => {
                for i in 0..self.cfg.targets.len() {
                    let me = self.clone();
                    tasks.push(tokio::spawn(me.deliver(Some(i), stop.clone())));
                }
            }
        }
        Ok(tasks)
    }

    /// One delivery stream: `fixed` target (replicate), or whichever is current.
    async fn deliver(self: Arc<Self>, fixed: Option<usize>, mut stop: watch::Receiver<bool>) {
        let stream = fixed.map_or_else(|| ACTIVE.to_string(), |i| self.cfg.targets[i].name.clone());
        let streams = self.streams();
        let n = self.cfg.targets.len();
        // Failures in a row (whatever the target), failovers since the last delivery,
        // and events refused as bad data in a row.
        let (mut attempt, mut hops, mut refused) = (0u32, 0usize, 0u32);
        // The first record of a batch refused whole, and how many times in a row.
        let mut stuck = (0i64, 0u32);
        loop {
            if *stop.borrow() {
                return;
            }
            let idx = fixed.unwrap_or_else(|| self.routing().current);
            let target = self.cfg.targets[idx].clone();
            // A failover stream delivers everything to the current target; a
            // replicate stream skips what a replay addressed to another target.
            let only = fixed.map(|_| target.name.as_str());
            let limits = crate::deliver::limits(target.kind, self.cfg.batch);
            let batch = self
                .outbox
                .cursor(&stream)
                .and_then(|(at, _)| self.outbox.next_batch(at, only, limits));
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    self.local_failure(&e.to_string(), &mut stop).await;
                    continue;
                }
            };
            if batch.is_empty() {
                tokio::select! {
                    () = self.arrived.notified() => {}
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            let mut outcome = self
                .send(&stream, &streams, &target, &batch, &mut refused)
                .await;
            if let Err(Fail::Refused(reason)) = &outcome {
                let first = batch.first().map_or(0, |e| e.seq);
                stuck = if stuck.0 == first {
                    (first, stuck.1 + 1)
                } else {
                    (first, 1)
                };
                outcome = if stuck.1 >= GIVE_UP_ROUNDS {
                    let why = format!("refused {GIVE_UP_ROUNDS} times in a row, whole: {reason}");
                    self.dead(&stream, &streams, &target, &batch, &why).await
                } else {
                    Err(Fail::Target(reason.clone()))
                };
            }
            match outcome {
                Ok(()) => {
                    (attempt, hops) = (0, 0);
                    self.routing().health[idx] = Health::default();
                }
                Err(Fail::Local(e)) => self.local_failure(&e, &mut stop).await,
                Err(Fail::Target(reason) | Fail::Refused(reason)) => {
                    attempt += 1;
                    if self.failed(idx, fixed.is_none(), &reason).await {
                        hops += 1;
                        // The first visit to each other target is immediate; once every
                        // target has failed, the backoff applies to the round.
                        if hops < n {
                            continue;
                        }
                    }
                    // Backoff with jitter: 100 ms doubling to 5 s.
                    let base = (100u64 << attempt.min(6)).min(5000);
                    let wait = base / 2 + rand::rng().random_range(0..=base / 2);
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(wait)) => {}
                        _ = stop.changed() => {}
                    }
                }
            }
        }
    }

    /// The outbox itself failed (disk full, I/O error): not the target's fault, so not
    /// counted towards a failover; logged and tried again in a second.
    async fn local_failure(&self, e: &str, stop: &mut watch::Receiver<bool>) {
        tracing::error!(relay = %self.cfg.name, error = %e, "the relay's outbox failed; deliveries wait");
        if let Ok(mut last) = self.local_error.lock() {
            *last = Some(e.to_string());
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => {}
        }
    }

    /// Delivers one batch: moved past it when delivered; events refused as bad data
    /// (found one by one when a batch is refused) go to the dead letters. A target that
    /// refuses every event of a batch, or `REFUSED_IN_A_ROW` events in a row, is
    /// failing (misconfigured: wrong api-version or input schema), not the data.
    async fn send(
        &self,
        stream: &str,
        streams: &[String],
        target: &RelayTarget,
        batch: &[Stored],
        refused: &mut u32,
    ) -> std::result::Result<(), Fail> {
        let local = |e: RelayError| Fail::Local(e.to_string());
        let misconfigured = |reason: &str| {
            Fail::Refused(format!(
                "it refuses every event as bad data ({reason}); check its URL's api-version and its input schema"
            ))
        };
        match self.sender.send(target, batch).await {
            Outcome::Delivered => {
                *refused = 0;
                let last = batch.last().map_or(0, |e| e.seq);
                self.advance(stream, streams, &target.name, last, batch.len() as u64)
                    .await
                    .map_err(local)
            }
            Outcome::Partial(bad) => {
                // Refused one by one, for what they hold: dead letters; the rest went in.
                *refused = 0;
                for (i, why) in &bad {
                    if let Some(e) = batch.get(*i) {
                        self.dead(stream, streams, target, std::slice::from_ref(e), why)
                            .await?;
                    }
                }
                let last = batch.last().map_or(0, |e| e.seq);
                let n = batch.len().saturating_sub(bad.len()) as u64;
                self.advance(stream, streams, &target.name, last, n)
                    .await
                    .map_err(local)
            }
            Outcome::Failed(reason) => Err(Fail::Target(reason)),
            Outcome::BadData(reason) if batch.len() == 1 => {
                *refused += 1;
                if *refused >= REFUSED_IN_A_ROW {
                    return Err(misconfigured(&reason));
                }
                self.dead(stream, streams, target, batch, &reason).await
            }
            Outcome::BadData(batch_reason) => {
                // One bad event refuses the whole batch: find it, deliver the rest. The
                // refused ones wait until something after them is delivered.
                let mut held: Vec<(Stored, String)> = Vec::new();
                let mut delivered = false;
                for e in batch {
                    match self.sender.send(target, std::slice::from_ref(e)).await {
                        Outcome::Delivered => {
                            for (bad, why) in std::mem::take(&mut held) {
                                self.dead(
                                    stream,
                                    streams,
                                    target,
                                    std::slice::from_ref(&bad),
                                    &why,
                                )
                                .await?;
                            }
                            self.advance(stream, streams, &target.name, e.seq, 1)
                                .await
                                .map_err(local)?;
                            delivered = true;
                            *refused = 0;
                        }
                        Outcome::BadData(why) => held.push((e.clone(), why)),
                        Outcome::Partial(mut bad) => {
                            if let Some((_, why)) = bad.pop() {
                                held.push((e.clone(), why));
                            }
                        }
                        Outcome::Failed(reason) => return Err(Fail::Target(reason)),
                    }
                }
                if !delivered {
                    return Err(misconfigured(&batch_reason));
                }
                for (bad, why) in held {
                    self.dead(stream, streams, target, std::slice::from_ref(&bad), &why)
                        .await?;
                }
                Ok(())
            }
        }
    }

    /// Keeps refused events as dead letters and moves past them.
    async fn dead(
        &self,
        stream: &str,
        streams: &[String],
        target: &RelayTarget,
        events: &[Stored],
        reason: &str,
    ) -> std::result::Result<(), Fail> {
        for e in events {
            tracing::warn!(relay = %self.cfg.name, target = %target.name, event = %e.id, %reason, "dead letter");
        }
        let last = events.last().map_or(0, |e| e.seq);
        let r = async {
            self.outbox
                .dead_letter(&target.name, events, reason)
                .await?;
            self.advance(stream, streams, &target.name, last, 0).await
        };
        r.await.map_err(|e| Fail::Local(e.to_string()))?;
        self.copy_dead(target, events, reason).await;
        Ok(())
    }

    /// Writes a copy of dead letters to the `dead_letters` store, one object per
    /// refusal: `relays/RELAY/dead-letters/TIME-SEQ.json` with the target, the reason
    /// and the events as published. The outbox keeps them for replay either way; a
    /// failed write is logged.
    async fn copy_dead(&self, target: &RelayTarget, events: &[Stored], reason: &str) {
        let (Some(store), Some(first)) = (&self.dead_store, events.first()) else {
            return;
        };
        let mut body = serde_json::to_vec(&serde_json::json!({
            "relay": self.cfg.name,
            "target": target.name,
            "reason": reason,
            "at": rfc3339(now_ms()),
        }))
        .unwrap_or_default();
        // The events go in as published, byte for byte.
        body.pop();
        body.extend_from_slice(b",\"events\":[");
        for (i, e) in events.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&e.body);
        }
        body.extend_from_slice(b"]}");
        let key = format!(
            "relays/{}/dead-letters/{}-{}.json",
            self.cfg.name,
            now_ms(),
            first.seq
        );
        let reader = georep_storage::ObjectReader::from_bytes(body.into(), Default::default());
        if let Err(e) = store.put(&key, reader, 8 << 20, 1).await {
            tracing::error!(relay = %self.cfg.name, key = %key, error = %e, "cannot write a dead letter to the dead_letters store; it stays in the outbox");
        }
    }

    async fn advance(
        &self,
        stream: &str,
        streams: &[String],
        target: &str,
        seq: i64,
        n: u64,
    ) -> Result<()> {
        // The per-target delivery count moves with the cursor, in one commit.
        self.outbox
            .advance_counted(stream, seq, (Some(target), n), streams)
            .await
    }

    /// Counts a failure of target `idx`; in failover mode, fails over after
    /// `failover_after` of them in a row. True when it failed over.
    async fn failed(&self, idx: usize, failover: bool, reason: &str) -> bool {
        let next = {
            let mut r = self.routing();
            let current = r.current;
            let h = &mut r.health[idx];
            h.failures += 1;
            h.last_error = Some(reason.to_string());
            h.healthy_since = None;
            let n = self.cfg.targets.len();
            if !failover || current != idx || h.failures < self.cfg.failover_after || n < 2 {
                None
            } else {
                Some((idx + 1) % n)
            }
        };
        let Some(next) = next else { return false };
        let why = format!("{} consecutive failures: {reason}", self.cfg.failover_after);
        self.switch(next, &why, None).await;
        true
    }

    /// Makes target `to` current and records why (`pin`: set or clear the manual pin).
    async fn switch(&self, to: usize, reason: &str, pin: Option<bool>) {
        let from = {
            let mut r = self.routing();
            let from = r.current;
            r.current = to;
            if let Some(p) = pin {
                r.pinned = p;
            }
            r.health[to].failures = 0;
            from
        };
        let (f, t) = (&self.cfg.targets[from].name, &self.cfg.targets[to].name);
        tracing::warn!(relay = %self.cfg.name, from = %f, to = %t, %reason, "relay target changed");
        let recorded = async {
            self.outbox.set_meta("current", t).await?;
            if let Some(p) = pin {
                self.outbox
                    .set_meta("pinned", if p { "1" } else { "0" })
                    .await?;
            }
            if from != to {
                self.outbox
                    .record_failover(Failover {
                        at_ms: now_ms(),
                        from: f.clone(),
                        to: t.clone(),
                        reason: reason.to_string(),
                    })
                    .await?;
            }
            Ok::<_, RelayError>(())
        };
        if let Err(e) = recorded.await {
            tracing::error!(relay = %self.cfg.name, error = %e, "cannot record the target change");
        }
        self.arrived.notify_waiters();
    }

    /// Failover mode: probes the targets before the current one and fails back to the
    /// first that has been healthy for `failback_after` (unless pinned).
    async fn failback(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.cfg.probe_interval) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return;
            }
            let (current, pinned) = {
                let r = self.routing();
                (r.current, r.pinned)
            };
            if pinned || current == 0 {
                continue;
            }
            for i in 0..current {
                let t = &self.cfg.targets[i];
                let probe = self.sender.probe(t).await;
                let ready = {
                    let mut r = self.routing();
                    let h = &mut r.health[i];
                    match probe {
                        Ok(()) => {
                            h.failures = 0;
                            let since = *h.healthy_since.get_or_insert_with(Instant::now);
                            since.elapsed() >= self.cfg.failback_after
                        }
                        Err(e) => {
                            h.healthy_since = None;
                            h.last_error = Some(e);
                            false
                        }
                    }
                };
                if ready {
                    let why = format!(
                        "failback: '{}' healthy for {:?}",
                        t.name, self.cfg.failback_after
                    );
                    self.switch(i, &why, None).await;
                    break;
                }
            }
        }
    }

    /// `switchover`: the next target, pinned (no automatic failback); `switchback`:
    /// the first target, automatic rules again.
    pub(crate) async fn manual(&self, action: &str) -> Result<RelayActionReport> {
        if self.cfg.mode != RelayMode::Failover {
            return Err(RelayError::Refused(format!(
                "relay '{}' delivers to every target (mode = \"replicate\"): there is no target to switch",
                self.cfg.name
            )));
        }
        let n = self.cfg.targets.len();
        let current = self.routing().current;
        match action {
            "switchover" => {
                self.switch((current + 1) % n, "manual switchover", Some(true))
                    .await;
            }
            _ => self.switch(0, "manual switchback", Some(false)).await,
        }
        Ok(RelayActionReport {
            relay: self.cfg.name.clone(),
            action: action.to_string(),
            current_target: Some(self.cfg.targets[self.routing().current].name.clone()),
            replayed: 0,
        })
    }

    /// Sends every dead letter again.
    pub(crate) async fn replay(&self) -> Result<RelayActionReport> {
        let n = self
            .outbox
            .replay(self.cfg.mode == RelayMode::Replicate)
            .await?;
        self.arrived.notify_waiters();
        Ok(RelayActionReport {
            relay: self.cfg.name.clone(),
            action: "replay".into(),
            current_target: match self.cfg.mode {
                RelayMode::Failover => Some(self.cfg.targets[self.routing().current].name.clone()),
                RelayMode::Replicate => None,
            },
            replayed: n,
        })
    }

    pub(crate) fn status(&self) -> Result<RelayStatus> {
        let o = &self.outbox;
        let now = now_ms();
        let age = |ms: Option<i64>| ms.map(|m| (now - m).max(0) as f64 / 1000.0);
        let (current, pinned, health) = {
            let r = self.routing();
            (r.current, r.pinned, r.health.clone())
        };
        let mut targets = Vec::new();
        let mut oldest: Option<f64> = None;
        for (i, t) in self.cfg.targets.iter().enumerate() {
            let stream = match self.cfg.mode {
                RelayMode::Failover => ACTIVE.to_string(),
                RelayMode::Replicate => t.name.clone(),
            };
            let (delivered_here, pending) = if self.cfg.mode == RelayMode::Replicate || i == current
            {
                let (at, _) = o.cursor(&stream)?;
                let only = (self.cfg.mode == RelayMode::Replicate).then_some(t.name.as_str());
                (true, o.pending(at, only)?)
            } else {
                (false, (0, 0, None))
            };
            let p_age = age(pending.2);
            if delivered_here {
                oldest = match (oldest, p_age) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
            }
            let h = &health[i];
            targets.push(RelayTargetStatus {
                name: t.name.clone(),
                region: t.region.clone(),
                kind: t.kind.as_str().into(),
                url: match (&t.store, &t.subject, &t.bus) {
                    (Some(store), _, _) => format!("store {store}"),
                    (_, Some(subject), _) => {
                        format!("{} subject {subject}", georep_core::redact_url(&t.url))
                    }
                    (_, _, Some(bus)) => format!("{} bus {bus}", georep_core::redact_url(&t.url)),
                    _ => georep_core::redact_url(&t.url),
                },
                healthy: h.failures == 0,
                consecutive_failures: h.failures,
                last_error: h.last_error.clone(),
                delivered: o.cursor(&format!("count:{}", t.name))?.1,
                pending: pending.0,
                pending_bytes: pending.1,
                oldest_pending_seconds: p_age,
            });
        }
        let (failovers, recent) = o.failovers(10)?;
        let (dead, letters) = o.dead_letters(10)?;
        let rpo = self.cfg.rpo.as_secs_f64();
        Ok(RelayStatus {
            name: self.cfg.name.clone(),
            mode: match self.cfg.mode {
                RelayMode::Failover => "failover".into(),
                RelayMode::Replicate => "replicate".into(),
            },
            accept: self.cfg.accept.as_str().into(),
            listen: self.cfg.listen.to_string(),
            accepted: o.accepted()?,
            current_target: (self.cfg.mode == RelayMode::Failover)
                .then(|| self.cfg.targets[current].name.clone()),
            pinned,
            targets,
            failovers,
            recent_failovers: recent
                .into_iter()
                .map(|f| RelayFailover {
                    at: rfc3339(f.at_ms),
                    from: f.from,
                    to: f.to,
                    reason: f.reason,
                })
                .collect(),
            dead_letters: dead,
            recent_dead_letters: letters
                .into_iter()
                .map(|d| RelayDeadLetter {
                    id: d.id,
                    target: d.target,
                    event_id: d.event_id,
                    reason: d.reason,
                    at: rfc3339(d.at_ms),
                })
                .collect(),
            outbox_bytes: o.bytes(),
            outbox_error: self.local_error.lock().ok().and_then(|e| e.clone()),
            max_outbox: self.cfg.max_outbox,
            oldest_pending_seconds: oldest,
            rpo_seconds: rpo,
            rpo_breached: oldest.is_some_and(|a| a > rpo),
        })
    }
}

/// How long a request's body may take to arrive (once it is in, keeping it is
/// awaited to the end: an answer never says "not kept" for records that were).
const BODY_DEADLINE: Duration = Duration::from_secs(30);
/// The key a request carries: `aeg-sas-key`, `Authorization: Bearer KEY`, `ApiKey
/// KEY` (Elasticsearch clients) or `Basic` with the key as the password (Loki and
/// Elasticsearch clients; any user name).
fn given_key(headers: &HeaderMap) -> Option<String> {
    use base64::Engine as _;
    if let Some(k) = headers.get("aeg-sas-key").and_then(|v| v.to_str().ok()) {
        return Some(k.to_string());
    }
    let auth = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, value) = auth.split_once(' ')?;
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" | "apikey" => Some(value.trim().to_string()),
        "basic" => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(value.trim())
                .ok()?;
            let text = String::from_utf8(raw).ok()?;
            text.split_once(':').map(|(_, p)| p.to_string())
        }
        _ => None,
    }
}

/// A relay's backlog as its outbox file holds it, read without the daemon.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RelayPeek {
    pub name: String,
    /// Undelivered records, summed over the streams (failover: one; replicate: one
    /// per target).
    pub pending: u64,
    pub oldest_pending_seconds: Option<f64>,
    pub rpo_seconds: f64,
    pub rpo_breached: bool,
    pub dead_letters: u64,
}

/// Reads relay `cfg`'s outbox (`relays/NAME.db` beside `state_db`); `None` when it has
/// never run.
pub fn peek(cfg: &Relay, state_db: &std::path::Path) -> Result<Option<RelayPeek>> {
    let dir = state_db
        .parent()
        .map_or_else(|| std::path::PathBuf::from("relays"), |p| p.join("relays"));
    let Some(o) = Outbox::open_read_only(&cfg.name, &dir.join(format!("{}.db", cfg.name)))? else {
        return Ok(None);
    };
    let streams: Vec<(String, Option<&str>)> = match cfg.mode {
        RelayMode::Failover => vec![(ACTIVE.to_string(), None)],
        RelayMode::Replicate => cfg
            .targets
            .iter()
            .map(|t| (t.name.clone(), Some(t.name.as_str())))
            .collect(),
    };
    let (mut pending, mut oldest) = (0u64, None::<i64>);
    for (stream, only) in streams {
        let (at, _) = o.cursor(&stream)?;
        let (n, _, first) = o.pending(at, only)?;
        pending += n;
        oldest = match (oldest, first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    let age = oldest.map(|m| (now_ms() - m).max(0) as f64 / 1000.0);
    let rpo = cfg.rpo.as_secs_f64();
    Ok(Some(RelayPeek {
        name: cfg.name.clone(),
        pending,
        oldest_pending_seconds: age,
        rpo_seconds: rpo,
        rpo_breached: age.is_some_and(|a| a > rpo),
        dead_letters: o.dead_letters(0)?.0,
    }))
}

/// Refuses a publish without the relay's key before its body is read; then reads the
/// body (at most the relay's limit, within [`BODY_DEADLINE`]: 413, 408).
async fn check_key(
    AxState(relay): AxState<Arc<Running>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let given = given_key(req.headers());
    if given.is_some_and(|k| georep_core::constant_time_eq(k.as_bytes(), relay.cfg.key.as_bytes()))
    {
        let limit = relay.body_limit();
        let (parts, body) = req.into_parts();
        let read = tokio::time::timeout(BODY_DEADLINE, axum::body::to_bytes(body, limit)).await;
        let body = match read {
            Ok(Ok(b)) => b,
            Ok(Err(_)) => {
                return refused(events::Refusal {
                    status: 413,
                    message: format!("the request body is over {limit} bytes, or was cut off"),
                })
            }
            Err(_) => {
                return refused(events::Refusal {
                    status: 408,
                    message:
                        "the request body took more than 30 s to arrive; nothing of it was kept"
                            .into(),
                })
            }
        };
        next.run(axum::extract::Request::from_parts(
            parts,
            axum::body::Body::from(body),
        ))
        .await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({"error": {"code": "Unauthorized", "message": "send the relay's key as Authorization: Bearer KEY (or the aeg-sas-key header, ApiKey KEY, or Basic auth with the key as the password)"}})),
        )
            .into_response()
    }
}

fn refused(r: events::Refusal) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
    (
        status,
        axum::Json(serde_json::json!({"error": {"code": "BadRequest", "message": r.message}})),
    )
        .into_response()
}

fn decoded(headers: &HeaderMap, body: &[u8]) -> std::result::Result<Vec<u8>, events::Refusal> {
    let enc = headers
        .get(axum::http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    crate::logs::decode(enc, body)
}

/// `POST /dataCollectionRules/{dcr}/streams/{stream}` (Logs Ingestion): 204 once
/// durable.
async fn publish_monitor(
    AxState(relay): AxState<Arc<Running>>,
    axum::extract::Path((dcr, stream)): axum::extract::Path<(String, String)>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Response {
    let parsed = decoded(&headers, &body).and_then(|b| crate::logs::monitor(&dcr, &stream, &b));
    answer(
        &relay,
        parsed.map(|p| (p, StatusCode::NO_CONTENT.into_response())),
    )
    .await
}

/// `POST /loki/api/v1/push` (JSON): 204 once durable.
async fn publish_loki(
    AxState(relay): AxState<Arc<Running>>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Response {
    let ct = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if ct.starts_with("application/x-protobuf") {
        return refused(events::Refusal {
            status: 415,
            message: "this relay takes Loki's JSON push format; configure the client to send JSON (Content-Type: application/json)".into(),
        });
    }
    let parsed = decoded(&headers, &body).and_then(|b| crate::logs::loki(&b));
    answer(
        &relay,
        parsed.map(|p| (p, StatusCode::NO_CONTENT.into_response())),
    )
    .await
}

async fn publish_bulk(
    AxState(relay): AxState<Arc<Running>>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Response {
    bulk(relay, None, headers, body).await
}

async fn publish_bulk_to(
    AxState(relay): AxState<Arc<Running>>,
    axum::extract::Path(index): axum::extract::Path<String>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Response {
    bulk(relay, Some(index), headers, body).await
}

/// `POST /_bulk`, `POST /{index}/_bulk`: the bulk answer once every item is durable.
async fn bulk(
    relay: Arc<Running>,
    index: Option<String>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Response {
    let parsed = decoded(&headers, &body).and_then(|b| crate::logs::bulk(index.as_deref(), &b));
    let parsed = parsed.map(|(p, items)| {
        let ok = (
            [("x-elastic-product", "Elasticsearch")],
            axum::Json(crate::logs::bulk_answer(&items)),
        );
        (p, ok.into_response())
    });
    answer(&relay, parsed).await
}

/// `GET /`: what Elasticsearch clients check before they send (a version and the
/// product header).
async fn es_info(AxState(relay): AxState<Arc<Running>>) -> Response {
    (
        [("x-elastic-product", "Elasticsearch")],
        axum::Json(serde_json::json!({
            "name": relay.cfg.name, "cluster_name": "georep-relay",
            "version": {"number": "8.11.0", "build_flavor": "default", "lucene_version": "9.8.0", "minimum_wire_compatibility_version": "7.17.0", "minimum_index_compatibility_version": "7.0.0"},
            "tagline": "You Know, for Search"
        })),
    )
        .into_response()
}

/// `POST /api/events` (the key checked by [`check_key`]): checked, made durable, then
/// answered 200 (Event Grid's answer).
async fn publish(
    AxState(relay): AxState<Arc<Running>>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Response {
    let ct = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let parsed = events::parse(ct, &body).map(|p| (p, StatusCode::OK.into_response()));
    answer(&relay, parsed).await
}

/// A checked request kept and answered `ok`, or refused.
async fn answer(
    relay: &Running,
    parsed: std::result::Result<(Vec<crate::outbox::NewEvent>, Response), events::Refusal>,
) -> Response {
    match parsed {
        Ok((p, ok)) => keep(relay, p, ok).await,
        Err(r) => refused(r),
    }
}

/// Appends accepted events to the outbox (durable when it returns) and answers `ok`;
/// a full outbox answers 503 with `Retry-After`.
async fn keep(relay: &Running, parsed: Vec<crate::outbox::NewEvent>, ok: Response) -> Response {
    match relay.outbox.append(parsed).await {
        Ok(()) => {
            relay.arrived.notify_waiters();
            ok
        }
        Err(RelayError::Full(_)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, "5")],
            axum::Json(serde_json::json!({"error": {"code": "OutboxFull", "message": format!("relay '{}' holds max_outbox of undelivered events; retry later", relay.cfg.name)}})),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(relay = %relay.cfg.name, error = %e, "cannot keep accepted events");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(serde_json::json!({"error": {"code": "OutboxError", "message": "the relay could not store the events; they were not accepted"}})),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_000_000_000_123), "2001-09-09T01:46:40.123Z");
    }
}
