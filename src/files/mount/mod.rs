//! `cairn mount`: every snapshot of the repository as a read-only FUSE filesystem, served
//! in the foreground until Ctrl-C or an unmount from outside.
//!
//! - `tree`: what is shown (VM and snapshot folders, raw disks, the volumes' files) and the
//!   lazy opening of snapshots.
//! - `layout`: which volumes of a disk `files/<disk>` shows, and the note on the others.
//! - `inodes`: the mount's own node ids and their lifetimes.
//! - `adapter`: the `fuser` filesystem over them.
//!
//! The session runs on a few threads (the readers are `Send + Sync`, and a read waiting on
//! the repository should not hold up a `ls` elsewhere). The main thread waits for a signal
//! or the session's end. SIGINT, SIGTERM and SIGHUP unmount cleanly; a mount point that is
//! still in use is then detached lazily, as `umount -l` does, so that Ctrl-C always ends
//! the command. A `kill -9` leaves a dead mount behind (FUSE's auto-unmount needs
//! `allow_other`, which is not ours to require): `fusermount3 -u MOUNT` removes it.

mod adapter;
pub mod inodes;
mod layout;
pub mod tree;

use crate::repo::lock::Lock;
use crate::snapshot::view::Store;
use crate::snapshot::Snapshot;
use crate::{Error, Id, Result};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Threads answering the kernel.
const THREADS: usize = 4;
/// How often the main thread looks for a signal or the end of the session.
const POLL: Duration = Duration::from_millis(100);
/// How often the repository lock is checked while mounted.
const LOCK_CHECK: Duration = Duration::from_secs(60);
/// How long to wait for the session to end after unmounting.
const END_WAIT: Duration = Duration::from_secs(10);

/// The signal that asked us to stop, or 0.
static STOP: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // An atomic store is async-signal-safe; the main thread does the rest.
    STOP.store(sig, Ordering::SeqCst);
}

/// Turns SIGINT, SIGTERM and SIGHUP into a request to unmount. A handler rather than a
/// blocked mask: the lock's refresher thread already runs and would take the signal's
/// default action (death, leaving a dead mount) for the whole process.
fn catch_signals() -> Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is valid; the handler only stores to an atomic.
        let r = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if r != 0 {
            return Err(Error::io(
                "installing a signal handler",
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

/// What was served, for the report line.
pub struct Mounted {
    pub snapshots: usize,
    pub vms: usize,
}

/// Mounts `snapshots` (oldest first) read-only on `mountpoint` and serves them until a
/// signal or an unmount from outside; `ready` runs once the mount is in place. `lock` is
/// the shared repository lock held meanwhile, checked now and then: if it is lost, a prune
/// may delete data the mount reads, which is worth a warning.
pub fn serve(
    store: Arc<Store>,
    snapshots: Vec<(Id, Snapshot)>,
    mountpoint: &Path,
    lock: &Lock,
    ready: impl FnOnce(&Mounted),
) -> Result<()> {
    let tree = tree::Tree::new(store, snapshots);
    let mounted = Mounted {
        snapshots: tree.snaps.len(),
        vms: tree.vms.len(),
    };
    let fs = adapter::Mount::new(tree);
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::FSName("cairn".into()),
        fuser::MountOption::Subtype("cairn".into()),
    ];
    config.n_threads = Some(THREADS);
    catch_signals()?;
    let mut session = fuser::Session::new(fs, mountpoint, &config).map_err(|e| {
        Error::io(
            format!(
                "mounting FUSE on {} (is /dev/fuse there and fusermount3 installed?)",
                mountpoint.display()
            ),
            e,
        )
    })?;
    let mut unmounter = session.unmount_callable();
    let worker = std::thread::Builder::new()
        .name("fuse".into())
        .spawn(move || session.run())
        .map_err(|e| Error::io("starting the FUSE session", e))?;
    ready(&mounted);
    let mut checked = Instant::now();
    let mut lock_warned = false;
    while !worker.is_finished() {
        if STOP.load(Ordering::SeqCst) != 0 {
            if let Err(e) = unmounter.unmount() {
                detach(mountpoint, &e)?;
            }
            let since = Instant::now();
            while !worker.is_finished() && since.elapsed() < END_WAIT {
                std::thread::sleep(POLL);
            }
            if !worker.is_finished() {
                // Detached but still in use: ending the process ends the session, and the
                // processes inside get errors from then on.
                return Ok(());
            }
            break;
        }
        std::thread::sleep(POLL);
        if checked.elapsed() > LOCK_CHECK {
            checked = Instant::now();
            if let (Err(e), false) = (lock.check(), lock_warned) {
                lock_warned = true;
                eprintln!(
                    "cairn: warning: {e}. A prune may now remove data this mount reads; \
                     unmount and mount again"
                );
            }
        }
    }
    match worker.join() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::io("serving the FUSE mount", e)),
        Err(_) => Err(Error::Other("the FUSE session thread panicked".into())),
    }
}

/// After a failed unmount (the mount point is in use): detach it lazily, as `umount -l`.
fn detach(mountpoint: &Path, why: &std::io::Error) -> Result<()> {
    eprintln!(
        "cairn: {} is in use ({why}); detaching it, the processes using it get errors now",
        mountpoint.display()
    );
    let path = mountpoint
        .canonicalize()
        .unwrap_or_else(|_| mountpoint.to_path_buf());
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::Usage("the mount point's path contains a NUL byte".into()))?;
    // SAFETY: a valid C string; umount2 does not keep it.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        let e = std::io::Error::last_os_error();
        // Not root: fuser already ran `fusermount3 -u -z`, which is the same lazy detach.
        if e.raw_os_error() != Some(libc::EPERM) {
            return Err(Error::io(format!("unmounting {}", path.display()), e));
        }
    }
    Ok(())
}
