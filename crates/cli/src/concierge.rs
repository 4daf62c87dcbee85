//! `georep concierge status [NAME]`, `failover NAME [--to HUB]`, `failback NAME`,
//! `pin|unpin NAME --device ID|--group NAME`: a running daemon's concierges, through
//! its API (the concierge's state belongs to the daemon).

use anyhow::Result;
use clap::{Args, Subcommand};
use georep_api::{paths, ConciergeFailoverRequest, ConciergePinRequest, ConciergeStatus};

use crate::relay::DaemonArgs;

#[derive(Subcommand, Debug)]
pub(crate) enum ConciergeCommand {
    /// Each concierge: its hubs and their health, devices per hub (from assignments,
    /// and the hub's count of connected clients), identities in sync, pending and
    /// drifted on each hub, pins and failovers; exit 1 when the current hub fails its
    /// probes, identities cannot be read or kept, or a hub has drift.
    Status(StatusArgs),
    /// Send devices to another hub now (the next healthy one, or `--to`) and hold them
    /// there: no automatic failback until `georep concierge failback`.
    Failover(FailoverArgs),
    /// Send devices back to the preferred hub; automatic failover and failback apply
    /// again.
    Failback(ActionArgs),
    /// Pin a device or a group to a hub (drills, maintenance); it wins over failover.
    Pin(PinArgs),
    /// Remove a device's or a group's pin.
    Unpin(WhoArgs),
}

#[derive(Args, Debug)]
pub(crate) struct StatusArgs {
    /// Only this concierge.
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

#[derive(Args, Debug)]
pub(crate) struct FailoverArgs {
    pub(crate) name: String,
    /// The hub to send devices to (default: the next healthy one in preference order).
    #[arg(long, value_name = "HUB")]
    pub(crate) to: Option<String>,
    #[command(flatten)]
    pub(crate) daemon: DaemonArgs,
}

#[derive(Args, Debug)]
#[group(id = "who", required = true, multiple = false, args = ["device", "group"])]
pub(crate) struct WhoArgs {
    pub(crate) name: String,
    #[arg(long, value_name = "ID")]
    pub(crate) device: Option<String>,
    #[arg(long, value_name = "NAME")]
    pub(crate) group: Option<String>,
    #[command(flatten)]
    pub(crate) daemon: DaemonArgs,
}

#[derive(Args, Debug)]
pub(crate) struct PinArgs {
    #[command(flatten)]
    pub(crate) who: WhoArgs,
    #[arg(long, value_name = "HUB")]
    pub(crate) hub: String,
}

pub(crate) async fn run(cmd: ConciergeCommand) -> Result<u8> {
    let (daemon, name, route, body) = match cmd {
        ConciergeCommand::Status(a) => return status(a).await,
        ConciergeCommand::Failover(a) => (
            a.daemon,
            a.name,
            paths::CONCIERGE_FAILOVER,
            serde_json::to_value(ConciergeFailoverRequest { to: a.to })?,
        ),
        ConciergeCommand::Failback(a) => (
            a.daemon,
            a.name,
            paths::CONCIERGE_FAILBACK,
            serde_json::json!({}),
        ),
        ConciergeCommand::Pin(a) => (
            a.who.daemon,
            a.who.name,
            paths::CONCIERGE_PIN,
            serde_json::to_value(ConciergePinRequest {
                device: a.who.device,
                group: a.who.group,
                hub: Some(a.hub),
            })?,
        ),
        ConciergeCommand::Unpin(a) => (
            a.daemon,
            a.name,
            paths::CONCIERGE_PIN,
            serde_json::to_value(ConciergePinRequest {
                device: a.device,
                group: a.group,
                hub: None,
            })?,
        ),
    };
    let api = daemon.client()?;
    let r = match crate::api_token::answered(api.concierge_action(route, &name, &body).await) {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    crate::output::print(daemon.output, &r, || {
        let pins: Vec<String> = r
            .pins
            .iter()
            .map(|p| format!("{} → {}", p.who, p.hub))
            .collect();
        format!(
            "concierge {}: {} done; devices go to '{}'{}{}",
            r.concierge,
            r.action,
            r.current_hub,
            if r.held {
                " (held: no automatic failback until `georep concierge failback`)"
            } else {
                ""
            },
            if pins.is_empty() {
                String::new()
            } else {
                format!("; pins: {}", pins.join(", "))
            }
        )
    })?;
    Ok(0)
}

/// Whether a concierge needs someone's attention.
fn unhealthy(s: &ConciergeStatus) -> bool {
    s.identities_error.is_some()
        || s.hubs.iter().any(|h| {
            (h.name == s.current_hub && !h.healthy)
                || h.identities.drifted > 0
                || h.identities.last_error.is_some()
        })
}

async fn status(a: StatusArgs) -> Result<u8> {
    let api = a.daemon.client()?;
    let got = match &a.name {
        Some(n) => api.concierge(n).await.map(|s| vec![s]),
        None => api.concierges().await.map(|l| l.concierges),
    };
    let all = match crate::api_token::answered(got) {
        Ok(all) => all,
        Err(code) => return Ok(code),
    };
    let bad = all.iter().any(unhealthy);
    crate::output::print(a.daemon.output, &all, || text(&all))?;
    Ok(if bad { crate::exit::DIFFERENCES } else { 0 })
}

fn text(all: &[ConciergeStatus]) -> String {
    let mut out = String::new();
    for s in all {
        out.push_str(&format!(
            "concierge {} on {}: {} devices ({} enabled) from {}{}; devices go to '{}'{}; {} assignments, {} refused; {} failovers\n",
            s.name,
            s.listen,
            s.devices,
            s.enabled_devices,
            s.identities_source,
            s.identities_error
                .as_ref()
                .map(|e| format!(" (CANNOT READ: {e})"))
                .unwrap_or_default(),
            s.current_hub,
            if s.held { " (held by a manual failover)" } else { "" },
            s.assignments,
            s.refused_requests,
            s.failovers,
        ));
        for h in &s.hubs {
            let ids = &h.identities;
            let identities = if ids.managed {
                format!(
                    "identities {} in sync, {} pending, {} drifted",
                    ids.in_sync, ids.pending, ids.drifted
                )
            } else {
                "identities not managed (no admin account)".into()
            };
            out.push_str(&format!(
                "  {:<10} {:<16} {:<8} assigned {:>6}  connected {:>6}  {}{}\n",
                h.name,
                h.region,
                if h.healthy { "healthy" } else { "FAILING" },
                h.assigned_devices,
                h.connected_clients.map_or("-".into(), |n| n.to_string()),
                identities,
                match (&h.last_error, &ids.last_error) {
                    (Some(e), _) if h.consecutive_failures > 0 => format!("; probe: {e}"),
                    (_, Some(e)) => format!("; identities: {e}"),
                    _ => String::new(),
                }
            ));
            for d in &ids.drift {
                out.push_str(&format!("    drift: {d}\n"));
            }
        }
        for p in &s.pins {
            out.push_str(&format!("  pin {} → {}\n", p.who, p.hub));
        }
        for f in s.recent_failovers.iter().take(5) {
            out.push_str(&format!(
                "  {} {} → {} ({})\n",
                f.at, f.from, f.to, f.reason
            ));
        }
    }
    out.trim_end().to_string()
}
