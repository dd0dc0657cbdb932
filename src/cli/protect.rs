use super::Cli;
use crate::{forget, snapshot, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Snapshot id (a unique prefix) or VM:latest.
    snapshot: String,
}

/// `protect` and `unprotect`: a protected snapshot is never forgotten.
pub fn run(cli: &Cli, a: &Args, protect: bool) -> Result<i32> {
    let repo = cli.open()?;
    let (id, snap) = snapshot::resolve(&repo, &a.snapshot)?;
    forget::set_protected(&repo, &id, protect)?;
    let state = if protect {
        "protected"
    } else {
        "no longer protected"
    };
    if cli.json {
        cli.print_json(&serde_json::json!({ "snapshot": id.to_hex(), "protected": protect }));
    } else {
        println!(
            "snapshot {} (VM {}, {}) is {state}",
            id.short(),
            snap.vm,
            snap.time
        );
    }
    Ok(0)
}
