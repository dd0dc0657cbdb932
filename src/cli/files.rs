//! `ls` and `dump`: browsing a snapshot's files without restoring its disks.

use super::{human, Cli};
use crate::files::list::Row;
use crate::files::Browser;
use crate::fs::volume::Content;
use crate::repo::lock::{Lock, LockKind};
use crate::snapshot::view::Store;
use crate::Result;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

/// Decompressed chunks kept by a browsing command.
const CHUNK_CACHE: u64 = 64 << 20;

/// Opens snapshot `spec` for browsing, holding a shared lock (prune waits for readers).
pub fn open_browser(cli: &Cli, spec: &str, what: &str) -> Result<(Arc<Store>, Browser, Lock)> {
    let repo = Arc::new(cli.open()?);
    let lock = repo.lock(LockKind::Shared, what)?;
    let cache = Arc::new(repo.index_cache()?);
    let (id, snap) = crate::snapshot::resolve(&repo, spec)?;
    let store = Store::new(repo, cache, CHUNK_CACHE);
    let b = Browser::new(&store, id, snap);
    Ok((store, b, lock))
}

#[derive(clap::Args, Debug)]
pub struct LsArgs {
    /// Snapshot id (a unique prefix), VM:latest, or latest.
    snapshot: String,
    /// `/<disk>/<volume>/<path>`; without it, the snapshot's disks and volumes.
    #[arg(default_value = "/")]
    path: std::ffi::OsString,
    /// Long listing: type, mode, owner, size, mtime, name, link target.
    #[arg(short = 'l', long)]
    long: bool,
    /// Everything below the directory.
    #[arg(short = 'R', long)]
    recursive: bool,
    /// Say on stderr how much was read from the repository.
    #[arg(long)]
    stats: bool,
}

/// `drwxr-xr-x` from a type letter and mode bits.
pub fn mode_string(letter: char, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(letter);
    let bits = [
        (0o400, 'r'),
        (0o200, 'w'),
        (0o100, 'x'),
        (0o040, 'r'),
        (0o020, 'w'),
        (0o010, 'x'),
        (0o004, 'r'),
        (0o002, 'w'),
        (0o001, 'x'),
    ];
    for (i, (b, c)) in bits.iter().enumerate() {
        let special = match i {
            2 => mode & 0o4000 != 0,
            5 => mode & 0o2000 != 0,
            8 => mode & 0o1000 != 0,
            _ => false,
        };
        let set = mode & b != 0;
        s.push(match (special, set, i) {
            (true, true, 8) => 't',
            (true, false, 8) => 'T',
            (true, true, _) => 's',
            (true, false, _) => 'S',
            (false, true, _) => *c,
            (false, false, _) => '-',
        });
    }
    s
}

fn letter(kind: &str) -> char {
    match kind {
        "dir" => 'd',
        "symlink" => 'l',
        "chardev" => 'c',
        "blockdev" => 'b',
        "fifo" => 'p',
        "socket" => 's',
        _ => '-',
    }
}

fn print_row(r: &Row, long: bool, recursive: bool) {
    match r.kind {
        "disk" => println!(
            "{}  {}  {}",
            r.path,
            r.role.as_deref().unwrap_or(""),
            human(r.size)
        ),
        "volume" => {
            let content = match &r.content {
                Some(Content::Filesystem(k)) => k.clone(),
                Some(Content::LvmPhysicalVolume(vg)) => format!("LVM physical volume of {vg}"),
                Some(Content::Extended) => "extended partition".into(),
                Some(Content::Refused(why)) => format!("not read: {why}"),
                None => String::new(),
            };
            let label = r
                .label
                .as_ref()
                .map(|l| format!(" {l:?}"))
                .unwrap_or_default();
            println!(
                "  {:<24} {:<22} {:>10}  {content}{label}",
                r.path,
                r.role.as_deref().unwrap_or(""),
                human(r.size)
            );
        }
        _ => {
            let name = if recursive { &r.path } else { &r.name };
            if !long {
                println!("{name}");
                return;
            }
            let target = r
                .target
                .as_ref()
                .map(|t| format!(" -> {t}"))
                .unwrap_or_default();
            let owner = match &r.owner {
                Some(o) => o.clone(),
                None => format!("{:>5} {:>5}", r.uid.unwrap_or(0), r.gid.unwrap_or(0)),
            };
            let mtime = r.mtime.as_deref().unwrap_or("");
            let mtime = mtime.get(..19).unwrap_or(mtime).replace('T', " ");
            println!(
                "{} {owner} {:>12} {mtime} {name}{target}",
                mode_string(letter(r.kind), r.mode.unwrap_or(0)),
                r.size
            );
            for s in &r.streams {
                println!("{:>38} {}:{}", s.size, name, s.name);
            }
        }
    }
}

pub fn ls(cli: &Cli, a: &LsArgs) -> Result<i32> {
    let (store, b, _lock) = open_browser(cli, &a.snapshot, "ls")?;
    let mut rows = Vec::new();
    let warnings = crate::files::list::list(&b, a.path.as_bytes(), a.recursive, &mut |r| {
        if cli.json {
            rows.push(r);
        } else {
            print_row(&r, a.long, a.recursive);
        }
        Ok(())
    })?;
    for w in &warnings {
        eprintln!("cairn: warning: {w}");
    }
    if cli.json {
        cli.print_json(&rows);
    }
    if a.stats {
        print_stats(&store);
    }
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub struct DumpArgs {
    /// Snapshot id (a unique prefix), VM:latest, or latest.
    snapshot: String,
    /// `/<disk>/<volume>/<path of a file>`.
    path: std::ffi::OsString,
    /// Write a directory (or file) as a tar stream instead.
    #[arg(long, value_parser = ["tar"])]
    archive: Option<String>,
    /// Say on stderr how much was read from the repository.
    #[arg(long)]
    stats: bool,
}

/// The `--stats` line: what a browsing command fetched from the repository.
pub fn print_stats(store: &Store) {
    use std::sync::atomic::Ordering::Relaxed;
    eprintln!(
        "fetched {} from the repository in {} reads",
        human(store.fetched.load(Relaxed)),
        store.requests.load(Relaxed)
    );
}

pub fn dump(cli: &Cli, a: &DumpArgs) -> Result<i32> {
    let (store, b, _lock) = open_browser(cli, &a.snapshot, "dump")?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    let n = crate::files::extract::dump(&b, a.path.as_bytes(), a.archive.is_some(), &mut out)?;
    out.flush()
        .map_err(|e| crate::Error::io("writing to stdout", e))?;
    if a.stats {
        eprintln!("{n} bytes written");
        print_stats(&store);
    }
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub struct FindArgs {
    /// Snapshots to search (id prefixes); default: every snapshot (of --vm / --host).
    #[arg(value_name = "SNAPSHOT")]
    snapshots: Vec<String>,
    /// Only this VM's snapshots.
    #[arg(long)]
    vm: Option<String>,
    /// Only snapshots taken by this host.
    #[arg(long)]
    host: Option<String>,
    /// Glob on the file name (`nginx.conf`, `*.dll`).
    #[arg(long)]
    name: Option<String>,
    /// Glob on the whole path, `/<disk>/<volume>/<path>` (`/*/p2/etc/**`).
    #[arg(long)]
    path: Option<String>,
}

pub fn find(cli: &Cli, a: &FindArgs) -> Result<i32> {
    let q = crate::files::catalog::Query::new(a.name.as_deref(), a.path.as_deref())?;
    let repo = Arc::new(cli.open()?);
    let _lock = repo.lock(LockKind::Shared, "find")?;
    let cache = Arc::new(repo.index_cache()?);
    let loaded = crate::snapshot::load_all(&repo)?;
    if let Some(w) = loaded.warning() {
        eprintln!("cairn: warning: {w}");
    }
    let store = Store::new(repo.clone(), cache, CHUNK_CACHE);
    let mut hits = Vec::new();
    let mut searched = 0;
    for (id, snap) in loaded.snapshots {
        let hex = id.to_hex();
        if !a.snapshots.is_empty()
            && !a
                .snapshots
                .iter()
                .any(|p| !p.is_empty() && hex.starts_with(&p.to_ascii_lowercase()))
        {
            continue;
        }
        if a.vm.as_ref().is_some_and(|v| v != &snap.vm)
            || a.host.as_ref().is_some_and(|h| h != &snap.host)
        {
            continue;
        }
        searched += 1;
        let b = Browser::new(&store, id, snap);
        let found = crate::files::catalog::search(&b, &q, &mut |h| {
            if !cli.json {
                let mtime = h.mtime.get(..19).unwrap_or(&h.mtime).replace('T', " ");
                println!(
                    "{}  {}  {}  {:>12}  {mtime}",
                    &h.snapshot[..8],
                    h.time,
                    h.path,
                    h.size
                );
            }
            hits.push(h);
        });
        match found {
            Ok(true) => {}
            Ok(false) => eprintln!(
                "cairn: note: snapshot {} has no file catalog (written without one); its \
                 filesystems were walked instead",
                id.short()
            ),
            Err(e) => eprintln!("cairn: warning: snapshot {}: {e}", id.short()),
        }
    }
    if cli.json {
        cli.print_json(&hits);
    } else {
        let m = if hits.len() == 1 { "match" } else { "matches" };
        println!(
            "{} {m} in {}",
            hits.len(),
            super::plural(searched, "snapshot")
        );
    }
    Ok(0)
}
