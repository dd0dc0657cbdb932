use super::{plural, Cli};
use crate::repair;
use crate::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand, Debug)]
enum What {
    /// Rebuild the index from the packs: replace damaged index files, drop entries of
    /// missing packs, index packs that no index file names.
    Index {
        /// Say what would change, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Salvage the readable blobs of damaged packs into new packs and drop the rest from
    /// the index, so the next backup stores them again.
    Packs {
        /// Packs to repair (id prefixes, as `check --read-data` names them); default: read
        /// every pack and repair those that fail.
        #[arg(value_name = "PACK")]
        packs: Vec<String>,
        #[arg(long)]
        dry_run: bool,
    },
    /// Rewrite snapshots that still need lost blobs: lost disk ranges read as zeros and are
    /// listed; run it after the next backup, which may store the lost data again.
    Snapshots {
        #[arg(long)]
        dry_run: bool,
    },
}

pub fn run(cli: &Cli, a: &Args) -> Result<i32> {
    let repo = cli.open()?;
    let dry = |d: bool| if d { " (dry run)" } else { "" };
    match &a.what {
        What::Index { dry_run } => {
            let r = repair::index::run(&repo, *dry_run)?;
            if cli.json {
                cli.print_json(&r);
                return Ok(0);
            }
            for d in &r.damaged {
                println!("damaged index file {d}: replaced{}", dry(*dry_run));
            }
            for p in &r.missing_packs {
                println!(
                    "pack {p} is missing: its blobs leave the index{}",
                    dry(*dry_run)
                );
            }
            for p in &r.unreadable_packs {
                println!("cannot index {p}");
            }
            println!(
                "{} indexed again from their headers ({}); {} written, {} removed{}",
                plural(r.packs_recovered, "pack"),
                plural(r.blobs_recovered, "blob"),
                plural(r.index_files_written, "index file"),
                r.index_files_deleted,
                dry(*dry_run)
            );
        }
        What::Packs { packs, dry_run } => {
            let r = repair::packs::run(&repo, packs, *dry_run, cli.quiet)?;
            if cli.json {
                cli.print_json(&r);
                return Ok(0);
            }
            for d in &r.damaged {
                println!("damaged: {d}");
            }
            println!(
                "{} checked, {} damaged: {} salvaged into {}, {} lost{}",
                plural(r.packs_checked, "pack"),
                r.damaged.len(),
                plural(r.blobs_salvaged, "blob"),
                plural(r.packs_written, "new pack"),
                r.blobs_lost,
                dry(*dry_run)
            );
            if r.blobs_lost > 0 && !dry_run {
                println!(
                    "next: back up the affected VMs (lost data still on their disks is stored \
                     again), then run `cairn repair snapshots` for what remains lost"
                );
            }
        }
        What::Snapshots { dry_run } => {
            let r = repair::snapshots::run(&repo, *dry_run)?;
            if cli.json {
                cli.print_json(&r);
                return Ok(0);
            }
            for s in &r.repaired {
                let new = s
                    .new_snapshot
                    .as_deref()
                    .map(|n| format!(" -> {}", &n[..8]))
                    .unwrap_or_default();
                println!(
                    "snapshot {}{new} (VM {}, {}):",
                    &s.snapshot[..8],
                    s.vm,
                    s.time
                );
                for d in &s.disks {
                    let ranges: Vec<String> = d
                        .ranges
                        .iter()
                        .take(8)
                        .map(|(o, l)| format!("{o}+{l}"))
                        .collect();
                    let more = d.ranges.len().saturating_sub(8);
                    println!(
                        "  {}: {} lost, now zeros: {}{}",
                        d.disk,
                        super::human(d.bytes),
                        ranges.join(", "),
                        if more > 0 {
                            format!(" and {more} more")
                        } else {
                            String::new()
                        }
                    );
                }
                for f in &s.files_dropped {
                    println!("  {f}: damaged, dropped from the snapshot");
                }
            }
            for s in &r.removed {
                println!(
                    "snapshot {} removed: nothing of it can be restored",
                    &s[..8]
                );
            }
            println!(
                "{} checked, {} rewritten, {} removed{}",
                plural(r.snapshots, "snapshot"),
                r.repaired.len(),
                r.removed.len(),
                dry(*dry_run)
            );
        }
    }
    Ok(0)
}
