//! The restore pipeline: manifest → chunk tables → chunks grouped by pack → parallel fetch,
//! open, verify → positioned writes into a sparse file.
//!
//! Each disk is written to a hidden partial file next to its target and renamed into place
//! only when every chunk was verified, so a failed restore never leaves a file that looks
//! complete. Holes are never written: the file is created at full size and stays sparse.

use crate::crypto::Sealer;
use crate::repo::cache::{BlobLoc, CacheReader};
use crate::repo::pack::{open_blob, pack_name, BlobKind};
use crate::repo::Repository;
use crate::snapshot::{self, ChunkTable, Disk, Snapshot};
use crate::{Error, Id, Result};
use rayon::prelude::*;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Largest single read from a pack; adjacent blobs are fetched together up to this.
const MAX_READ: u64 = 8 << 20;

pub struct RestoreOptions {
    pub target: PathBuf,
    pub disk: Option<String>,
    pub overwrite: bool,
    pub quiet: bool,
}

#[derive(Debug, serde::Serialize)]
pub struct RestoredDisk {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    pub bytes_written: u64,
}

#[derive(Debug, serde::Serialize)]
pub struct RestoreReport {
    pub snapshot: String,
    pub vm: String,
    pub disks: Vec<RestoredDisk>,
    pub duration_secs: f64,
}

pub fn run(repo: &Repository, spec: &str, opts: &RestoreOptions) -> Result<RestoreReport> {
    let started = Instant::now();
    let (id, snap) = snapshot::resolve(repo, spec)?;
    let disks: Vec<&Disk> = match &opts.disk {
        Some(n) => vec![snap.disks.iter().find(|d| &d.name == n).ok_or_else(|| {
            let names: Vec<_> = snap.disks.iter().map(|d| d.name.as_str()).collect();
            Error::Usage(format!(
                "snapshot {} has no disk {n:?}; it has {names:?}",
                id.short()
            ))
        })?],
        None => snap.disks.iter().collect(),
    };
    std::fs::create_dir_all(&opts.target).map_err(|e| {
        Error::io(
            format!("creating target folder {}", opts.target.display()),
            e,
        )
    })?;
    for d in &disks {
        let p = opts.target.join(&d.name);
        if p.exists() && !opts.overwrite {
            return Err(Error::Usage(format!(
                "{} exists; pass --overwrite to replace it, or choose another --target",
                p.display()
            )));
        }
    }
    let cache = repo.index_cache()?;
    let total = disks.iter().map(|d| d.size).sum();
    let bar = crate::progress::bytes_bar(total, "restore", opts.quiet);
    let mut out = Vec::new();
    for d in disks {
        let path = opts.target.join(&d.name);
        let written = restore_disk(repo, &cache.reader()?, &snap, d, &path, &|n| bar.inc(n))
            .map_err(|e| {
                Error::Other(format!(
                    "restore of snapshot {} (VM {}), disk {} failed; nothing was written to {}: {e}",
                    id.short(),
                    snap.vm,
                    d.name,
                    path.display()
                ))
            })?;
        out.push(RestoredDisk {
            name: d.name.clone(),
            path,
            size: d.size,
            bytes_written: written,
        });
    }
    bar.finish_and_clear();
    Ok(RestoreReport {
        snapshot: id.to_hex(),
        vm: snap.vm.clone(),
        disks: out,
        duration_secs: started.elapsed().as_secs_f64(),
    })
}

fn partial_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.cairn-partial"))
}

/// Writes one disk; returns the data bytes written (holes excluded).
fn restore_disk(
    repo: &Repository,
    reader: &CacheReader,
    _snap: &Snapshot,
    disk: &Disk,
    path: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<u64> {
    let tmp = partial_path(path);
    let res = (|| {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        file.set_len(disk.size)
            .map_err(|e| Error::io(format!("sizing {}", tmp.display()), e))?;
        let mut written = 0;
        for (slot, table) in disk.tables.iter().enumerate() {
            let base = slot as u64 * disk.table_span;
            let span_len = disk.table_span.min(disk.size - base);
            if let Some(table) = table {
                let table = load_table(repo, reader, table)?;
                if table.len() != span_len {
                    return Err(Error::corrupt(
                        format!("chunk table {}", slot),
                        format!("covers {} bytes, expected {span_len}", table.len()),
                    ));
                }
                written += write_table(repo, reader, &table, base, &file, &tmp)?;
            }
            progress(span_len);
        }
        file.sync_all()
            .map_err(|e| Error::io(format!("flushing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, path)
            .map_err(|e| Error::io(format!("renaming {} into place", tmp.display()), e))?;
        if let Some(dir) = path.parent() {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(written)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Reads one blob by id, wherever the index says it is.
pub fn read_blob(repo: &Repository, reader: &CacheReader, id: &Id) -> Result<Vec<u8>> {
    let loc = locate(reader, id)?;
    let stored = repo.backend.get_range(
        &pack_name(&loc.pack),
        loc.entry.offset as u64,
        loc.entry.length as usize,
    )?;
    open_blob(
        &repo.keys,
        &pack_sealer(repo, reader, &loc.pack)?,
        &loc.entry,
        &stored,
        &loc.pack,
    )
}

pub fn load_table(repo: &Repository, reader: &CacheReader, id: &Id) -> Result<ChunkTable> {
    ChunkTable::decode(
        &read_blob(repo, reader, id)?,
        &format!("chunk table {}", id.short()),
    )
}

fn locate(reader: &CacheReader, id: &Id) -> Result<BlobLoc> {
    reader.get(id)?.ok_or_else(|| {
        Error::corrupt(
            format!("blob {}", id.short()),
            "it is not in any index file (a pack or index file is missing)",
        )
    })
}

fn pack_sealer(repo: &Repository, reader: &CacheReader, pack: &Id) -> Result<Sealer> {
    let salt = reader
        .pack_salt(pack)?
        .ok_or_else(|| Error::corrupt(pack_name(pack), "no index file records its salt"))?;
    Ok(repo.keys.sealer(&salt))
}

/// A chunk to restore: where it is stored, and every disk offset that holds it.
type Wanted = (BlobLoc, Vec<u64>);

/// Restores the chunks of one table: grouped by pack, read in pack order, in parallel.
fn write_table(
    repo: &Repository,
    reader: &CacheReader,
    table: &ChunkTable,
    base: u64,
    file: &File,
    tmp: &Path,
) -> Result<u64> {
    // (location, disk offsets) per distinct chunk.
    let mut wanted: HashMap<Id, Wanted> = HashMap::new();
    let mut off = base;
    for e in &table.extents {
        if let Some(id) = e.id {
            match wanted.get_mut(&id) {
                Some(w) => w.1.push(off),
                None => {
                    let loc = locate(reader, &id)?;
                    if loc.entry.kind != BlobKind::Data || loc.entry.raw_len != e.len {
                        return Err(Error::corrupt(
                            format!("blob {}", id.short()),
                            "index entry does not match the chunk table",
                        ));
                    }
                    wanted.insert(id, (loc, vec![off]));
                }
            }
        }
        off += e.len as u64;
    }
    let mut by_pack: HashMap<Id, Vec<Wanted>> = HashMap::new();
    for (_, w) in wanted {
        by_pack.entry(w.0.pack).or_default().push(w);
    }
    let mut groups: Vec<(Id, Sealer, Vec<Wanted>)> = Vec::new();
    for (pack, mut blobs) in by_pack {
        blobs.sort_by_key(|b| b.0.entry.offset);
        groups.push((pack, pack_sealer(repo, reader, &pack)?, blobs));
    }
    groups
        .par_iter()
        .map(|(pack, sealer, blobs)| {
            let mut written = 0;
            for run in read_runs(blobs) {
                let first = run[0].0.entry;
                let last = run[run.len() - 1].0.entry;
                let start = first.offset as u64;
                let len = (last.offset as u64 + last.length as u64 - start) as usize;
                let bytes = repo.backend.get_range(&pack_name(pack), start, len)?;
                for (loc, offsets) in run {
                    let s = (loc.entry.offset as u64 - start) as usize;
                    let stored = &bytes[s..s + loc.entry.length as usize];
                    let plain = open_blob(&repo.keys, sealer, &loc.entry, stored, pack)?;
                    for &o in offsets {
                        file.write_all_at(&plain, o)
                            .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
                        written += plain.len() as u64;
                    }
                }
            }
            Ok(written)
        })
        .sum()
}

/// Splits a pack's wanted blobs (sorted by offset) into runs read with one request each.
fn read_runs(blobs: &[Wanted]) -> Vec<&[Wanted]> {
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=blobs.len() {
        let split = i == blobs.len() || {
            let first = blobs[start].0.entry.offset as u64;
            let prev = &blobs[i - 1].0.entry;
            let cur = &blobs[i].0.entry;
            let gap = cur.offset as u64 - (prev.offset as u64 + prev.length as u64);
            gap > 1 << 20 || cur.offset as u64 + cur.length as u64 - first > MAX_READ
        };
        if split {
            runs.push(&blobs[start..i]);
            start = i;
        }
    }
    runs
}
