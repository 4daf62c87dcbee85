//! The `georep` binary: argument parsing, terminal output and exit codes. All work is
//! done by the library crates; this is the only crate that prints.

mod api_token;
mod backup;
mod concierge;
mod db;
mod db_mysql;
mod drill;
mod drill_concierge;
mod failover;
mod ls;
mod output;
mod policy_cmd;
mod relay;
mod secrets;
mod serve;
mod status;
mod topology;
mod transfer;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Exit codes (DESIGN.md): 0 success; 1 differences found or some objects failed;
/// 2 bad usage, config or input; 3 endpoint unreachable or credentials refused.
pub(crate) mod exit {
    pub(crate) const DIFFERENCES: u8 = 1;
    pub(crate) const USAGE: u8 = 2;
}

#[derive(Parser, Debug)]
#[command(
    name = "georep",
    version,
    about = "Replicate data between any two regions or clouds",
    after_help = "STORES: /path, ./path, file:///path | az://container/prefix, https://ACCOUNT.blob.core.windows.net/container/prefix, http://HOST:PORT/ACCOUNT/container/prefix (Azurite) | s3://bucket/prefix | gs://bucket/prefix | memory://name\n\
CREDENTIALS come only from the environment: AZURE_STORAGE_ACCOUNT_NAME, AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN; AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL; GOOGLE_APPLICATION_CREDENTIALS.\n\
EXIT CODES: 0 success, 1 differences or failed objects (listed), 2 bad usage/config/input, 3 endpoint unreachable or credentials refused."
)]
struct Cli {
    /// Log level for diagnostics on stderr (error, warn, info, debug, trace); `info`
    /// for `serve`, `warn` otherwise.
    #[arg(long, global = true, env = "GEOREP_LOG")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List objects: key, size, last-modified.
    Ls(ls::LsArgs),
    /// Copy every object under SRC to DST, skipping objects already identical.
    Copy(transfer::TransferArgs),
    /// Make DST equal SRC (with --delete, also remove what SRC lacks).
    Sync(transfer::SyncArgs),
    /// Compare SRC and DST without changing anything; exit 1 if they differ.
    Check(transfer::CheckArgs),
    /// Check a topology file and report every error in it; exit 2 if any.
    Validate(topology::ValidateArgs),
    /// Show what `serve` would run and what changed against the recorded state; with
    /// --daemon, what a reload of the running daemon would start, restart and stop.
    Plan(topology::PlanArgs),
    /// Make the running daemon read its topology file again and apply the difference
    /// (same as SIGHUP): unchanged policies, databases and failover groups keep running,
    /// proxied connections included; a file with errors is refused.
    Reload(topology::ReloadArgs),
    /// Run the replication daemon with its HTTP API (stops cleanly on SIGINT/SIGTERM).
    Serve(serve::ServeArgs),
    /// Replication status per policy and destination, or of one object; exit 1 when an
    /// RPO is breached, a policy is paused, the last scan failed or objects keep failing.
    Status(status::StatusArgs),
    /// Planned failover of a failover group, done by the running daemon: no acknowledged
    /// write is lost; prints the write-unavailability window.
    Failover(failover::FailoverArgs),
    /// DR drill: planned failover and failback under a write load through the listener;
    /// checks every acknowledged write and writes a report (Markdown and JSON).
    Drill(drill::DrillArgs),
    /// Recovery points ([[backups]] in the topology): restic-format repositories in
    /// another region; run, list, restore, verify, prune, drill.
    #[command(subcommand)]
    Backup(backup::BackupCommand),
    /// Relays ([[relays]] in the topology) in the running daemon: status, switchover,
    /// switchback, replay of dead letters.
    #[command(subcommand)]
    Relay(relay::RelayCommand),
    /// Device concierges ([[concierges]] in the topology) in the running daemon: status,
    /// failover, failback, pins.
    #[command(subcommand)]
    Concierge(concierge::ConciergeCommand),
    /// Secret syncs ([[secret_syncs]] in the topology): Key Vault, Secrets Manager and
    /// Vault/OpenBao kept in step across regions; sync, status, diff, promote, escrow.
    #[command(subcommand)]
    Secrets(secrets::SecretsCommand),
    /// PostgreSQL geo-replicas ([[databases]] in the topology).
    #[command(subcommand)]
    Db(db::DbCommand),
    /// Pause a policy in the running daemon: nothing is copied or deleted (transfers in
    /// flight finish) until `georep resume`; changes are still recorded, so the lag and
    /// the RPO show what waits. Survives a restart.
    Pause(policy_cmd::PauseArgs),
    /// End a pause; for a policy the mass-delete guard paused, let its next scan delete
    /// past the guard once (the operator confirmed the deletes are meant).
    Resume(policy_cmd::PolicyArgs),
    /// Rescan a policy's source now, retry failed items and queue again every object
    /// missing or different at a destination, through the running daemon.
    Resync(policy_cmd::PolicyArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum Output {
    Text,
    Json,
}

/// Flags every command that talks to stores shares.
#[derive(Args, Debug, Clone)]
pub(crate) struct Common {
    /// Output format: text for people, json for scripts.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
    /// Only keys matching this glob (relative to the prefix; `*` within a folder, `**` across). Repeatable.
    #[arg(long, value_name = "GLOB")]
    pub(crate) include: Vec<String>,
    /// Skip keys matching this glob. Repeatable; wins over --include.
    #[arg(long, value_name = "GLOB")]
    pub(crate) exclude: Vec<String>,
    /// Give up on an endpoint that stays down after this long. Every request is retried
    /// on timeouts, 5xx and throttling (429/503) with exponential backoff and jitter
    /// until then, so a dead endpoint fails the run within this bound, never hangs.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub(crate) retry_timeout: Duration,
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    georep_core::parse_duration(s).map_err(|e| e.to_string())
}

/// Lifts the soft open-files limit to the hard one: the daemon holds a descriptor per
/// proxied connection, transfer and watch, and a soft limit of 1024 (or less) would make
/// accept fail long before `max_connections` does.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { exit::USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let default_level = match cli.command {
        // rustic_core (recovery points) narrates every step at info.
        Command::Serve(_) => "info,rustic_core=warn",
        // georep reports what rustic_core's warnings are about itself, on one line.
        _ => "warn,rustic_core=error",
    };
    let level = cli.log_level.as_deref().unwrap_or(default_level);
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("georep: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Ls(a) => ls::run(a).await,
            Command::Copy(a) => transfer::run_copy(a).await,
            Command::Sync(a) => transfer::run_sync(a).await,
            Command::Check(a) => transfer::run_check(a).await,
            Command::Validate(a) => topology::validate(a),
            Command::Plan(a) => topology::plan(a).await,
            Command::Reload(a) => topology::reload(a).await,
            Command::Serve(a) => serve::run(a).await,
            Command::Status(a) => status::run(a),
            Command::Db(c) => db::run(c).await,
            Command::Backup(c) => backup::run(c).await,
            Command::Relay(c) => relay::run(c).await,
            Command::Concierge(c) => concierge::run(c).await,
            Command::Secrets(c) => secrets::run(c).await,
            Command::Failover(a) => failover::run(a).await,
            Command::Drill(a) => drill::run(a).await,
            Command::Pause(a) => policy_cmd::run(a.policy, policy_cmd::Action::Pause(a.note)).await,
            Command::Resume(a) => policy_cmd::run(a, policy_cmd::Action::Resume).await,
            Command::Resync(a) => policy_cmd::run(a, policy_cmd::Action::Resync).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("georep: {e:#}");
            ExitCode::from(output::exit_code_of(&e))
        }
    }
}
