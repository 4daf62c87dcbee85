//! `georep failover GROUP`: asks the running daemon (which holds the listeners) to fail
//! a group over, and prints what happened.

use anyhow::Result;
use clap::Args;

use crate::topology::{load, ConfigArg, ConfigFileError};
use crate::Output;

#[derive(Args, Debug)]
pub(crate) struct FailoverArgs {
    /// The failover group.
    pub(crate) group: String,
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    /// The replica to promote (member name or region); default: a healthy replica.
    #[arg(long, value_name = "MEMBER")]
    pub(crate) to: Option<String>,
    /// Promote without the primary (it is unreachable): what it had not sent is lost; the
    /// old primary is fenced for good and needs `georep db reseed`.
    #[arg(long)]
    pub(crate) force: bool,
    /// The daemon's API (default: http://[server] listen from the topology).
    #[arg(long, value_name = "URL")]
    pub(crate) api: Option<String>,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
}

pub(crate) async fn run(a: FailoverArgs) -> Result<u8> {
    let t = load(&a.config.config)?;
    if t.failover_group(&a.group).is_none() {
        return Err(ConfigFileError(format!(
            "no failover group named '{}' in {}",
            a.group,
            a.config.config.display()
        ))
        .into());
    }
    let api = crate::api_token::client(&t, a.api.as_deref())?;
    let req = georep_api::FailoverRequest {
        to: a.to.clone(),
        force: a.force,
    };
    let rep = match api.failover(&a.group, &req).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("georep: failover of '{}' refused: {e}", a.group);
            return Ok(e.exit_class());
        }
    };
    if a.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        println!(
            "{}: {} → {} (epoch {}); writes paused {} ms; data loss: {}",
            a.group, rep.from, rep.to, rep.epoch, rep.write_gap_ms, rep.data_loss
        );
        if !rep.repointed.is_empty() {
            println!(
                "  now following the new primary: {}",
                rep.repointed.join(", ")
            );
        }
        for (m, why) in &rep.left_behind {
            println!("  fenced, needs `georep db reseed {} {m}`: {why}", a.group);
        }
        if rep.outcome != "done" {
            println!("  {}", rep.outcome);
        }
    }
    Ok(0)
}

#[derive(Args, Debug)]
pub(crate) struct ReseedArgs {
    /// The failover group.
    pub(crate) group: String,
    /// The fenced member to rebuild as a replica (e.g. the old primary).
    pub(crate) member: String,
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    /// The daemon's API (default: http://[server] listen from the topology).
    #[arg(long, value_name = "URL")]
    pub(crate) api: Option<String>,
}

/// Asks the daemon to rebuild a fenced member as a replica of the current primary.
pub(crate) async fn reseed(a: ReseedArgs) -> Result<u8> {
    let t = load(&a.config.config)?;
    let api = crate::api_token::client(&t, a.api.as_deref())?;
    let rep = match api.reseed(&a.group, &a.member).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("georep: reseed refused: {e}");
            return Ok(e.exit_class());
        }
    };
    println!(
        "{}: '{}' rebuilt as a replica ({} tables copied in {:.1}s); it is routed to again",
        a.group,
        a.member,
        rep.tables.len(),
        rep.seconds
    );
    Ok(0)
}
