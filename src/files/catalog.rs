//! The catalog: every file of every readable volume of a snapshot (path, type, size,
//! mtime), written at backup time so that `find` answers for a hundred snapshots in
//! seconds without walking a hundred filesystems through the repository.
//!
//! Why at backup time: the filesystem metadata is then read from the source disk, which is
//! fast and already in the page cache; the alternative, building it on the first `find`, walks
//! each snapshot's filesystems through the repository (every inode table and directory block
//! fetched, decrypted and decompressed), which is what a catalog avoids. The catalog is
//! stored like a config file: chunked and deduplicated, so a night in which few files
//! changed adds only the chunks around the changed entries (entries are sorted by path).
//! BENCHMARKS.md (F) has the measured cost, size and `find` times.
//!
//! Building it reads guest metadata during a backup, so it must never fail one: a volume
//! that cannot be walked gets an error in its catalog, and a catalog that cannot be built
//! at all is left out with a warning (`find` then walks that snapshot's filesystems).

use super::Browser;
use crate::blockdev::BlockRead;
use crate::fs::volume::{self, Content};
use crate::fs::{FileType, Filesystem, Ino};
use crate::{lock, Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub const CATALOG_VERSION: u32 = 1;
/// The format recorded for the catalog item in a manifest.
pub const CATALOG_FORMAT: &str = "catalog";
/// Entries per volume at most; a bigger tree (or a loop in damaged metadata) is cut there.
const MAX_ENTRIES: usize = 20_000_000;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Catalog {
    pub version: u32,
    pub volumes: Vec<VolumeCatalog>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct VolumeCatalog {
    /// `/<disk>/<volume>`.
    pub path: String,
    pub fs: String,
    /// Sorted by path.
    pub entries: Vec<Entry>,
    /// Why the walk stopped early, if it did.
    pub error: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Entry {
    /// Path inside the volume, without a leading '/', as the filesystem spells it (bytes).
    pub path: Vec<u8>,
    /// [`FileType`] as a letter: `-`, `d`, `l`, `c`, `b`, `p`, `s`.
    pub kind: u8,
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
}

impl Catalog {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("catalog serializes")
    }

    pub fn decode(b: &[u8], name: &str) -> Result<Catalog> {
        let bad =
            |e: postcard::Error| Error::corrupt(name, format!("catalog does not decode: {e}"));
        let (version, _) = postcard::take_from_bytes::<u32>(b).map_err(bad)?;
        if version != CATALOG_VERSION {
            return Err(Error::corrupt(
                name,
                format!("catalog version {version}; this cairn reads version {CATALOG_VERSION}"),
            ));
        }
        postcard::from_bytes(b).map_err(bad)
    }
}

/// Builds the catalog of disks (`name`, content), the way [`super::Browser`] names them.
pub fn build(disks: &[(String, Arc<dyn BlockRead>)]) -> Result<Catalog> {
    let devs: Vec<crate::fs::Dev> = disks.iter().map(|d| d.1.clone()).collect();
    let mut out = Catalog {
        version: CATALOG_VERSION,
        volumes: Vec::new(),
    };
    for v in volume::discover(&devs)? {
        let Content::Filesystem(kind) = &v.content else {
            continue;
        };
        let disk = &disks[v.disk].0;
        let mut vc = VolumeCatalog {
            path: format!("/{disk}/{}", v.path),
            fs: kind.clone(),
            entries: Vec::new(),
            error: None,
        };
        match volume::open(&v, disk) {
            Ok(fs) => {
                if let Err(e) = walk(fs.as_ref(), &mut vc.entries) {
                    vc.error = Some(e.to_string());
                }
            }
            Err(e) => vc.error = Some(e.to_string()),
        }
        vc.entries.sort_by(|a, b| a.path.cmp(&b.path));
        out.volumes.push(vc);
    }
    Ok(out)
}

/// Builds the catalog of a snapshot through its disk views (for snapshots written
/// without one).
pub fn build_from(b: &Browser) -> Result<Catalog> {
    let disks: Vec<(String, Arc<dyn BlockRead>)> = b
        .disks
        .iter()
        .enumerate()
        .map(|(i, d)| (b.disk_name(i), d.clone() as Arc<dyn BlockRead>))
        .collect();
    build(&disks)
}

/// What the walkers of one volume share.
struct Walk<'a> {
    fs: &'a dyn Filesystem,
    seen: Mutex<HashSet<Ino>>,
    out: Mutex<Vec<Entry>>,
    count: AtomicUsize,
    error: Mutex<Option<Error>>,
}

/// Walks the tree with a task per directory on rayon's pool. Each directory costs a few
/// reads that, through a change map, are mostly chunks of the parent to fetch and open; on a
/// night of few changes that walk was the longest part of the backup, one core busy while
/// the other waited (BENCHMARKS.md G6). The entries are sorted afterwards, so the order in
/// which directories finish does not show.
pub(crate) fn walk(fs: &dyn Filesystem, out: &mut Vec<Entry>) -> Result<()> {
    let w = Walk {
        fs,
        seen: Mutex::new(HashSet::new()),
        out: Mutex::new(Vec::new()),
        count: AtomicUsize::new(0),
        error: Mutex::new(None),
    };
    rayon::scope(|s| visit(s, &w, fs.root(), Vec::new(), 0));
    out.append(&mut lock(&w.out));
    let error = lock(&w.error).take();
    error.map_or(Ok(()), Err)
}

fn visit<'s>(s: &rayon::Scope<'s>, w: &'s Walk<'s>, dir: Ino, prefix: Vec<u8>, depth: usize) {
    let failed = || lock(&w.error).is_some();
    if depth > 256 || failed() || !lock(&w.seen).insert(dir) {
        return;
    }
    let fail = |e: Error| {
        lock(&w.error).get_or_insert(e);
    };
    let entries = match w.fs.read_dir(dir) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    if w.count.fetch_add(entries.len(), Ordering::Relaxed) + entries.len() > MAX_ENTRIES {
        return fail(Error::Guest(format!(
            "more than {MAX_ENTRIES} entries; the catalog stops there"
        )));
    }
    let mut mine = Vec::with_capacity(entries.len());
    for e in entries {
        let mut path = prefix.clone();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(&e.name);
        let Ok(m) = w.fs.stat(e.ino) else { continue };
        if m.kind == FileType::Dir {
            let (ino, path) = (e.ino, path.clone());
            s.spawn(move |s| visit(s, w, ino, path, depth + 1));
        }
        mine.push(Entry {
            path,
            kind: m.kind.letter() as u8,
            size: m.size,
            mtime_sec: m.mtime.sec,
            mtime_nsec: m.mtime.nsec,
        });
    }
    lock(&w.out).append(&mut mine);
}

/// Builds a catalog without letting a reader's failure, of any kind, fail the caller.
pub fn build_guarded(
    disks: &[(String, Arc<dyn BlockRead>)],
) -> std::result::Result<Catalog, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| build(disks))) {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("a filesystem reader failed unexpectedly".into()),
    }
}

/// One match of `find`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Hit {
    pub snapshot: String,
    pub vm: String,
    pub time: String,
    pub path: String,
    pub kind: String,
    pub size: u64,
    /// RFC 3339, UTC.
    pub mtime: String,
}

/// What `find` looks for: globs on the file name and on the full snapshot path
/// (`/<disk>/<volume>/<path>`; `*` stays within one component, `**` spans several).
pub struct Query {
    pub name: Option<globset::GlobMatcher>,
    pub path: Option<globset::GlobMatcher>,
}

impl Query {
    pub fn new(name: Option<&str>, path: Option<&str>) -> Result<Query> {
        let glob = |g: &str| {
            globset::GlobBuilder::new(g)
                .literal_separator(true)
                .build()
                .map(|g| g.compile_matcher())
                .map_err(|e| Error::Usage(format!("{g:?} is not a glob: {e}")))
        };
        if name.is_none() && path.is_none() {
            return Err(Error::Usage(
                "give --name GLOB, --path GLOB, or both".into(),
            ));
        }
        Ok(Query {
            name: name.map(glob).transpose()?,
            path: path.map(glob).transpose()?,
        })
    }

    fn matches(&self, full: &str) -> bool {
        let name = full.rsplit('/').next().unwrap_or("");
        self.name.as_ref().is_none_or(|g| g.is_match(name))
            && self.path.as_ref().is_none_or(|g| g.is_match(full))
    }
}

/// The catalog of snapshot `b`: the one written with it, or (for snapshots written without
/// one) built now by walking its filesystems through the repository. The second value says
/// which.
pub fn load(b: &Browser) -> Result<(Catalog, bool)> {
    let Some(item) = &b.snap.catalog else {
        return Ok((build_from(b)?, false));
    };
    let view = crate::snapshot::view::DiskView::new(b.store.clone(), item.clone());
    let mut bytes = vec![0u8; item.size.min(1 << 31) as usize];
    view.read_at(0, &mut bytes)?;
    let c = Catalog::decode(&bytes, &format!("catalog of snapshot {}", b.id.short()))?;
    Ok((c, true))
}

/// Searches snapshot `b`'s catalog; matches go to `out`.
pub fn search(b: &Browser, q: &Query, out: &mut dyn FnMut(Hit)) -> Result<bool> {
    let (cat, stored) = load(b)?;
    for v in &cat.volumes {
        for e in &v.entries {
            let full = format!("{}/{}", v.path, String::from_utf8_lossy(&e.path));
            if !q.matches(&full) {
                continue;
            }
            out(Hit {
                snapshot: b.id.to_hex(),
                vm: b.snap.vm.clone(),
                time: b.snap.time.clone(),
                path: full,
                kind: super::list::Row::kind_of(kind_of_letter(e.kind)).to_string(),
                size: e.size,
                mtime: super::list::time_string(crate::fs::Time {
                    sec: e.mtime_sec,
                    nsec: e.mtime_nsec,
                }),
            });
        }
    }
    Ok(stored)
}

fn kind_of_letter(l: u8) -> FileType {
    match l {
        b'd' => FileType::Dir,
        b'l' => FileType::Symlink,
        b'c' => FileType::CharDev,
        b'b' => FileType::BlockDev,
        b'p' => FileType::Fifo,
        b's' => FileType::Socket,
        _ => FileType::File,
    }
}
