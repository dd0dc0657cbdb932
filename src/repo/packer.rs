//! Turns a stream of sealed blobs into packs and index files, for backup and for prune's
//! repacking alike.
//!
//! Blobs go straight into a staged object of the backend as they come (on a folder, a
//! temporary file: no pack is held in memory); finished packs are made durable (fsync,
//! rename; on object storage, uploaded) by threads of their own so the caller keeps
//! producing blobs meanwhile. An index file is
//! written only for packs already durable: packs → index is the order that makes a crash at
//! any instant harmless.

use super::envelope::{FileHeader, FileKind};
use super::index::{IndexFile, IndexPack};
use super::pack::{pack_name, PackWriter, SealedBlob};
use super::Repository;
use crate::backend::Staged;
use crate::crypto::Sealer;
use crate::{Error, Result};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

/// Index entries written per index file at most; bounds the memory of a session.
pub const INDEX_FLUSH_ENTRIES: usize = 64 * 1024;

/// An index file that was just written, so callers can update their caches.
pub struct WrittenIndex {
    pub name: String,
    pub index: IndexFile,
}

struct Upload {
    name: String,
    staged: Box<dyn Staged>,
    entry: IndexPack,
}

pub struct Packer<'a> {
    repo: &'a Repository,
    header: FileHeader,
    sealer: Sealer,
    pack: Option<PackWriter<Box<dyn Staged>>>,
    uploads: Option<SyncSender<Upload>>,
    uploaded: Receiver<Result<IndexPack>>,
    uploader: Option<JoinHandle<()>>,
    /// Durable packs not yet named by an index file.
    index: IndexFile,
    pub packs_written: usize,
    pub bytes_stored: u64,
}

impl<'a> Packer<'a> {
    /// A new packing session, with its own salt and so its own sealing key.
    pub fn new(repo: &'a Repository) -> Packer<'a> {
        let header = FileHeader::new(FileKind::Pack, &repo.keys);
        // Object storage gets several uploads in flight (each waits on the network); a
        // folder one. Memory on object storage: that many packs, plus the one being filled.
        let n = repo.backend.parallel_writes().clamp(1, 8);
        let (up_tx, up_rx) = sync_channel::<Upload>(0);
        let up_rx = std::sync::Arc::new(std::sync::Mutex::new(up_rx));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let uploader = std::thread::spawn(move || {
            std::thread::scope(|s| {
                for _ in 0..n {
                    let (up_rx, done_tx) = (up_rx.clone(), done_tx.clone());
                    s.spawn(move || loop {
                        let next = up_rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok(u) = next else { return };
                        let r = u.staged.commit(&u.name).map(|()| u.entry);
                        // Tests: killed with other uploads in flight, no index written.
                        crate::crash_point("pack-uploaded");
                        let failed = r.is_err();
                        if done_tx.send(r).is_err() || failed {
                            return;
                        }
                    });
                }
            });
        });
        Packer {
            repo,
            sealer: header.sealer(&repo.keys),
            header,
            pack: None,
            uploads: Some(up_tx),
            uploaded: done_rx,
            uploader: Some(uploader),
            index: IndexFile::default(),
            packs_written: 0,
            bytes_stored: 0,
        }
    }

    /// The sealer blobs for this session must be sealed with.
    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    pub fn add(&mut self, blob: &SealedBlob) -> Result<Option<WrittenIndex>> {
        self.bytes_stored += blob.bytes.len() as u64;
        let pack_size = self.repo.config.pack_size as usize;
        let pack = match &mut self.pack {
            Some(p) => p,
            None => {
                let staged =
                    crate::backend::stage(&self.repo.backend, "data", pack_size + 64 * 1024)?;
                let w = PackWriter::to(self.header, staged).map_err(|e| self.write_err(e))?;
                self.pack.insert(w)
            }
        };
        if let Err(e) = pack.add(blob) {
            return Err(self.write_err(e));
        }
        if pack.len() < pack_size {
            return Ok(None);
        }
        self.flush_pack()?;
        self.collect(false)?;
        if self.index.blob_count() >= INDEX_FLUSH_ENTRIES {
            return self.write_index();
        }
        Ok(None)
    }

    /// Writes the last pack, waits for every upload, writes the last index file.
    pub fn finish(&mut self) -> Result<Option<WrittenIndex>> {
        self.flush_pack()?;
        self.collect(true)?;
        self.write_index()
    }

    fn flush_pack(&mut self) -> Result<()> {
        let Some(pack) = self.pack.take().filter(|p| !p.is_empty()) else {
            return Ok(());
        };
        let (id, staged, entries) = pack
            .finish(&self.repo.keys)
            .map_err(|e| self.write_err(e))?;
        let upload = Upload {
            name: pack_name(&id),
            staged,
            entry: IndexPack {
                pack: id,
                salt: self.header.salt,
                entries,
            },
        };
        if self
            .uploads
            .as_ref()
            .is_none_or(|u| u.send(upload).is_err())
        {
            // The uploader stopped: its error says why.
            self.collect(true)?;
            return Err(Error::Other("the pack writer stopped unexpectedly".into()));
        }
        self.packs_written += 1;
        Ok(())
    }

    /// Moves durable packs into the pending index; with `all`, waits for every upload.
    fn collect(&mut self, all: bool) -> Result<()> {
        if all {
            self.uploads = None;
            for r in self.uploaded.iter() {
                self.index.packs.push(r?);
            }
        } else {
            while let Ok(r) = self.uploaded.try_recv() {
                self.index.packs.push(r?);
            }
        }
        Ok(())
    }

    fn write_err(&self, e: std::io::Error) -> Error {
        Error::io(
            format!("writing a pack in {}", self.repo.backend.location()),
            e,
        )
    }

    fn write_index(&mut self) -> Result<Option<WrittenIndex>> {
        if self.index.packs.is_empty() {
            return Ok(None);
        }
        let mut index = std::mem::take(&mut self.index);
        index.created = super::now_ns();
        let name = self.repo.write_index(&index)?;
        Ok(Some(WrittenIndex { name, index }))
    }
}

impl Drop for Packer<'_> {
    fn drop(&mut self) {
        self.uploads = None;
        if let Some(t) = self.uploader.take() {
            let _ = t.join();
        }
    }
}
