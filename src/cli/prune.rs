use super::{human, Cli};
use crate::gc::{self, PruneOptions, PruneReport};
use crate::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Repack a pack when more than this share of it is unused ("5%", "0.05" or "unlimited").
    #[arg(long, default_value = "5%", value_parser = parse_share)]
    max_unused: f64,
    /// Show what would be deleted and repacked, change nothing.
    #[arg(long)]
    dry_run: bool,
}

pub fn parse_share(s: &str) -> std::result::Result<f64, String> {
    if s == "unlimited" {
        return Ok(f64::INFINITY);
    }
    let (num, scale) = match s.strip_suffix('%') {
        Some(n) => (n, 100.0),
        None => (s, 1.0),
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v >= 0.0 && v / scale <= 1.0 => Ok(v / scale),
        _ => Err(format!(
            "{s:?}: give a share such as 5% or 0.05, or unlimited"
        )),
    }
}

pub fn print(r: &PruneReport) {
    let verb = if r.dry_run { "would free" } else { "freed" };
    println!(
        "prune: {} snapshots use {} blobs; {} packs deleted, {} repacked into {}, {} left by interrupted backups",
        r.snapshots, r.blobs_used, r.packs_deleted, r.packs_repacked, r.packs_written, r.packs_unreferenced
    );
    println!(
        "  packs: {} before, {} after; {verb} {} in {:.1}s",
        human(r.bytes_before),
        human(r.bytes_after),
        human(r.bytes_freed.max(0) as u64),
        r.duration_secs
    );
}

pub fn run(cli: &Cli, a: &Args) -> Result<i32> {
    let repo = cli.open()?;
    let r = gc::prune(
        &repo,
        &PruneOptions {
            max_unused: a.max_unused,
            dry_run: a.dry_run,
            quiet: cli.quiet,
        },
    )?;
    if cli.json {
        cli.print_json(&r);
    } else {
        print(&r);
    }
    Ok(0)
}
