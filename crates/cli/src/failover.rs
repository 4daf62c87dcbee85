//! `georep failover GROUP`: asks the running daemon (which holds the listeners) to fail
//! a group over, and prints what happened.

use anyhow::{Context, Result};
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
    let base = a
        .api
        .clone()
        .unwrap_or_else(|| format!("http://{}", t.server.listen));
    let url = format!(
        "{}/api/v1/failover-groups/{}/failover",
        base.trim_end_matches('/'),
        a.group
    );
    let body = serde_json::json!({ "to": a.to, "force": a.force }).to_string();
    let client = reqwest::Client::new();
    let mut req = client
        .post(&url)
        .header("content-type", "application/json")
        .body(body);
    if let Some(tok) = crate::api_token::for_client(&t, &base)? {
        req = req.bearer_auth(tok);
    }
    let resp = req.send().await.with_context(|| {
        format!("cannot reach the georep daemon at {base}: is `georep serve` running? (it holds the listeners; pass --api URL if it listens elsewhere)")
    })?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    if !status.is_success() {
        let msg = v["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string());
        eprintln!(
            "georep: failover of '{}' refused ({status}): {msg}",
            a.group
        );
        return Ok(match status.as_u16() {
            404 | 409 | 400 => 2,
            // A member unreachable, refusing or timing out: nothing was changed or the
            // daemon keeps settling it.
            502 | 503 => 3,
            _ => 1,
        });
    }
    if a.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{}: {} → {} (epoch {}); writes paused {} ms; data loss: {}",
            a.group,
            v["from"].as_str().unwrap_or("?"),
            v["to"].as_str().unwrap_or("?"),
            v["epoch"],
            v["write_gap_ms"],
            v["data_loss"].as_str().unwrap_or("?")
        );
        if let Some(r) = v["repointed"].as_array().filter(|r| !r.is_empty()) {
            let names: Vec<&str> = r.iter().filter_map(|m| m.as_str()).collect();
            println!("  now following the new primary: {}", names.join(", "));
        }
        if let Some(l) = v["left_behind"].as_object() {
            for (m, why) in l {
                println!(
                    "  fenced, needs `georep db reseed {} {m}`: {}",
                    a.group,
                    why.as_str().unwrap_or("?")
                );
            }
        }
        if v["outcome"].as_str().is_some_and(|o| o != "done") {
            println!("  {}", v["outcome"].as_str().unwrap_or_default());
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
    let base = a
        .api
        .clone()
        .unwrap_or_else(|| format!("http://{}", t.server.listen));
    let url = format!(
        "{}/api/v1/failover-groups/{}/reseed",
        base.trim_end_matches('/'),
        a.group
    );
    let mut req = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .body(serde_json::json!({ "member": a.member }).to_string());
    if let Some(tok) = crate::api_token::for_client(&t, &base)? {
        req = req.bearer_auth(tok);
    }
    let resp = req.send().await.with_context(|| {
        format!("cannot reach the georep daemon at {base}: is `georep serve` running?")
    })?;
    let status = resp.status();
    let v: serde_json::Value =
        serde_json::from_str(&resp.text().await.unwrap_or_default()).unwrap_or_default();
    if !status.is_success() {
        eprintln!(
            "georep: reseed refused ({status}): {}",
            v["error"].as_str().unwrap_or("error")
        );
        return Ok(2);
    }
    println!(
        "{}: '{}' rebuilt as a replica ({} tables copied in {:.1}s); it is routed to again",
        a.group,
        a.member,
        v["tables"].as_array().map(Vec::len).unwrap_or(0),
        v["seconds"].as_f64().unwrap_or(0.0)
    );
    Ok(0)
}
