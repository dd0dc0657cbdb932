//! The restore pipeline: manifest → chunk tables → chunks grouped by pack → parallel fetch,
//! open, verify → positioned writes into the output disk.
//!
//! A snapshot comes back as the folder it was taken from: config files byte for byte, and
//! each disk in the form its hypervisor opens (qcow2 as qcow2, VMDK as a monolithicSparse
//! VMDK, raw as raw; a delta chain flattened into one disk under the name the config uses),
//! or all raw with `--format raw`. Each file is written to a hidden partial file next to
//! its target and renamed into place only when every chunk was verified, so a failed
//! restore never leaves a file that looks complete. Holes are never written.
//!
//! One disk can also go straight to a block device or file (`--disk NAME --target
//! /dev/sdX`): its raw content, with holes written as zeros on a device, since a device
//! holds whatever was there before.

use crate::crypto::Sealer;
use crate::image::write::{DiskWriter, OutFormat};
use crate::repo::blobs;
use crate::repo::cache::{BlobLoc, CacheReader};
use crate::repo::pack::{blob_in, open_blob, pack_name, read_span, BlobKind};
use crate::repo::Repository;
use crate::snapshot::{self, ChunkTable, Disk, Name};
use crate::{Error, Id, Result};
use rayon::prelude::*;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::IsTerminal;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Largest single read from a pack; adjacent blobs are fetched together up to this.
const MAX_READ: u64 = 8 << 20;

/// What to do when a file to restore already exists (the choices of `vcbRestore -l`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Existing {
    /// Ask for each file (only on a terminal; otherwise the same as abort).
    Prompt,
    Overwrite,
    /// Leave the existing file and restore the others.
    Keep,
    /// Restore nothing.
    Abort,
}

pub struct RestoreOptions {
    /// A folder; or, with `disk`, a block device or file to write that disk's raw content to.
    pub target: PathBuf,
    pub disk: Option<String>,
    pub existing: Existing,
    /// Write every disk as a raw image, whatever its source format.
    pub raw: bool,
    /// Restore `.vmx` files byte for byte, even where they name disks by paths outside
    /// the target (by default those paths are rewritten to the restored disks).
    pub keep_config: bool,
    pub quiet: bool,
}

#[derive(Debug, serde::Serialize)]
pub struct RestoredDisk {
    pub name: Name,
    #[serde(serialize_with = "crate::report::path")]
    pub path: PathBuf,
    /// "raw", "qcow2", "vmdk", or "file" for config files.
    pub format: &'static str,
    pub size: u64,
    pub bytes_written: u64,
}

#[derive(Debug, serde::Serialize)]
pub struct RestoreReport {
    pub snapshot: String,
    pub vm: String,
    pub disks: Vec<RestoredDisk>,
    pub files: Vec<RestoredDisk>,
    /// Existing files left alone (`--existing keep`, or "no" at the prompt).
    #[serde(serialize_with = "crate::report::paths")]
    pub kept: Vec<PathBuf>,
    /// Disk paths changed in restored `.vmx` files so they open the restored disks.
    pub config_rewritten: Vec<ConfigChange>,
    pub warnings: Vec<String>,
    pub duration_secs: f64,
}

/// One `fileName` entry of a restored `.vmx` pointed at a restored disk.
#[derive(Debug, serde::Serialize)]
pub struct ConfigChange {
    #[serde(serialize_with = "crate::report::path")]
    pub file: PathBuf,
    #[serde(flatten)]
    pub change: crate::vm::Rewritten,
}

/// One file to write: a disk or config file of the snapshot, where and how.
struct Output<'a> {
    item: &'a Disk,
    path: PathBuf,
    format: OutFormat,
    device: bool,
}

pub fn run(repo: &Repository, spec: &str, opts: &RestoreOptions) -> Result<RestoreReport> {
    let started = Instant::now();
    let (id, snap) = snapshot::resolve(repo, spec)?;
    // Decoding checked every name already; a restore checks again right before it writes,
    // since a name is the one thing of a manifest that becomes a path.
    if let Some(p) = snap.problem() {
        return Err(Error::corrupt(format!("snapshot {}", id.short()), p));
    }
    let mut outputs = plan(&snap, id, opts)?;
    let kept = resolve_existing(&mut outputs, opts.existing)?;
    if let Some(dir) = outputs.first().and_then(|o| o.path.parent()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating target folder {}", dir.display()), e))?;
    }
    // A shared lock: prune waits until the restore has read what it needs.
    let _lock = repo.lock(crate::repo::lock::LockKind::Shared, "restore")?;
    let cache = repo.index_cache()?;
    let total = outputs.iter().map(|o| o.item.size).sum();
    let bar = crate::progress::bytes_bar(total, "restore", opts.quiet);
    let (mut disks, mut files) = (Vec::new(), Vec::new());
    let mut warnings = Vec::new();
    for o in &outputs {
        let lost: u64 = o.item.lost.iter().map(|l| l.1).sum();
        if lost > 0 {
            warnings.push(format!(
                "{}: {} of it were lost to repository damage and `cairn repair snapshots` \
                 replaced them with zeros",
                o.item.name,
                crate::cli::human(lost)
            ));
        }
        let written = restore_item(repo, &cache.reader()?, o, &|n| bar.inc(n)).map_err(|e| {
            Error::Other(format!(
                "restore of snapshot {} (VM {}), {} failed; nothing was written to {}: {e}",
                id.short(),
                snap.vm,
                o.item.name,
                o.path.display()
            ))
        })?;
        let done = RestoredDisk {
            name: o.item.name.clone(),
            path: o.path.clone(),
            format: if o.item.format == crate::vm::FILE_FORMAT {
                crate::vm::FILE_FORMAT
            } else {
                o.format.name()
            },
            size: o.item.size,
            bytes_written: written,
        };
        if o.item.format == crate::vm::FILE_FORMAT {
            files.push(done);
        } else {
            disks.push(done);
        }
    }
    bar.finish_and_clear();
    let config_rewritten = if opts.keep_config || opts.disk.is_some() {
        Vec::new()
    } else {
        point_configs_at_restored_disks(&snap, &outputs)?
    };
    Ok(RestoreReport {
        snapshot: id.to_hex(),
        vm: snap.vm.clone(),
        disks,
        files,
        kept,
        config_rewritten,
        warnings,
        duration_secs: started.elapsed().as_secs_f64(),
    })
}

/// Rewrites the disk paths of restored `.vmx` files that name disks by another path than
/// the restored file (a disk on another datastore, `../shared/data.vmdk`, an absolute path,
/// a disk stored under a new name): a VM registered from the restored folder must open the
/// restored disks, never the originals.
fn point_configs_at_restored_disks(
    snap: &snapshot::Snapshot,
    outputs: &[Output],
) -> Result<Vec<ConfigChange>> {
    let map: Vec<(Name, Name)> = outputs
        .iter()
        .filter_map(|o| {
            let from = o.item.config_ref.clone()?;
            let to = Name::from_os(o.path.file_name()?);
            Some((from, to))
        })
        .collect();
    let mut out = Vec::new();
    if map.is_empty() {
        return Ok(out);
    }
    for o in outputs.iter().filter(|o| {
        o.item.format == crate::vm::FILE_FORMAT
            && o.item.name.lossy().to_ascii_lowercase().ends_with(".vmx")
            && snap.files.contains(o.item)
    }) {
        let text = std::fs::read(&o.path)
            .map_err(|e| Error::io(format!("reading {}", o.path.display()), e))?;
        let (new, changes) = crate::vm::rewrite_vmx(&text, &map);
        if changes.is_empty() {
            continue;
        }
        let (dir, tmp) = partial_path(&o.path);
        let res = (|| {
            std::fs::create_dir(&dir)?;
            std::fs::write(&tmp, &new)?;
            File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &o.path)
        })();
        let _ = std::fs::remove_dir_all(&dir);
        res.map_err(|e| Error::io(format!("rewriting {}", o.path.display()), e))?;
        out.extend(changes.into_iter().map(|change| ConfigChange {
            file: o.path.clone(),
            change,
        }));
    }
    Ok(out)
}

/// Where each disk and file goes, in which format.
fn plan<'a>(
    snap: &'a snapshot::Snapshot,
    id: Id,
    opts: &RestoreOptions,
) -> Result<Vec<Output<'a>>> {
    if let Some(n) = &opts.disk {
        let item = snap
            .disks
            .iter()
            .find(|d| d.name == *n.as_str())
            .ok_or_else(|| {
                let names: Vec<String> = snap.disks.iter().map(|d| d.name.to_string()).collect();
                Error::Usage(format!(
                    "snapshot {} has no disk {n:?}; it has {names:?}",
                    id.short()
                ))
            })?;
        // An existing folder (or a path ending in '/') receives the disk under its name;
        // anything else (a block device, a file, a new name) receives its raw content.
        use std::os::unix::ffi::OsStrExt;
        let folder = opts.target.is_dir() || opts.target.as_os_str().as_bytes().ends_with(b"/");
        if !folder {
            let device =
                std::fs::metadata(&opts.target).is_ok_and(|m| m.file_type().is_block_device());
            return Ok(vec![Output {
                item,
                path: opts.target.clone(),
                format: OutFormat::Raw,
                device,
            }]);
        }
        return Ok(vec![disk_output(item, &opts.target, opts.raw)]);
    }
    let mut out: Vec<Output> = snap
        .disks
        .iter()
        .map(|d| disk_output(d, &opts.target, opts.raw))
        .collect();
    out.extend(snap.files.iter().map(|f| Output {
        item: f,
        path: opts.target.join(f.name.as_os()),
        format: OutFormat::Raw,
        device: false,
    }));
    Ok(out)
}

/// A disk in its source's form under its own name, or raw (renamed `<stem>.raw` when the
/// name says another format).
fn disk_output<'a>(d: &'a Disk, dir: &Path, raw: bool) -> Output<'a> {
    let native = OutFormat::for_source(&d.format);
    let format = if raw { OutFormat::Raw } else { native };
    let name = if format == OutFormat::Raw && d.format != "raw" {
        let stem = Path::new(d.name.as_os())
            .file_stem()
            .unwrap_or(d.name.as_os())
            .to_os_string();
        let mut n = stem;
        n.push(".raw");
        n
    } else {
        d.name.as_os().to_os_string()
    };
    Output {
        item: d,
        path: dir.join(name),
        format,
        device: false,
    }
}

/// Applies `--existing` to targets that exist; returns the ones kept. Asks on a terminal
/// for `prompt`; without one, refuses as `abort` does, so no cron job overwrites silently.
fn resolve_existing(outputs: &mut Vec<Output>, mode: Existing) -> Result<Vec<PathBuf>> {
    let interactive = interactive();
    let mut mode = mode;
    let mut kept = Vec::new();
    let mut keep = Vec::new();
    for o in outputs.iter() {
        let exists = o.device || o.path.exists();
        let stay = match (exists, mode) {
            (false, _) | (true, Existing::Overwrite) => true,
            (true, Existing::Keep) => false,
            (true, Existing::Abort) => return Err(exists_error(&o.path, "")),
            (true, Existing::Prompt) if !interactive => {
                return Err(exists_error(&o.path, " (no terminal to ask on)"))
            }
            (true, Existing::Prompt) => match ask(&o.path)? {
                Answer::Yes => true,
                Answer::No => false,
                Answer::All => {
                    mode = Existing::Overwrite;
                    true
                }
                Answer::Quit => {
                    return Err(Error::Usage(
                        "restore cancelled; nothing was written".into(),
                    ))
                }
            },
        };
        if !stay {
            kept.push(o.path.clone());
        }
        keep.push(stay);
    }
    let mut flags = keep.into_iter();
    outputs.retain(|_| flags.next().unwrap_or(true));
    Ok(kept)
}

pub(crate) fn exists_error(path: &Path, why: &str) -> Error {
    Error::Usage(format!(
        "{} exists{why}; nothing was restored. Pass --existing overwrite to replace it, \
         --existing keep to leave it and restore the rest, or choose another --target",
        path.display()
    ))
}

pub(crate) enum Answer {
    Yes,
    No,
    All,
    Quit,
}

/// True if a prompt can be answered: stdin and stderr are terminals.
pub(crate) fn interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

pub(crate) fn ask(path: &Path) -> Result<Answer> {
    loop {
        eprint!(
            "{} exists. Overwrite? [y]es, [n]o (keep it), [a]ll, [q]uit: ",
            path.display()
        );
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| Error::io("reading the answer", e))?;
        match line.trim().to_ascii_lowercase().as_str() {
            "y" | "yes" => return Ok(Answer::Yes),
            "n" | "no" => return Ok(Answer::No),
            "a" | "all" => return Ok(Answer::All),
            "q" | "quit" | "" => return Ok(Answer::Quit),
            _ => continue,
        }
    }
}

/// A hidden folder next to `path` holding the file being written under its final name
/// (a VMDK names its own file inside), renamed into place when complete. The folder's
/// name has a fixed length, so a name of up to 255 bytes still fits inside it.
fn partial_path(path: &Path) -> (PathBuf, PathBuf) {
    let name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let hidden = format!(
        ".cairn-partial-{}",
        hex::encode(crate::crypto::random_bytes::<6>())
    );
    let dir = path.with_file_name(hidden);
    let file = dir.join(&name);
    (dir, file)
}

/// Writes one output; returns the data bytes written (holes excluded).
fn restore_item(
    repo: &Repository,
    reader: &CacheReader,
    out: &Output,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<u64> {
    if out.device {
        let dev = Device::open(&out.path, out.item.size)?;
        let written = write_disk(repo, reader, out.item, &dev, progress)?;
        dev.file
            .sync_all()
            .map_err(|e| Error::io(format!("flushing {}", out.path.display()), e))?;
        return Ok(written);
    }
    let (tmp_dir, tmp) = partial_path(&out.path);
    let res = (|| {
        std::fs::create_dir(&tmp_dir)
            .map_err(|e| Error::io(format!("creating {}", tmp_dir.display()), e))?;
        let w = crate::image::write::create(out.format, &tmp, out.item.size)?;
        let written = write_disk(repo, reader, out.item, w.as_ref(), progress)?;
        w.finish()?;
        std::fs::rename(&tmp, &out.path)
            .map_err(|e| Error::io(format!("renaming {} into place", tmp.display()), e))?;
        if let Some(dir) = out.path.parent() {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(written)
    })();
    let _ = std::fs::remove_dir_all(&tmp_dir);
    res
}

/// Writes every chunk of a disk through `w`; holes go to `w.zero` (a no-op but on devices).
fn write_disk<S: Sink + ?Sized>(
    repo: &Repository,
    reader: &CacheReader,
    disk: &Disk,
    w: &S,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<u64> {
    let mut written = 0;
    for (slot, table) in disk.tables.iter().enumerate() {
        let base = slot as u64 * disk.table_span;
        let span_len = disk.table_span.min(disk.size - base);
        match table {
            Some(table) => {
                let table = snapshot::load_table(repo, reader, table)?;
                if table.len() != span_len {
                    return Err(Error::corrupt(
                        format!("chunk table {}", slot),
                        format!("covers {} bytes, expected {span_len}", table.len()),
                    ));
                }
                let mut off = base;
                for e in &table.extents {
                    if e.id.is_none() {
                        w.zero(off, e.len as u64)?;
                    }
                    off += e.len as u64;
                }
                written += write_table(repo, reader, &table, base, w)?;
            }
            None => w.zero(base, span_len)?,
        }
        progress(span_len);
    }
    Ok(written)
}

/// Where restored bytes go: an image writer, or a block device.
trait Sink: Sync {
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()>;
    /// Makes `len` bytes at `offset` read as zeros (they are a hole in the snapshot).
    fn zero(&self, offset: u64, len: u64) -> Result<()>;
}

impl<T: DiskWriter + ?Sized> Sink for T {
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        DiskWriter::write_at(self, offset, data)
    }

    /// A new image file reads as zeros wherever nothing was written.
    fn zero(&self, _: u64, _: u64) -> Result<()> {
        Ok(())
    }
}

/// A block device (or existing file) receiving one disk's raw content in place.
struct Device {
    file: File,
    path: PathBuf,
}

impl Device {
    fn open(path: &Path, size: u64) -> Result<Device> {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| Error::io(format!("opening {} for writing", path.display()), e))?;
        let have =
            device_size(&file).map_err(|e| Error::io(format!("sizing {}", path.display()), e))?;
        if have < size {
            return Err(Error::Usage(format!(
                "{} holds {have} bytes, but the disk is {size} bytes; choose a larger device",
                path.display()
            )));
        }
        Ok(Device {
            file,
            path: path.to_path_buf(),
        })
    }
}

fn device_size(f: &File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = f;
    f.seek(SeekFrom::End(0))
}

impl Sink for Device {
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.file
            .write_all_at(data, offset)
            .map_err(|e| Error::io(format!("writing {}", self.path.display()), e))
    }

    /// The device still holds its old content; holes must be written as zeros.
    fn zero(&self, offset: u64, len: u64) -> Result<()> {
        static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(ZEROS.len() as u64) as usize;
            self.write_at(offset + done, &ZEROS[..n])?;
            done += n as u64;
        }
        Ok(())
    }
}

/// A chunk to restore: where it is stored, and every disk offset that holds it.
type Wanted = (BlobLoc, Vec<u64>);

/// Restores the chunks of one table: grouped by pack, read in pack order, in parallel.
fn write_table<S: Sink + ?Sized>(
    repo: &Repository,
    reader: &CacheReader,
    table: &ChunkTable,
    base: u64,
    w: &S,
) -> Result<u64> {
    // (location, disk offsets) per distinct chunk.
    let mut wanted: HashMap<Id, Wanted> = HashMap::new();
    let mut off = base;
    for e in &table.extents {
        if let Some(id) = e.id {
            match wanted.get_mut(&id) {
                Some(w) => w.1.push(off),
                None => {
                    let loc = blobs::locate(reader, &id)?;
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
        groups.push((pack, blobs::pack_sealer(repo, reader, &pack)?, blobs));
    }
    // One task per read (at most MAX_READ bytes), not per pack: a table's few packs hold
    // very different amounts of it, and per-pack tasks left a core idle at the tail.
    let mut runs: Vec<(&Id, &Sealer, &[Wanted])> = groups
        .iter()
        .flat_map(|(pack, sealer, blobs)| {
            read_runs(blobs).into_iter().map(move |r| (pack, sealer, r))
        })
        .collect();
    // In disk order where the layout allows: the newest snapshot, kept contiguous at
    // backup time, then reads its packs front to back.
    runs.sort_by_key(|r| r.2.iter().flat_map(|w| w.1.first()).min().copied());
    runs.par_iter()
        .map(|&(pack, sealer, run)| {
            let mut written = 0;
            let (start, len) = read_span(run.iter().map(|w| &w.0.entry));
            let bytes = repo.backend.get_range(&pack_name(pack), start, len)?;
            for (loc, offsets) in run {
                let stored = blob_in(&bytes, start, &loc.entry, pack)?;
                let plain = open_blob(&repo.keys, sealer, &loc.entry, stored, pack)?;
                for &o in offsets {
                    w.write_at(o, &plain)?;
                    written += plain.len() as u64;
                }
            }
            Ok(written)
        })
        .sum()
}

/// Splits a pack's wanted blobs (sorted by offset) into runs read with one request each.
fn read_runs(blobs: &[Wanted]) -> Vec<&[Wanted]> {
    split_runs(blobs, |w| &w.0.entry)
}

/// What restoring the blobs `locs` (one table's chunks) reads: (requests, bytes), grouped
/// and coalesced exactly as a restore does. `check` reports it as fragmentation.
pub fn read_cost(mut locs: Vec<BlobLoc>) -> (u64, u64) {
    locs.sort_by_key(|l| (l.pack, l.entry.offset));
    locs.dedup_by_key(|l| (l.pack, l.entry.offset));
    let (mut reads, mut bytes) = (0, 0);
    for pack in locs.chunk_by(|a, b| a.pack == b.pack) {
        for run in split_runs(pack, |l| &l.entry) {
            let (first, last) = (&run[0].entry, &run[run.len() - 1].entry);
            reads += 1;
            bytes += last.offset as u64 + last.length as u64 - first.offset as u64;
        }
    }
    (reads, bytes)
}

fn split_runs<T>(blobs: &[T], entry: impl Fn(&T) -> &crate::repo::pack::PackEntry) -> Vec<&[T]> {
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=blobs.len() {
        let split = i == blobs.len() || {
            let first = entry(&blobs[start]).offset as u64;
            let prev = entry(&blobs[i - 1]);
            let cur = entry(&blobs[i]);
            // Saturating: entries of a damaged index may overlap.
            let gap = (cur.offset as u64).saturating_sub(prev.offset as u64 + prev.length as u64);
            gap > 1 << 20 || cur.offset as u64 + cur.length as u64 - first > MAX_READ
        };
        if split {
            runs.push(&blobs[start..i]);
            start = i;
        }
    }
    runs
}
