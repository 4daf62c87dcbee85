//! `georep pause|resume|resync POLICY`: ask the running daemon to act on a policy,
//! through the typed API client, and print what it did.

use anyhow::Result;
use clap::Args;

use crate::topology::{load, ConfigArg, ConfigFileError};
use crate::Output;

#[derive(Args, Debug)]
pub(crate) struct PolicyArgs {
    /// The policy.
    pub(crate) policy: String,
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    /// The daemon's API (default: http://[server] listen from the topology).
    #[arg(long, value_name = "URL")]
    pub(crate) api: Option<String>,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
}

#[derive(Args, Debug)]
pub(crate) struct PauseArgs {
    #[command(flatten)]
    pub(crate) policy: PolicyArgs,
    /// Why (a change ticket, say): shown in status while the policy is paused.
    #[arg(long, value_name = "TEXT")]
    pub(crate) note: Option<String>,
}

/// What to ask of the daemon.
#[derive(Debug, Clone)]
pub(crate) enum Action {
    Pause(Option<String>),
    Resume,
    Resync,
}

pub(crate) async fn run(a: PolicyArgs, action: Action) -> Result<u8> {
    let t = load(&a.config.config)?;
    if !t.policies.iter().any(|p| p.name == a.policy) {
        return Err(ConfigFileError(format!(
            "no policy named '{}' in {}",
            a.policy,
            a.config.config.display()
        ))
        .into());
    }
    let api = crate::api_token::client(&t, a.api.as_deref())?;
    let (json, text) = match action {
        Action::Pause(note) => match api.pause(&a.policy, note.as_deref()).await {
            Ok(r) => (
                serde_json::to_value(&r)?,
                format!(
                    "{}: {}; nothing is copied or deleted until `georep resume {}`",
                    a.policy, r.held, a.policy
                ),
            ),
            Err(e) => {
                eprintln!("georep: pause of '{}' refused: {e}", a.policy);
                return Ok(e.exit_class());
            }
        },
        Action::Resume => match api.resume(&a.policy).await {
            Ok(r) => (
                serde_json::to_value(&r)?,
                format!("{}: resumed; {}", a.policy, r.note),
            ),
            Err(e) => {
                eprintln!("georep: resume of '{}' refused: {e}", a.policy);
                return Ok(e.exit_class());
            }
        },
        Action::Resync => match api.resync(&a.policy).await {
            Ok(r) => (
                serde_json::to_value(&r)?,
                format!(
                    "{}: rescanned {} objects in {} ms ({} changed, {} removed, {} held, {} skipped); {} failed items retried, {} objects queued again",
                    a.policy,
                    r.scan.listed,
                    r.scan.millis,
                    r.scan.changed,
                    r.scan.removed,
                    r.scan.held,
                    r.scan.skipped,
                    r.retried,
                    r.repaired
                ),
            ),
            Err(e) => {
                eprintln!("georep: resync of '{}' refused: {e}", a.policy);
                return Ok(e.exit_class());
            }
        },
    };
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&json)?),
        Output::Text => println!("{text}"),
    }
    Ok(0)
}
