//! `georep status`: replication status read from the state store, with or without a
//! running daemon.

use anyhow::Result;
use clap::Args;
use georep_replicate::status::{self, PolicyStatus};
use georep_state::State;

use crate::output::human;
use crate::topology::{load, ConfigArg, ConfigFileError};
use crate::{exit, Output};

#[derive(Args, Debug)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    /// Only this policy.
    #[arg(long, value_name = "NAME")]
    pub(crate) policy: Option<String>,
    /// One object's status at every destination (key relative to the source store).
    #[arg(long, value_name = "KEY")]
    pub(crate) object: Option<String>,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
}

fn ms(v: Option<i64>) -> String {
    match v {
        Some(v) if v < 10_000 => format!("{v}ms"),
        Some(v) => format!("{:.0}s", v as f64 / 1000.0),
        None => "-".into(),
    }
}

fn when(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| "-".into())
}

/// Exit 0 when all is well; 1 when an RPO is breached, a policy is paused, the last scan
/// failed, objects keep failing, a failover group is mid-change or has fenced members —
/// so the command works as a monitoring check.
pub(crate) fn run(a: StatusArgs) -> Result<u8> {
    let t = load(&a.config.config)?;
    if let Some(p) = t.state.sqlite_path() {
        if !p.exists() {
            return Err(ConfigFileError(format!(
                "no state at {}: the daemon has not run with this topology yet; start it with `georep serve -c {}`",
                p.display(),
                a.config.config.display()
            ))
            .into());
        }
    }
    let state = State::open(&t.state.url)?;
    let policies: Vec<_> = match &a.policy {
        Some(name) => vec![t.policy(name).ok_or_else(|| {
            ConfigFileError(format!(
                "no policy named '{name}' in {}; `georep plan` lists them",
                a.config.config.display()
            ))
        })?],
        None => t.policies.iter().collect(),
    };
    if let Some(key) = &a.object {
        let mut found = false;
        let mut docs = Vec::new();
        for p in &policies {
            let s = status::object_status(&state, p, key)?;
            found |= s.source.is_some() || !s.destinations.is_empty();
            docs.push(s);
        }
        if a.output == Output::Json {
            println!("{}", serde_json::to_string_pretty(&docs)?);
        } else {
            for s in &docs {
                if s.source.is_none() && s.destinations.is_empty() {
                    continue;
                }
                println!("{} / {}", s.policy, s.key);
                match &s.source {
                    Some(m) => println!(
                        "  source    {} modified {}",
                        human(m.size),
                        when(Some(m.mtime))
                    ),
                    None => println!("  source    (not present)"),
                }
                for d in &s.destinations {
                    let lag = d
                        .replicated_at
                        .filter(|_| d.status == georep_state::Status::Complete)
                        .map(|r| format!("  ({} after the change)", ms(Some(r - d.change_time))))
                        .unwrap_or_default();
                    println!(
                        "  {:<12} {} {:<8} attempts {}  replicated {}{lag}{}",
                        d.dest,
                        format!("{:?}", d.op).to_lowercase(),
                        format!("{:?}", d.status).to_lowercase(),
                        d.attempts,
                        when(d.replicated_at),
                        d.last_error
                            .as_deref()
                            .map(|e| format!("  ({e})"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        if !found {
            eprintln!("georep: no policy has seen object '{key}'; keys are relative to the source store and must pass the policy's filters");
            return Ok(exit::USAGE);
        }
        return Ok(0);
    }
    let all: Vec<PolicyStatus> = policies
        .iter()
        .map(|p| status::policy_status(&state, &t, p, true))
        .collect::<Result<_, _>>()?;
    // Failover groups as recorded: the epoch, primary, fenced members, recent changes.
    let mut groups = Vec::new();
    if a.policy.is_none() {
        for g in &t.failover_groups {
            if let Some(rec) = state.failover(&g.name)? {
                groups.push((rec, state.failover_history(&g.name, 5)?));
            }
        }
    }
    // Relays as their outbox files hold them (the daemon need not run).
    let mut relays = Vec::new();
    if let (None, Some(db)) = (&a.policy, t.state.sqlite_path()) {
        for r in &t.relays {
            if let Some(p) = georep_relay::peek(r, &db)? {
                relays.push(p);
            }
        }
    }
    let unhealthy = relays.iter().any(|r| r.rpo_breached)
        || all.iter().any(|s| {
            s.rpo_breached
                || s.paused.is_some()
                || s.held.is_some()
                || s.last_scan.as_ref().is_some_and(|l| l.error.is_some())
                || s.destinations.iter().any(|d| d.failed > 0)
        })
        || groups
            .iter()
            .any(|(r, _)| r.state != georep_api::GroupState::Stable || !r.fenced.is_empty());
    if a.output == Output::Json {
        let groups: Vec<_> = groups
            .iter()
            .map(|(r, h)| serde_json::json!({ "group": r, "history": h }))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "policies": all, "failover_groups": groups, "relays": relays })
            )?
        );
    } else {
        for (r, history) in &groups {
            println!(
                "failover group {}  primary {} (epoch {})  {}{}",
                r.group,
                r.primary,
                r.epoch,
                r.state.as_str().to_uppercase(),
                if r.fenced.is_empty() {
                    String::new()
                } else {
                    let f: Vec<&str> = r.fenced.iter().map(String::as_str).collect();
                    format!("  FENCED (needs `georep db reseed`): {}", f.join(","))
                }
            );
            for h in history {
                println!(
                    "  epoch {:<4} {:<9} {} → {}  {}  write gap {}  {}{}",
                    h.epoch,
                    h.kind.as_str(),
                    h.from,
                    h.to,
                    when(Some(h.started_at)),
                    ms(h.write_gap_ms),
                    h.outcome.as_deref().unwrap_or("in progress"),
                    h.left_behind
                        .as_deref()
                        .map(|l| format!("; left behind: {l}"))
                        .unwrap_or_default()
                );
            }
        }
        for r in &relays {
            println!(
                "relay {}  pending {}  oldest {}  rpo target {}s  dead letters {}{}",
                r.name,
                r.pending,
                r.oldest_pending_seconds
                    .map_or_else(|| "-".to_string(), |a| format!("{a:.1}s")),
                r.rpo_seconds,
                r.dead_letters,
                if r.rpo_breached { "  RPO BREACHED" } else { "" }
            );
        }
        for s in &all {
            println!(
                "policy {}  {} ({}) → {} destination(s)  deletes={}  rpo target {}s{}",
                s.name,
                s.source.store,
                s.source.region,
                s.destinations.len(),
                s.deletes,
                s.rpo_target_seconds,
                if s.rpo_breached { "  RPO BREACHED" } else { "" }
            );
            if let Some(sched) = &s.schedule {
                println!(
                    "  scheduled {sched}  last sync {}  next {}",
                    s.last_scan.as_ref().map_or("never", |l| l.at.as_str()),
                    s.next_run.as_deref().unwrap_or("-")
                );
            }
            if let Some(p) = &s.paused {
                println!("  PAUSED    {p}");
            }
            if let Some(h) = &s.held {
                println!(
                    "  PAUSED    {h} (nothing is copied or deleted until `georep resume {}`)",
                    s.name
                );
            }
            match &s.last_scan {
                Some(sc) => println!(
                    "  scan      {} ({} ms, {} scans){}; {} source objects",
                    sc.at,
                    sc.duration_ms,
                    sc.scans,
                    sc.error
                        .as_deref()
                        .map(|e| format!(" FAILED: {e}"))
                        .unwrap_or_default(),
                    s.source_objects
                ),
                None => println!("  scan      none yet"),
            }
            println!(
                "  {:<14} {:<16} {:>8} {:>10} {:>6} {:>9} {:>8} {:>7} {:>7} {:>7}",
                "DESTINATION",
                "REGION",
                "PENDING",
                "BYTES",
                "FAILED",
                "COMPLETE",
                "RPO",
                "P50",
                "P99",
                "OBJ/S"
            );
            for d in &s.destinations {
                println!(
                    "  {:<14} {:<16} {:>8} {:>10} {:>6} {:>9} {:>8} {:>7} {:>7} {:>7.1}",
                    d.store.store,
                    d.store.region,
                    d.pending,
                    human(d.pending_bytes),
                    d.failed,
                    d.complete,
                    format!(
                        "{:.1}s{}",
                        d.rpo_seconds,
                        if d.rpo_breached { "!" } else { "" }
                    ),
                    ms(d.latency.p50_ms),
                    ms(d.latency.p99_ms),
                    d.objects_per_second
                );
            }
        }
    }
    Ok(if unhealthy { exit::DIFFERENCES } else { 0 })
}
