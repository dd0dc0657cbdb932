use super::{human, Cli};
use crate::gc::{self, PruneOptions, PruneReport};
use crate::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    collect: CollectArgs,
    /// Show what would be deleted and repacked, change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// How prune collects, shared by `prune` and `forget --prune`.
#[derive(clap::Args, Debug)]
pub struct CollectArgs {
    /// Unused data to tolerate, as a share of the data in use ("5%", "0.05" or
    /// "unlimited"): packs are repacked, the most unused first, until no more is left.
    #[arg(long, default_value = "5%", value_parser = parse_share)]
    max_unused: f64,
    /// Take the exclusive lock and delete at once; backups wait. By default prune runs
    /// beside backups: it records what is unused and a later prune deletes it.
    #[arg(long)]
    exclusive: bool,
    /// Two-phase: how long a record waits before its packs are deleted (e.g. 1h, 30m, 0s).
    #[arg(long, default_value = "1h", value_parser = super::parse_wait)]
    grace: i64,
}

impl CollectArgs {
    pub fn options(&self, dry_run: bool, quiet: bool) -> PruneOptions {
        PruneOptions {
            max_unused: self.max_unused,
            dry_run,
            quiet,
            exclusive: self.exclusive,
            grace: std::time::Duration::from_secs(self.grace.max(0) as u64),
        }
    }
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
    if r.packs_pending > 0 {
        println!(
            "  {} unused packs recorded; a prune after the grace period deletes them (or run with --exclusive)",
            r.packs_pending
        );
    }
    if r.packs_resurrected > 0 {
        println!(
            "  {} recorded packs kept: backups since use them",
            r.packs_resurrected
        );
    }
    for w in &r.records_waiting {
        println!("  waiting: {w}");
    }
}

pub fn run(cli: &Cli, a: &Args) -> Result<i32> {
    let repo = cli.open()?;
    let r = gc::prune(&repo, &a.collect.options(a.dry_run, cli.quiet))?;
    if cli.json {
        cli.print_json(&r);
    } else {
        print(&r);
    }
    Ok(0)
}
