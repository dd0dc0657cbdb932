use super::{human, Cli};
use crate::restore::{self, Existing, RestoreOptions};
use crate::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Snapshot id (a unique prefix), VM:latest, or latest.
    snapshot: String,
    /// Folder to recreate the VM in; with --disk, also a block device or file that
    /// receives that disk's raw content.
    #[arg(long)]
    target: PathBuf,
    /// Restore only this disk (its file name).
    #[arg(long)]
    disk: Option<String>,
    /// What to do with files that already exist (without a terminal, prompt means abort).
    #[arg(long, value_enum, default_value = "prompt")]
    existing: Existing,
    /// Disk format to write: `native` (qcow2 as qcow2, VMDK as VMDK, raw as raw) or `raw`.
    #[arg(long, value_enum, default_value = "native")]
    format: Format,
    /// Restore the .vmx byte for byte; by default disk paths in it that do not name the
    /// restored disks (another datastore, an absolute path) are rewritten to them.
    #[arg(long)]
    keep_config: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Native,
    Raw,
}

pub fn run(cli: &Cli, a: &Args) -> Result<i32> {
    let repo = cli.open()?;
    let opts = RestoreOptions {
        target: a.target.clone(),
        disk: a.disk.clone(),
        existing: a.existing,
        raw: a.format == Format::Raw,
        keep_config: a.keep_config,
        quiet: cli.quiet,
    };
    let r = restore::run(&repo, &a.snapshot, &opts)?;
    for w in &r.warnings {
        eprintln!("cairn: warning: {w}");
    }
    if cli.json {
        cli.print_json(&r);
    } else {
        for d in &r.disks {
            println!(
                "restored {} as {} ({} logical, {} data) to {}",
                d.name,
                d.format,
                human(d.size),
                human(d.bytes_written),
                d.path.display()
            );
        }
        if !r.files.is_empty() {
            let names: Vec<String> = r.files.iter().map(|f| f.name.to_string()).collect();
            println!("restored config files: {}", names.join(", "));
        }
        for c in &r.config_rewritten {
            println!(
                "rewrote {} in {}: {} -> {} (the restored disk; --keep-config keeps the original)",
                c.change.key,
                c.file.display(),
                c.change.from,
                c.change.to
            );
        }
        for k in &r.kept {
            println!("kept existing {}", k.display());
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
