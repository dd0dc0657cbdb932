//! Repository locks as plain files in `locks/`, safe on NFS and SMB.
//!
//! A lock is created with an exclusive create (link(2) of a fully written temp file), then
//! the folder is listed: if a conflicting lock that is not stale exists, ours is removed and
//! the command fails, naming the holder. Backups hold shared locks; commands that delete
//! hold an exclusive one. A holder rewrites its lock every [`REFRESH`]; a lock is stale when
//! it was not refreshed for [`STALE_AFTER`], or when it belongs to a process on this host
//! that no longer exists.

use crate::backend::Backend;
use crate::crypto::random_bytes;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const REFRESH: Duration = Duration::from_secs(120);
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    Shared,
    Exclusive,
    /// A two-phase prune: runs beside backups and readers (shared locks), never beside
    /// another prune or an exclusive lock.
    Prune,
}

impl LockKind {
    /// Whether locks of these kinds may be held at the same time.
    pub fn conflicts(self, other: LockKind) -> bool {
        use LockKind::*;
        matches!(
            (self, other),
            (Exclusive, _) | (_, Exclusive) | (Prune, Prune)
        )
    }
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct LockInfo {
    pub kind: LockKind,
    pub host: String,
    pub pid: u32,
    pub command: String,
    /// Unix seconds.
    pub created: i64,
    pub refreshed: i64,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl LockInfo {
    pub fn age(&self) -> Duration {
        Duration::from_secs((now() - self.refreshed).max(0) as u64)
    }

    /// Why this lock no longer counts, if it does not.
    pub fn stale_reason(&self) -> Option<String> {
        if self.age() > STALE_AFTER {
            return Some(format!("not refreshed for {}s", self.age().as_secs()));
        }
        if self.host == super::hostname() && !process_alive(self.pid) {
            return Some(format!("process {} on this host is gone", self.pid));
        }
        None
    }

    pub fn describe(&self) -> String {
        format!(
            "{:?} lock by `{}` (pid {} on host {}), refreshed {}s ago",
            self.kind,
            self.command,
            self.pid,
            self.host,
            self.age().as_secs()
        )
        .to_lowercase()
    }
}

fn process_alive(pid: u32) -> bool {
    // kill(pid, 0) probes existence; EPERM still means it exists.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A lock file as found in `locks/`.
pub struct LockEntry {
    pub name: String,
    /// None if the file does not parse (damaged, or written by a newer cairn).
    pub info: Option<LockInfo>,
    /// Why it no longer counts, if it does not.
    pub stale: Option<String>,
}

/// Every lock in the repository. A lock file that cannot be parsed counts as an exclusive
/// lock until it is [`STALE_AFTER`] old by the storage's clock: lock files are written
/// atomically, so an unparsable one is not half-written but damaged or foreign, and
/// ignoring it could let prune run beside a backup.
pub fn list_locks(backend: &dyn Backend) -> Result<Vec<LockEntry>> {
    let mut out = Vec::new();
    for name in backend
        .list(super::files::Folder::Locks.name())?
        .into_iter()
        .map(|l| l.name)
    {
        let bytes = match backend.get(&name) {
            Ok(b) => b,
            Err(_) if backend.size(&name)?.is_none() => continue, // removed meanwhile
            Err(e) => return Err(e),
        };
        let info = serde_json::from_slice::<LockInfo>(&bytes).ok();
        let stale = match &info {
            Some(i) => i.stale_reason(),
            None => match backend.modified(&name)? {
                None => continue,
                Some(t) => {
                    let age = t.elapsed().unwrap_or_default();
                    (age > STALE_AFTER)
                        .then(|| format!("unreadable and not written for {}s", age.as_secs()))
                }
            },
        };
        out.push(LockEntry { name, info, stale });
    }
    Ok(out)
}

/// A held lock. Dropping it stops the refresher and removes the file.
pub struct Lock {
    name: String,
    backend: Arc<dyn Backend>,
    stop: Arc<(Mutex<bool>, std::sync::Condvar)>,
    refresher: Option<std::thread::JoinHandle<()>>,
    lost: Arc<AtomicBool>,
    /// Unix seconds of the last successful write of our lock file.
    refreshed: Arc<AtomicI64>,
    /// The longest time in seconds between two writes of our lock file so far. A process
    /// suspended for an hour refreshes at once on waking, so the time since the last
    /// refresh alone would hide that others saw the lock stale meanwhile.
    longest_gap: Arc<AtomicI64>,
}

impl Lock {
    /// Takes a lock, retrying for up to `wait` while a conflicting one is held (what a
    /// scheduled prune wants while the night's backups finish).
    pub fn acquire_waiting(
        backend: Arc<dyn Backend>,
        kind: LockKind,
        command: &str,
        wait: Duration,
    ) -> Result<Lock> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            match Lock::acquire(backend.clone(), kind, command) {
                Err(Error::Locked(msg)) if std::time::Instant::now() < deadline => {
                    let _ = msg;
                    std::thread::sleep(Duration::from_millis(500));
                }
                other => return other,
            }
        }
    }

    pub fn acquire(backend: Arc<dyn Backend>, kind: LockKind, command: &str) -> Result<Lock> {
        let mut info = LockInfo {
            kind,
            host: super::hostname(),
            pid: std::process::id(),
            command: command.to_string(),
            created: now(),
            refreshed: now(),
        };
        let name = super::files::lock(&hex::encode(random_bytes::<16>()));
        let body = serde_json::to_vec(&info).expect("lock serializes");
        if !backend.put_new(&name, &body)? {
            return Err(Error::Other(format!(
                "lock {name} already exists (a random name collided); run the command again"
            )));
        }
        for other in list_locks(&*backend)? {
            if other.name == name || other.stale.is_some() {
                continue;
            }
            let (conflicts, holder) = match &other.info {
                Some(t) => (kind.conflicts(t.kind), t.describe()),
                None => (
                    true,
                    "a lock file that cannot be read (damaged, or written by a newer cairn); \
                     it counts as held until it is 30 minutes old"
                        .to_string(),
                ),
            };
            if conflicts {
                let _ = backend.delete(&name);
                return Err(Error::Locked(format!(
                    "repository {} is locked: {} ({}). Wait for it to finish; if that process is gone, \
                     run `cairn unlock`",
                    backend.location(),
                    holder,
                    other.name
                )));
            }
        }
        let stop = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let lost = Arc::new(AtomicBool::new(false));
        let refreshed = Arc::new(AtomicI64::new(info.refreshed));
        let longest_gap = Arc::new(AtomicI64::new(0));
        let refresher = {
            let (stop, lost, backend, name) =
                (stop.clone(), lost.clone(), backend.clone(), name.clone());
            let (refreshed, longest_gap) = (refreshed.clone(), longest_gap.clone());
            std::thread::spawn(move || loop {
                let (m, cv) = &*stop;
                let guard = m.lock().unwrap_or_else(|e| e.into_inner());
                let (guard, _) = cv
                    .wait_timeout_while(guard, REFRESH, |stopped| !*stopped)
                    .unwrap_or_else(|e| e.into_inner());
                if *guard {
                    return;
                }
                drop(guard);
                // A lock removed by `cairn unlock` stays removed: rewriting it would hide
                // that others may have acted on its absence.
                if !matches!(backend.size(&name), Ok(Some(_))) {
                    lost.store(true, Ordering::SeqCst);
                    return;
                }
                info.refreshed = now();
                let body = serde_json::to_vec(&info).expect("lock serializes");
                match backend.put(&name, &body) {
                    Ok(()) => {
                        let gap = info.refreshed - refreshed.swap(info.refreshed, Ordering::SeqCst);
                        longest_gap.fetch_max(gap, Ordering::SeqCst);
                    }
                    Err(_) => lost.store(true, Ordering::SeqCst),
                }
            })
        };
        Ok(Lock {
            name,
            backend,
            stop,
            refresher: Some(refresher),
            lost,
            refreshed,
            longest_gap,
        })
    }

    /// The lock file's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Fails if the lock file could not be refreshed (the repository went away, or someone
    /// removed our lock): the caller must not write a snapshot then.
    /// Also fails if our lock went unrefreshed long enough that others may have taken it for
    /// stale (the process was suspended, the NAS hung): prune may have run meanwhile.
    pub fn check(&self) -> Result<()> {
        let silent = (now() - self.refreshed.load(Ordering::SeqCst))
            .max(self.longest_gap.load(Ordering::SeqCst));
        if silent > (STALE_AFTER.as_secs() / 2) as i64 {
            return Err(Error::Locked(format!(
                "our lock {} was not refreshed for {silent}s, so another host may have treated it as \
                 stale; nothing was committed, run the command again",
                self.name
            )));
        }
        if self.lost.load(Ordering::SeqCst) || self.backend.size(&self.name)?.is_none() {
            return Err(Error::Locked(format!(
                "our lock {} was lost (removed by `cairn unlock`, or the repository became unreachable); \
                 nothing was committed",
                self.name
            )));
        }
        Ok(())
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        {
            let (m, cv) = &*self.stop;
            *m.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cv.notify_all();
        }
        if let Some(t) = self.refresher.take() {
            let _ = t.join();
        }
        let _ = self.backend.delete(&self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LocalBackend;

    #[test]
    fn a_past_refresh_gap_fails_the_check_even_after_a_fresh_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let b: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path()));
        let l = Lock::acquire(b.clone(), LockKind::Shared, "backup").unwrap();
        l.check().unwrap();
        // As after a suspension: the refresher wrote just now, but had been silent for
        // longer than others wait before calling the lock stale.
        l.longest_gap
            .store(STALE_AFTER.as_secs() as i64, Ordering::SeqCst);
        let e = l.check().unwrap_err().to_string();
        assert!(e.contains("not refreshed"), "{e}");
        // A lock that `unlock` removed is lost.
        let l = Lock::acquire(b.clone(), LockKind::Shared, "backup").unwrap();
        b.delete(&l.name).unwrap();
        assert!(l.check().unwrap_err().to_string().contains("lost"));
    }

    #[test]
    fn shared_and_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let b: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path()));
        let s1 = Lock::acquire(b.clone(), LockKind::Shared, "backup").unwrap();
        let s2 = Lock::acquire(b.clone(), LockKind::Shared, "backup").unwrap();
        let e = Lock::acquire(b.clone(), LockKind::Exclusive, "prune")
            .err()
            .unwrap();
        assert!(e.to_string().contains("`backup`"), "{e}");
        drop((s1, s2));
        let x = Lock::acquire(b.clone(), LockKind::Exclusive, "prune").unwrap();
        assert!(Lock::acquire(b.clone(), LockKind::Shared, "backup").is_err());
        x.check().unwrap();
        drop(x);
        assert!(b.list("locks").unwrap().is_empty());
    }

    #[test]
    fn dead_process_lock_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let b: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let info = LockInfo {
            kind: LockKind::Exclusive,
            host: crate::repo::hostname(),
            pid,
            command: "prune".into(),
            created: now(),
            refreshed: now(),
        };
        b.put("locks/dead", &serde_json::to_vec(&info).unwrap())
            .unwrap();
        assert!(info.stale_reason().is_some());
        Lock::acquire(b.clone(), LockKind::Shared, "backup").unwrap();
        // The same lock from another host that refreshed recently still counts.
        let other = LockInfo {
            host: "elsewhere".into(),
            ..info
        };
        b.put("locks/other", &serde_json::to_vec(&other).unwrap())
            .unwrap();
        let e = Lock::acquire(b.clone(), LockKind::Shared, "backup")
            .err()
            .unwrap();
        assert!(e.to_string().contains("host elsewhere"), "{e}");
    }
}
