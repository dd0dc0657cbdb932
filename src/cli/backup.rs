use super::{human, Cli};
use crate::backup::{self, BackupOptions};
use crate::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The VM these disks belong to.
    #[arg(long)]
    vm: String,
    /// The host recorded in the snapshot (default: this machine's name).
    #[arg(long)]
    host: Option<String>,
    /// A tag for the snapshot; repeat for more.
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// The snapshot's time, RFC 3339 (default: now).
    #[arg(long, value_parser = parse_time)]
    time: Option<String>,
    /// Read every disk even if its file looks unchanged since the last snapshot.
    #[arg(long)]
    force_read: bool,
    /// Disk images (raw, qcow2, VMDK, VHD, VHDX, block devices) or VM folders (the disks
    /// the .vmx names, plus the config files; lock files, swap and logs are skipped).
    #[arg(required = true, value_name = "DISK|FOLDER")]
    disks: Vec<PathBuf>,
}

fn parse_time(s: &str) -> std::result::Result<String, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.to_rfc3339())
        .map_err(|e| {
            format!("{s:?} is not an RFC 3339 time such as 2026-11-22T02:00:00+01:00: {e}")
        })
}

pub fn run(cli: &Cli, a: &Args) -> Result<i32> {
    let repo = cli.open()?;
    let opts = BackupOptions {
        vm: a.vm.clone(),
        host: a.host.clone().unwrap_or_else(crate::repo::hostname),
        tags: a.tags.clone(),
        time: a.time.clone().unwrap_or_else(backup::now_rfc3339),
        force_read: a.force_read,
        quiet: cli.quiet,
    };
    let r = backup::run(&repo, &a.disks, &opts)?;
    if !cli.quiet && !cli.json {
        for s in &r.skipped {
            eprintln!("skipped {}: {}", s.path.display(), s.reason);
        }
    }
    if cli.json {
        cli.print_json(&r);
    } else {
        println!(
            "snapshot {} saved (VM {}, {} disks, {} config files)",
            &r.snapshot[..8],
            r.vm,
            r.disks,
            r.files
        );
        if r.disks_unchanged > 0 {
            println!(
                "  {} disks unchanged since the parent snapshot, not read",
                r.disks_unchanged
            );
        }
        println!(
            "  {} logical, {} read, {} holes skipped, {} new, {} stored in {} packs, {:.1}s",
            human(r.logical_bytes),
            human(r.bytes_read),
            human(r.holes_skipped),
            human(r.bytes_new),
            human(r.bytes_stored),
            r.packs_written,
            r.duration_secs
        );
    }
    Ok(0)
}
