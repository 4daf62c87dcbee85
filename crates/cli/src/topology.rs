//! `georep validate` and `georep plan`, and loading the topology file for every command
//! that takes `-c FILE`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use georep_core::Topology;
use georep_daemon::plan::PolicyPlanChange;
use georep_state::State;

use crate::{exit, Output};

/// A problem with the topology file; always exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ConfigFileError(pub(crate) String);

#[derive(Args, Debug)]
pub(crate) struct ConfigArg {
    /// The topology file.
    #[arg(
        short = 'c',
        long = "config",
        value_name = "FILE",
        default_value = "georep.toml",
        env = "GEOREP_CONFIG"
    )]
    pub(crate) config: PathBuf,
}

/// Reads and validates a topology file; relative paths in it are taken from its folder.
pub(crate) fn load(path: &Path) -> Result<Topology> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigFileError(format!(
            "cannot read topology file {}: {e}; pass the right file with -c FILE",
            path.display()
        ))
    })?;
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let base = abs.parent().unwrap_or(Path::new("/")).to_path_buf();
    // Locations are compared as they are on disk (links resolved), at every load:
    // `validate`, `plan` and each start of `serve`.
    let resolve = |u: &georep_core::StoreUrl| Some(georep_storage::resolve_local(u));
    Topology::parse_resolving(&text, &base, &|k| std::env::var(k).ok(), &resolve)
        .map_err(|e| ConfigFileError(e.render(&path.display().to_string())).into())
}

#[derive(Args, Debug)]
pub(crate) struct ValidateArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArg,
}

pub(crate) fn validate(a: ValidateArgs) -> Result<u8> {
    let path = &a.config.config;
    match load(path) {
        Ok(t) => {
            println!(
                "{}: ok ({} regions, {} stores, {} policies)",
                path.display(),
                t.regions.len(),
                t.stores.len(),
                t.policies.len()
            );
            Ok(0)
        }
        Err(e) => {
            let n = e.to_string().lines().count();
            eprintln!("{e}");
            eprintln!("georep: {n} error(s) in {}", path.display());
            Ok(exit::USAGE)
        }
    }
}

#[derive(Args, Debug)]
pub(crate) struct PlanArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
    /// Ask the running daemon what a reload of its topology file would start, restart
    /// and stop (nothing is applied).
    #[arg(long)]
    pub(crate) daemon: bool,
    /// The daemon's API for --daemon (default: http://[server] listen from the topology).
    #[arg(long, value_name = "URL", requires = "daemon")]
    pub(crate) api: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct ReloadArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    /// The daemon's API (default: http://[server] listen from the topology).
    #[arg(long, value_name = "URL")]
    pub(crate) api: Option<String>,
    /// Only show what the reload would do.
    #[arg(long)]
    pub(crate) dry_run: bool,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
}

/// `georep reload`: the running daemon reads its topology file again and applies the
/// difference; exit 1 when a change could not be applied, 2 when the file was refused.
pub(crate) async fn reload(a: ReloadArgs) -> Result<u8> {
    // The daemon would refuse the same file with the same messages; say so here.
    let t = match load(&a.config.config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            eprintln!(
                "georep: reload refused: {} has errors; the daemon keeps running the configuration it has",
                a.config.config.display()
            );
            return Ok(exit::USAGE);
        }
    };
    let api = crate::api_token::client(&t, a.api.as_deref())?;
    let r = if a.dry_run {
        api.reload_plan().await
    } else {
        api.reload().await
    };
    match r {
        Ok(r) => {
            let mine = std::path::absolute(&a.config.config).unwrap_or(a.config.config.clone());
            if std::path::Path::new(&r.file) != mine {
                eprintln!(
                    "georep: note: the daemon reads {}, not {} (it reloads its own file, with its own environment for ${{NAME}})",
                    r.file,
                    mine.display()
                );
            }
            render_reload(&r, a.output)
        }
        Err(e) => {
            eprintln!("georep: reload refused: {e}");
            if matches!(e, georep_api::ClientError::Status { status: 401, .. }) {
                eprintln!("georep: if [server] token changed in the file, restart georep serve: a reload cannot change the token it checks");
            }
            Ok(e.exit_class())
        }
    }
}

/// Prints a reload report; exit 1 when a change failed.
fn render_reload(r: &georep_api::Reloaded, output: Output) -> Result<u8> {
    use georep_api::ChangeAction;
    let failed = r.changes.iter().filter(|c| c.error.is_some()).count();
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(r)?);
    } else {
        let verb = |a: ChangeAction| match (a, r.dry_run) {
            (ChangeAction::Add, true) => "would start",
            (ChangeAction::Add, false) => "started",
            (ChangeAction::Change, true) => "would restart",
            (ChangeAction::Change, false) => "restarted",
            (ChangeAction::Remove, true) => "would stop",
            (ChangeAction::Remove, false) => "stopped",
        };
        println!(
            "{} {}",
            if r.dry_run { "a reload of" } else { "reloaded" },
            r.file
        );
        if r.changes.is_empty() {
            println!("  no changes: the daemon runs what the file says");
        }
        for c in &r.changes {
            let mark = match c.action {
                ChangeAction::Add => '+',
                ChangeAction::Change => '~',
                ChangeAction::Remove => '-',
            };
            let fields = if c.fields.is_empty() {
                String::new()
            } else {
                format!(" ({})", c.fields.join(", "))
            };
            match &c.error {
                None => println!(
                    "  {mark} {} {}: {}{fields}",
                    c.section,
                    c.name,
                    verb(c.action)
                ),
                Some(e) => println!("  ! {} {}: FAILED to apply: {e}", c.section, c.name),
            }
        }
        for n in &r.restart_needed {
            println!("  restart needed: {n}");
        }
    }
    // Something in the file is not running as written: say so in the exit code.
    Ok(if failed > 0 || !r.restart_needed.is_empty() {
        exit::DIFFERENCES
    } else {
        0
    })
}

pub(crate) async fn plan(a: PlanArgs) -> Result<u8> {
    let t = load(&a.config.config)?;
    if a.daemon {
        let api = crate::api_token::client(&t, a.api.as_deref())?;
        return match api.reload_plan().await {
            Ok(r) => render_reload(&r, a.output),
            Err(e) => {
                eprintln!("georep: the daemon could not plan a reload: {e}");
                Ok(e.exit_class())
            }
        };
    }
    // Never create a state file just to plan.
    let state = match t.state.sqlite_path() {
        Some(p) if !p.exists() => None,
        _ => Some(State::open(&t.state.url)?),
    };
    let plan = georep_daemon::plan::plan(&t, state.as_ref())?;
    if a.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(0);
    }
    println!(
        "state   {}{}",
        plan.state.url,
        if plan.state.exists { "" } else { " (new)" }
    );
    println!(
        "server  http://{} ({})",
        plan.server.listen,
        if plan.server.token {
            "bearer token required"
        } else {
            "no token"
        }
    );
    let store = |s: &Option<georep_core::StoreDef>| match s {
        Some(s) => format!("{} ({}) {}", s.name, s.region, s.url),
        None => String::new(),
    };
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(", ")
        }
    };
    for p in &plan.policies {
        println!();
        let change = match p.change {
            PolicyPlanChange::Added => "added",
            PolicyPlanChange::Changed => "changed",
            PolicyPlanChange::Unchanged => "unchanged",
        };
        println!("policy {} [{change}]", p.name);
        for f in &p.changed_fields {
            println!("  changed   {f}");
        }
        println!("  source    {}", store(&p.source));
        for d in &p.destinations {
            println!("  → dest    {}", store(d));
        }
        println!("  detect    {}", p.detection);
        println!(
            "  filters   include {}; exclude {}; {}",
            list(&p.include),
            list(&p.exclude),
            match &p.since {
                Some(s) => format!("only objects modified since {s}"),
                None => "existing objects are copied too".into(),
            }
        );
        println!(
            "  deletes   {} (mass-delete guard {}); rpo {}; {} transfers",
            p.deletes, p.max_delete, p.rpo, p.transfers
        );
        if p.queue.pending > 0 {
            println!(
                "  queue     {} pending ({} failed) from earlier runs",
                p.queue.pending, p.queue.failed
            );
        }
    }
    if !plan.removed_policies.is_empty() {
        println!();
        println!(
            "no longer in the file (state kept, not replicated): {}",
            plan.removed_policies.join(", ")
        );
    }
    for b in &plan.backups {
        println!();
        println!("backup {}", b.name);
        println!("  source    {}", store(&t.store(&b.source).cloned()));
        println!("  → points  {}", store(&t.store(&b.repository).cloned()));
        let r = &b.retention;
        let bands: Vec<String> = [
            ("within", r.within),
            ("hourly", r.hourly),
            ("daily", r.daily),
            ("weekly", r.weekly),
            ("monthly", r.monthly),
            ("yearly", r.yearly),
        ]
        .iter()
        .filter_map(|(n, v)| v.map(|v| format!("{n} {v}")))
        .collect();
        println!(
            "  schedule  {}; retention {}{}",
            b.schedule,
            if bands.is_empty() {
                "none (every point is kept)".to_string()
            } else {
                bands.join(", ")
            },
            if b.append_only {
                "; append-only (nothing is ever deleted)"
            } else {
                ""
            }
        );
    }
    for d in &t.databases {
        println!();
        println!("database {} ({})", d.name, d.engine);
        println!(
            "  primary   ({}) {}",
            d.primary.region,
            d.primary.redacted_url()
        );
        for r in &d.replicas {
            println!("  → replica {} ({}) {}", r.name, r.region, r.redacted_url());
        }
        println!(
            "  tables    {}; rpo {}; sequences pushed {} ahead every {}",
            if d.tables.is_empty() {
                format!("every table in {}", d.schemas.join(", "))
            } else {
                d.tables.join(", ")
            },
            humantime::format_duration(d.rpo),
            d.sequence_margin,
            humantime::format_duration(d.sequence_sync_interval)
        );
    }
    Ok(0)
}
