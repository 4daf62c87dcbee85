//! `georep relay status [NAME]` and `georep relay switchover|switchback|replay NAME`:
//! a running daemon's relays, through its API (the relay's outbox belongs to the
//! daemon).

use anyhow::Result;
use clap::{Args, Subcommand};
use georep_api::{paths, RelayStatus};

use crate::topology::{load, ConfigArg};
use crate::Output;

#[derive(Subcommand, Debug)]
pub(crate) enum RelayCommand {
    /// Each relay: accepted, pending per target (count, bytes, oldest age), the current
    /// target, failovers, dead letters; exit 1 when a relay's oldest pending event is
    /// older than its rpo, or a target is failing.
    Status(StatusArgs),
    /// Move a failover relay to its next target now and keep it there (no automatic
    /// failback) until `georep relay switchback`.
    Switchover(ActionArgs),
    /// Move a failover relay back to its first target; automatic failover and
    /// failback apply again.
    Switchback(ActionArgs),
    /// Send every dead letter again (after fixing what the target refused).
    Replay(ActionArgs),
}

#[derive(Args, Debug)]
pub(crate) struct StatusArgs {
    /// Only this relay.
    pub(crate) name: Option<String>,
    #[command(flatten)]
    pub(crate) daemon: DaemonArgs,
}

#[derive(Args, Debug)]
pub(crate) struct ActionArgs {
    pub(crate) name: String,
    #[command(flatten)]
    pub(crate) daemon: DaemonArgs,
}

/// Which daemon, and how to show its answer.
#[derive(Args, Debug)]
pub(crate) struct DaemonArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    /// The daemon's API (default: http://[server] listen from the topology).
    #[arg(long, value_name = "URL")]
    pub(crate) api: Option<String>,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
}

impl DaemonArgs {
    pub(crate) fn client(&self) -> Result<georep_api::Client> {
        crate::api_token::client(&load(&self.config.config)?, self.api.as_deref())
    }
}

pub(crate) async fn run(cmd: RelayCommand) -> Result<u8> {
    let (a, route) = match cmd {
        RelayCommand::Status(a) => return status(a).await,
        RelayCommand::Switchover(a) => (a, paths::RELAY_SWITCHOVER),
        RelayCommand::Switchback(a) => (a, paths::RELAY_SWITCHBACK),
        RelayCommand::Replay(a) => (a, paths::RELAY_REPLAY),
    };
    let api = a.daemon.client()?;
    let r = match crate::api_token::answered(api.relay_action(route, &a.name).await) {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    crate::output::print(a.daemon.output, &r, || match r.action.as_str() {
        "replay" => format!("relay {}: {} dead letters sent again", r.relay, r.replayed),
        _ => format!(
            "relay {}: {} done; events go to '{}'",
            r.relay,
            r.action,
            r.current_target.clone().unwrap_or_default()
        ),
    })?;
    Ok(0)
}

fn unhealthy(s: &RelayStatus) -> bool {
    s.rpo_breached
        || s.outbox_error.is_some()
        || s.targets.iter().any(|t| {
            t.consecutive_failures > 0
                && (s.current_target.is_none()
                    || s.current_target.as_deref() == Some(t.name.as_str()))
        })
}

async fn status(a: StatusArgs) -> Result<u8> {
    let api = a.daemon.client()?;
    let got = match &a.name {
        Some(n) => api.relay(n).await.map(|s| vec![s]),
        None => api.relays().await.map(|l| l.relays),
    };
    let all = match crate::api_token::answered(got) {
        Ok(all) => all,
        Err(code) => return Ok(code),
    };
    let bad = all.iter().any(unhealthy);
    crate::output::print(a.daemon.output, &all, || {
        let mut out = String::new();
        for s in &all {
            out.push_str(&format!(
                "relay {} ({}, {} on {}): {} accepted, outbox {} of {} bytes, oldest pending {}, rpo {}s{}; {} failovers, {} dead letters{}\n",
                s.name,
                s.mode,
                s.accept,
                s.listen,
                s.accepted,
                s.outbox_bytes,
                s.max_outbox,
                s.oldest_pending_seconds.map_or("-".into(), |a| format!("{a:.1}s")),
                s.rpo_seconds,
                if s.rpo_breached { " BREACHED" } else { "" },
                s.failovers,
                s.dead_letters,
                s.current_target
                    .as_ref()
                    .map(|c| format!("; current target {c}{}", if s.pinned { " (pinned by a switchover)" } else { "" }))
                    .unwrap_or_default()
            ));
            for t in &s.targets {
                out.push_str(&format!(
                    "  {:<12} {:<16} {:<9} delivered {:>9}  pending {:>7} ({} bytes)  {}\n",
                    t.name,
                    t.region,
                    t.kind,
                    t.delivered,
                    t.pending,
                    t.pending_bytes,
                    match &t.last_error {
                        Some(e) if t.consecutive_failures > 0 =>
                            format!("FAILING ({}): {e}", t.consecutive_failures),
                        _ => "ok".into(),
                    }
                ));
            }
        }
        out.trim_end().to_string()
    })?;
    Ok(if bad { crate::exit::DIFFERENCES } else { 0 })
}
