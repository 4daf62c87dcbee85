//! `georep ls STORE`: one line per object, in key order, streamed (no buffering).

use std::io::Write;

use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use georep_core::{Filter, StoreUrl};
use georep_storage::{ListRole, Store, StoreOptions};

use crate::{Common, Output};

#[derive(Args, Debug)]
pub(crate) struct LsArgs {
    /// The store to list.
    store: String,
    #[command(flatten)]
    common: Common,
}

pub(crate) async fn run(args: LsArgs) -> anyhow::Result<u8> {
    let url = StoreUrl::parse(&args.store).context("bad store URL")?;
    let filter = Filter::new(&args.common.include, &args.common.exclude)?;
    let opts = StoreOptions {
        retry_timeout: args.common.retry_timeout,
        ..Default::default()
    };
    let store = Store::open(&url, &opts)?;
    let mut entries = store.list(ListRole::Source);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut failed = 0u64;
    while let Some(entry) = entries.next().await {
        let entry = match entry {
            Ok(e) => e,
            Err(e) if e.is_fatal_for_store() => return Err(e.into()),
            Err(e) => {
                failed += 1;
                eprintln!("georep: {e}");
                continue;
            }
        };
        if !filter.matches(&entry.key) {
            continue;
        }
        let mtime = entry
            .last_modified
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let line = match args.common.output {
            Output::Text => format!("{}\t{}\t{}", entry.key, entry.size, mtime),
            Output::Json => serde_json::json!({
                "key": entry.key,
                "size": entry.size,
                "last_modified": mtime,
            })
            .to_string(),
        };
        if writeln!(out, "{line}").is_err() {
            return Ok(0); // stdout closed (e.g. `| head`): not an error
        }
    }
    let _ = out.flush();
    Ok(if failed > 0 {
        crate::exit::DIFFERENCES
    } else {
        0
    })
}
