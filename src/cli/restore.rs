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
    #[arg(long, conflicts_with = "paths")]
    disk: Option<String>,
    /// Restore files or directories from inside the disk images instead:
    /// `/<disk>/<volume>/<path>` (repeat for more); each lands in --target under its last
    /// component, with modes, times, symlinks and (as root) owners.
    #[arg(long = "path", value_name = "PATH")]
    paths: Vec<std::ffi::OsString>,
    /// With --path: say on stderr how much was read from the repository.
    #[arg(long, requires = "paths")]
    stats: bool,
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
    if !a.paths.is_empty() {
        return restore_paths(cli, a);
    }
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

fn restore_paths(cli: &Cli, a: &Args) -> Result<i32> {
    use std::os::unix::ffi::OsStrExt;
    let (store, b, _lock) = super::files::open_browser(cli, &a.snapshot, "restore --path")?;
    let paths: Vec<Vec<u8>> = a.paths.iter().map(|p| p.as_bytes().to_vec()).collect();
    let mut r = crate::files::extract::restore_paths(&b, &paths, &a.target, a.existing)?;
    r.bytes_fetched = store.fetched.load(std::sync::atomic::Ordering::Relaxed);
    for w in &r.warnings {
        eprintln!("cairn: warning: {w}");
    }
    if cli.json {
        cli.print_json(&r);
    } else {
        for p in &r.restored {
            println!("restored {} to {}", p.path, p.target.display());
        }
        for k in &r.kept {
            println!("kept existing {}", k.display());
        }
        println!(
            "{} files ({}), {} directories, {} links from snapshot {}",
            r.files,
            human(r.bytes),
            r.dirs,
            r.links,
            &r.snapshot[..8]
        );
    }
    if a.stats {
        super::files::print_stats(&store);
    }
    Ok(0)
}
