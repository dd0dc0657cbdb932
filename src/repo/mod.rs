//! The repository as a blob store: config and keys, packs, index files, snapshots' files,
//! locks, and the local index cache.
//!
//! ```text
//! config              JSON: format version, cipher, chunker, MAC
//! keys/<id>           JSON: the master key wrapped under a password (argon2id + AES-256-GCM)
//! data/<ab>/<id>      packs, named by the BLAKE3 of their bytes
//! index/<id>          index files
//! snapshots/<id>      snapshot manifests
//! locks/<random>      lock files
//! ```

pub mod blobs;
pub mod cache;
pub mod config;
pub mod envelope;
pub mod files;
pub mod index;
pub mod lock;
pub mod pack;
pub mod packer;
mod sorted_runs;

#[cfg(test)]
mod fuzz;

use crate::backend::{Backend, Location};
use crate::crypto::{random_bytes, KdfParams, Keys};
use crate::error::{Error, Result};
use crate::Id;
use cache::IndexCache;
use config::{ChunkerParams, Config, KeyFile, CIPHER_NAME_AES, CIPHER_NAME_NONE, REPO_VERSION};
use envelope::FileKind;
use index::IndexFile;
use lock::{Lock, LockKind};
use std::path::PathBuf;
use std::sync::Arc;

/// Nanoseconds since the epoch, never 0.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        .max(1)
}

pub fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// Options fixed when a repository is created.
#[derive(Clone, Debug)]
pub struct InitOptions {
    pub chunker: ChunkerParams,
    pub table_span: u64,
    pub pack_size: u32,
    pub zstd_level: i32,
    pub kdf: KdfParams,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            // 32 KiB average: the chunk-size study in BENCHMARKS.md (B) found it stores
            // 20–25 % less per daily change than 64 KiB at the same speed, for twice the
            // index entries.
            chunker: ChunkerParams::fastcdc(32 << 10),
            table_span: 1 << 30,
            pack_size: 32 << 20,
            zstd_level: 3,
            kdf: KdfParams::DEFAULT,
        }
    }
}

pub struct Repository {
    pub backend: Arc<dyn Backend>,
    pub config: Config,
    pub keys: Keys,
    /// Where it is, for messages: a folder or an `s3:` URL.
    pub location: String,
    cache_root: PathBuf,
    /// How long to wait for a conflicting lock before failing (`--retry-lock`).
    pub lock_wait: std::time::Duration,
}

/// `$CAIRN_CACHE_DIR`, else `$XDG_CACHE_HOME/cairn`, else `~/.cache/cairn`.
pub fn default_cache_root() -> PathBuf {
    if let Some(d) = std::env::var_os("CAIRN_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("cairn");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("cairn")
}

impl Repository {
    /// Creates a repository at `path`; `password` None means unencrypted.
    pub fn init(
        path: impl AsRef<std::ffi::OsStr>,
        password: Option<&str>,
        opts: &InitOptions,
    ) -> Result<Repository> {
        Self::init_at(&Location::parse(path.as_ref(), &[])?, password, opts)
    }

    /// Creates a repository at `loc`; `password` None means unencrypted.
    pub fn init_at(
        loc: &Location,
        password: Option<&str>,
        opts: &InitOptions,
    ) -> Result<Repository> {
        opts.chunker.validate()?;
        if !opts.table_span.is_power_of_two() || opts.table_span < opts.chunker.segment_size as u64
        {
            return Err(Error::Usage(
                "table span must be a power of two ≥ the segment size".into(),
            ));
        }
        let backend = loc.open()?;
        if backend.size(files::CONFIG)?.is_some() {
            return Err(Error::Usage(format!(
                "{} already holds a cairn repository; refusing to overwrite it",
                loc.display()
            )));
        }
        let (keys, cipher) = match password {
            Some(pw) => {
                let master: [u8; 64] = random_bytes();
                let kf = KeyFile::new(&master, pw, opts.kdf)?;
                let body = serde_json::to_vec_pretty(&kf).expect("key file serializes");
                backend.put(&files::key(&Id::of_file(&body)), &body)?;
                (Keys::from_master(master), CIPHER_NAME_AES)
            }
            None => (Keys::unencrypted(), CIPHER_NAME_NONE),
        };
        let mut config = Config {
            version: REPO_VERSION,
            id: hex::encode(random_bytes::<16>()),
            cipher: cipher.into(),
            chunker: opts.chunker,
            table_span: opts.table_span,
            pack_size: opts.pack_size,
            zstd_level: opts.zstd_level,
            created: chrono::Utc::now().to_rfc3339(),
            mac: None,
        };
        config.seal(&keys);
        // The config goes last: a folder without one is not (yet) a repository.
        backend.put(
            files::CONFIG,
            &serde_json::to_vec_pretty(&config).expect("config serializes"),
        )?;
        Ok(Repository {
            backend,
            config,
            keys,
            location: loc.display(),
            cache_root: default_cache_root(),
            lock_wait: std::time::Duration::ZERO,
        })
    }

    /// Opens the repository at `path`, asking `password` only if it is encrypted.
    pub fn open(
        path: impl AsRef<std::ffi::OsStr>,
        password: &dyn Fn() -> Result<String>,
    ) -> Result<Repository> {
        Self::open_at(&Location::parse(path.as_ref(), &[])?, password)
    }

    /// Opens the repository at `loc`, asking `password` only if it is encrypted.
    pub fn open_at(loc: &Location, password: &dyn Fn() -> Result<String>) -> Result<Repository> {
        let backend = loc.open()?;
        let path = loc.display();
        let raw = match backend.size(files::CONFIG)? {
            Some(_) => backend.get(files::CONFIG)?,
            None => return Err(Error::NotARepository(path)),
        };
        #[derive(serde::Deserialize)]
        struct Version {
            version: u32,
        }
        let v: Version = serde_json::from_slice(&raw)
            .map_err(|e| Error::corrupt_root(format!("{path}/config"), e.to_string()))?;
        if v.version != REPO_VERSION {
            return Err(Error::UnsupportedVersion {
                path: path.clone(),
                found: v.version,
                supported: REPO_VERSION,
                hint: "use the cairn release that wrote it, or a newer one",
            });
        }
        let config: Config = serde_json::from_slice(&raw)
            .map_err(|e| Error::corrupt_root(format!("{path}/config"), e.to_string()))?;
        let keys = if config.encrypted() {
            let pw = password()?;
            let mut found = None;
            // A damaged key file must not lock out the others; it matters only if no
            // other one opens.
            let mut damaged = None;
            for name in backend
                .list(files::Folder::Keys.name())?
                .into_iter()
                .map(|l| l.name)
            {
                let kf = serde_json::from_slice::<KeyFile>(&backend.get(&name)?)
                    .map_err(|e| Error::corrupt_root(&name, e.to_string()))
                    .and_then(|kf| kf.unwrap_master(&pw, &name));
                match kf {
                    Ok(Some(m)) => {
                        found = Some(m);
                        break;
                    }
                    Ok(None) => {}
                    Err(e) => damaged = Some(e),
                }
            }
            match (found, damaged) {
                (Some(m), _) => Keys::from_master(m),
                (None, Some(e)) => return Err(e),
                (None, None) => return Err(Error::WrongPassword(path)),
            }
        } else {
            Keys::unencrypted()
        };
        config.verify(&keys)?;
        config.chunker.validate()?;
        // Checked at init too, but an unencrypted config has no MAC: a damaged span of 0
        // made backup loop forever, and one that is no power of two wrote snapshots that
        // no reader accepts.
        // The id names the local cache folder: only hex, or it could point elsewhere.
        if config.id.len() != 32 || !config.id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::corrupt_root(
                "config",
                "the repository id is not 32 hex digits",
            ));
        }
        if !(4 << 10..=1 << 30).contains(&config.pack_size) {
            return Err(Error::corrupt_root(
                "config",
                format!("pack_size {} is outside 4 KiB..1 GiB", config.pack_size),
            ));
        }
        if !config.table_span.is_power_of_two()
            || config.table_span < config.chunker.segment_size as u64
        {
            return Err(Error::corrupt_root(
                "config",
                format!(
                    "table_span {} is not a power of two of at least the segment size",
                    config.table_span
                ),
            ));
        }
        Ok(Repository {
            backend,
            config,
            keys,
            location: loc.display(),
            cache_root: default_cache_root(),
            lock_wait: std::time::Duration::ZERO,
        })
    }

    fn dir(kind: FileKind) -> &'static str {
        match kind {
            FileKind::Pack => "data",
            FileKind::Index => "index",
            FileKind::Snapshot => "snapshots",
            FileKind::Policies => "",
            FileKind::Pending => "pending",
        }
    }

    /// Writes an index or snapshot file; returns its id (the hash of its bytes).
    pub fn write_file(&self, kind: FileKind, payload: &[u8]) -> Result<Id> {
        let bytes = envelope::encode_file(kind, &self.keys, payload, self.config.zstd_level.max(1));
        let id = Id::of_file(&bytes);
        let name = match kind {
            FileKind::Index => files::index(&id),
            FileKind::Snapshot => files::snapshot(&id),
            _ => format!("{}/{}", Self::dir(kind), id),
        };
        self.backend.put(&name, &bytes)?;
        Ok(id)
    }

    /// Reads and verifies an index or snapshot file by its backend name.
    pub fn read_file(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        Ok(self.read_file_versioned(kind, name)?.1)
    }

    /// [`Repository::read_file`], also returning the file's format version.
    pub fn read_file_versioned(&self, kind: FileKind, name: &str) -> Result<(u16, Vec<u8>)> {
        let bytes = self.backend.get(name)?;
        let expected = name.rsplit('/').next().and_then(Id::from_hex);
        if expected != Some(Id::of_file(&bytes)) {
            return Err(Error::corrupt(
                name,
                "content does not match its name (truncated or changed)",
            ));
        }
        envelope::decode_file_versioned(kind, &self.keys, &bytes, name)
    }

    /// Every pack in `data/` with its size (from the listing).
    pub fn list_packs(&self) -> Result<std::collections::HashMap<Id, u64>> {
        Ok(self
            .backend
            .list(files::Folder::Data.name())?
            .into_iter()
            .filter_map(|l| Some((l.id()?, l.size)))
            .collect())
    }

    /// The objects of a folder, with their sizes.
    pub fn list(&self, folder: files::Folder) -> Result<Vec<files::Listed>> {
        self.backend.list(folder.name())
    }

    /// The names of the index files.
    pub fn index_files(&self) -> Result<Vec<String>> {
        Ok(self
            .list(files::Folder::Index)?
            .into_iter()
            .map(|l| l.name)
            .collect())
    }

    /// The names of the snapshot files.
    pub fn snapshot_files(&self) -> Result<Vec<String>> {
        Ok(self
            .list(files::Folder::Snapshots)?
            .into_iter()
            .map(|l| l.name)
            .collect())
    }

    pub fn delete_snapshot(&self, id: &Id) -> Result<()> {
        self.backend.delete(&files::snapshot(id))
    }

    /// Deletes an object by the name a listing of this repository gave.
    pub fn delete_listed(&self, name: &str) -> Result<()> {
        self.backend.delete(name)
    }

    pub fn read_index(&self, name: &str) -> Result<IndexFile> {
        let (version, payload) = self.read_file_versioned(FileKind::Index, name)?;
        IndexFile::decode(&payload, version, name)
    }

    /// Writes an index file, stamped with the current time when it has none.
    pub fn write_index(&self, idx: &IndexFile) -> Result<String> {
        let mut stamped;
        let idx = if idx.created == 0 {
            stamped = idx.clone();
            stamped.created = now_ns();
            &stamped
        } else {
            idx
        };
        let id = self.write_file(FileKind::Index, &idx.encode())?;
        Ok(files::index(&id))
    }

    /// The local index cache, brought up to date with `index/`. Damaged index files are
    /// left out with a warning on stderr: what they name is unavailable, the rest reads.
    pub fn index_cache(&self) -> Result<IndexCache> {
        let cache = IndexCache::open(&self.cache_root.join(&self.config.id))?;
        for (name, e) in cache.sync(&*self.backend, &|name| self.read_index(name))? {
            eprintln!(
                "cairn: warning: index file {name} cannot be read and was left out ({e}); \
                 the blobs it names are unavailable until `cairn repair index`"
            );
        }
        Ok(cache)
    }

    pub fn lock(&self, kind: LockKind, command: &str) -> Result<Lock> {
        Lock::acquire_waiting(self.backend.clone(), kind, command, self.lock_wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast_opts() -> InitOptions {
        InitOptions {
            kdf: KdfParams {
                m_cost: 64,
                t_cost: 1,
                p_cost: 1,
            },
            ..InitOptions::default()
        }
    }

    #[test]
    fn init_open_password() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("repo");
        let r = Repository::init(&p, Some("pw"), &fast_opts()).unwrap();
        let id = r.write_file(FileKind::Snapshot, b"manifest").unwrap();
        let r2 = Repository::open(&p, &|| Ok("pw".into())).unwrap();
        assert_eq!(
            r2.read_file(FileKind::Snapshot, &format!("snapshots/{id}"))
                .unwrap(),
            b"manifest"
        );
        assert!(matches!(
            Repository::open(&p, &|| Ok("nope".into())),
            Err(Error::WrongPassword(_))
        ));
        assert!(matches!(
            Repository::open(dir.path(), &|| Ok("pw".into())),
            Err(Error::NotARepository(_))
        ));
        assert!(Repository::init(&p, None, &fast_opts()).is_err());
    }

    #[test]
    fn newer_format_version_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("repo");
        Repository::init(&p, None, &fast_opts()).unwrap();
        let cfg = std::fs::read_to_string(p.join("config")).unwrap();
        std::fs::write(
            p.join("config"),
            cfg.replace("\"version\": 1", "\"version\": 2"),
        )
        .unwrap();
        let e = Repository::open(&p, &|| Ok(String::new())).err().unwrap();
        assert!(
            matches!(e, Error::UnsupportedVersion { found: 2, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("format version 2"), "{e}");
    }

    /// An unencrypted config has no MAC, so open itself refuses a table span backup cannot
    /// use (0 made it loop forever).
    #[test]
    fn unusable_table_span_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("repo");
        Repository::init(&p, None, &fast_opts()).unwrap();
        let cfg = std::fs::read_to_string(p.join("config")).unwrap();
        for span in ["0", "7", "1073741823", "8388608"] {
            let bad = cfg.replace(
                "\"table_span\": 1073741824",
                &format!("\"table_span\": {span}"),
            );
            assert_ne!(bad, cfg);
            std::fs::write(p.join("config"), bad).unwrap();
            let e = Repository::open(&p, &|| Ok(String::new())).err().unwrap();
            assert!(e.to_string().contains("table_span"), "{span}: {e}");
        }
    }

    #[test]
    fn tampered_config_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("repo");
        Repository::init(&p, Some("pw"), &fast_opts()).unwrap();
        let cfg = std::fs::read_to_string(p.join("config")).unwrap();
        std::fs::write(
            p.join("config"),
            cfg.replace("\"zstd_level\": 3", "\"zstd_level\": 4"),
        )
        .unwrap();
        let e = Repository::open(&p, &|| Ok("pw".into())).err().unwrap();
        assert!(e.to_string().contains("MAC"), "{e}");
    }
}
