use super::{human, Cli};
use crate::restore::{self, RestoreOptions};
use crate::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Snapshot id (a unique prefix), VM:latest, or latest.
    snapshot: String,
    /// Folder to write the disks into.
    #[arg(long)]
    target: PathBuf,
    /// Restore only this disk (its file name).
    #[arg(long)]
    disk: Option<String>,
    /// Replace files that already exist in the target.
    #[arg(long)]
    overwrite: bool,
}

pub fn run(cli: &Cli, a: &Args) -> Result<i32> {
    let repo = cli.open()?;
    let opts = RestoreOptions {
        target: a.target.clone(),
        disk: a.disk.clone(),
        overwrite: a.overwrite,
        quiet: cli.quiet,
    };
    let r = restore::run(&repo, &a.snapshot, &opts)?;
    if cli.json {
        cli.print_json(&r);
    } else {
        for d in &r.disks {
            println!(
                "restored {} ({} logical, {} data) to {}",
                d.name,
                human(d.size),
                human(d.bytes_written),
                d.path.display()
            );
        }
        println!(
            "snapshot {} of VM {} restored and verified in {:.1}s",
            &r.snapshot[..8],
            r.vm,
            r.duration_secs
        );
    }
    Ok(0)
}
