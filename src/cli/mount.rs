//! `mount`: every snapshot (or one VM's) as a read-only FUSE filesystem, in the
//! foreground until Ctrl-C or `umount`.

use super::Cli;
use crate::repo::lock::LockKind;
use crate::snapshot::view::Store;
use crate::{Error, Result};
use std::path::Path;
use std::sync::Arc;

/// Decompressed chunks kept while mounted: shared by every snapshot, so that the metadata
/// blocks of filesystems being browsed stay in memory.
const CHUNK_CACHE: u64 = 128 << 20;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// An empty folder to mount on.
    mountpoint: std::path::PathBuf,
    /// Only this VM's snapshots.
    #[arg(long)]
    vm: Option<String>,
}

/// Refuses what would hide files or fail later: a missing path, a file, a non-empty
/// folder (a mount over it would hide its content until unmounted).
fn check_mountpoint(p: &Path) -> Result<()> {
    let meta = std::fs::metadata(p).map_err(|e| {
        Error::Usage(format!(
            "mount point {}: {e}; create an empty folder to mount on",
            p.display()
        ))
    })?;
    if !meta.is_dir() {
        return Err(Error::Usage(format!(
            "mount point {} is not a folder",
            p.display()
        )));
    }
    let mut entries = std::fs::read_dir(p)
        .map_err(|e| Error::Usage(format!("mount point {}: {e}", p.display())))?;
    if entries.next().is_some() {
        return Err(Error::Usage(format!(
            "mount point {} is not empty; mount on an empty folder",
            p.display()
        )));
    }
    Ok(())
}

pub fn run(cli: &Cli, a: &Args) -> Result<i32> {
    check_mountpoint(&a.mountpoint)?;
    let repo = Arc::new(cli.open()?);
    // Shared: backups may run meanwhile, prune waits until the mount ends.
    let lock = repo.lock(LockKind::Shared, "mount")?;
    let cache = Arc::new(repo.index_cache()?);
    let loaded = crate::snapshot::load_all(&repo)?;
    if let Some(w) = loaded.warning() {
        eprintln!("cairn: warning: {w}");
    }
    let snapshots: Vec<_> = loaded
        .snapshots
        .into_iter()
        .filter(|(_, s)| a.vm.as_ref().is_none_or(|vm| &s.vm == vm))
        .collect();
    if snapshots.is_empty() {
        return Err(Error::Usage(match &a.vm {
            Some(vm) => format!("no snapshot of VM {vm:?}; `cairn snapshots` lists them"),
            None => "the repository has no snapshots to mount".into(),
        }));
    }
    let store = Store::new(repo, cache, CHUNK_CACHE);
    let shown = a.mountpoint.display();
    crate::files::mount::serve(store, snapshots, &a.mountpoint, &lock, |m| {
        eprintln!(
            "mounted {} snapshots of {} VMs on {shown}; Ctrl-C or `umount {shown}` to stop",
            m.snapshots, m.vms
        );
    })?;
    Ok(0)
}
