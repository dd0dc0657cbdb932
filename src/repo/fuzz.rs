//! Seeded mutation tests of everything cairn parses from repository bytes: snapshot
//! manifests (versions 1 to 3) and whole snapshot files, index payloads and index files,
//! chunk tables, packs and the blobs in them, key files, the config, and the file envelope.
//!
//! Why a loop in the unit tests and not cargo-fuzz: cargo-fuzz needs a nightly compiler,
//! which the build machines lack, and a seeded loop runs on every `cargo test`. Each target
//! starts from real objects that the library itself writes into fresh repositories (one
//! unencrypted, one encrypted), damages them (bit flips, random bytes, runs of 0x00 or 0xff,
//! truncation, garbage appended or inserted, bytes deleted, and, for the length, count,
//! offset and size fields each format has, values such as 0xffffffff) and hands them to the
//! parser. Every case runs on a thread of its own, as [`crate::fs::testutil::mutate`] does
//! for the filesystem readers, and must end in Ok or an error: a panic, a case running longer
//! than 20 s, or any single allocation above 256 MiB (measured by [`crate::testalloc`]) fails
//! the test, naming the variant, the case and the seed, and leaves the input in the temp
//! folder.
//!
//! Damage to an encrypted file is almost always caught by authentication, which proves
//! nothing about the decoders behind it, so the encrypted variants also damage the plaintext
//! and seal it again properly ("resealed"): what a writer bug, or someone holding the key,
//! could store. A few variants also check a property beyond "no crash": a changed file read
//! under its old name, or a changed encrypted file, must be refused.
//!
//! `CAIRN_FUZZ_CASES` sets the cases per variant (default 2000), `CAIRN_FUZZ_SEED` the seed
//! (mixed with the variant's name). `cargo test --lib repo::fuzz -- --nocapture` shows the
//! counts of each variant.

use super::config::{Config, KeyFile};
use super::envelope::{self, FileHeader, FileKind, HEADER_LEN};
use super::index::IndexFile;
use super::pack::{self, BlobKind, PackEntry, ENTRY_LEN};
use super::packer::Packer;
use super::{InitOptions, Repository};
use crate::crypto::{KdfParams, Keys, Sealer};
use crate::image::SourceStamp;
use crate::snapshot::{self, ChunkTable, Disk, Extent, Name, Snapshot, Summary};
use crate::{Id, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Cases per variant unless `CAIRN_FUZZ_CASES` says otherwise: enough to hit every field
/// many times while the whole file stays well under a minute.
const DEFAULT_CASES: usize = 2000;
/// A case taking longer than this hangs (the slowest legitimate case, an argon2id run with
/// the test's small parameters, takes milliseconds).
const CASE_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest single allocation a case may make: no number read from a file may size an
/// allocation beyond what the file's own length justifies.
const MAX_ALLOC: usize = 256 << 20;
/// Key-file cases whose argon2id parameters pass `KdfParams::problem` are run only up to
/// this memory (KiB) and memory × passes: above it a case would measure argon2id, not the
/// parser, and problem()'s own caps (1 GiB, 4 GiB-passes) are what bounds it.
const KDF_RUN_MAX_M: u32 = 16 << 10;
const KDF_RUN_MAX_WORK: u64 = 32 << 10;
const PASSWORD: &str = "fuzz password";

// ---------------------------------------------------------------------------------------
// Random numbers and mutations

/// splitmix64, seeded per case, so the mutations of a failing case replay from (seed, case)
/// alone. The fixtures' salts, nonces and keys are random, so the failing input itself is
/// saved too.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, case: usize) -> Rng {
        let mut r = Rng(seed ^ (case as u64).wrapping_mul(0xd1b5_4a32_d192_ed03));
        r.next();
        r
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
}

/// A number inside an encoding where the format puts one: the lengths and counts that size
/// what follows, and the offsets and sizes that point into the file. Mutations aim at these
/// with boundary values, since a random byte rarely turns a length into 0xffffffff.
#[derive(Clone, Copy, Debug)]
enum Field {
    /// A little-endian u32 at this offset.
    U32(usize),
    /// A postcard (LEB128) varint: offset and encoded length.
    Varint(usize, usize),
}

impl Field {
    fn at(self) -> usize {
        match self {
            Field::U32(at) | Field::Varint(at, _) => at,
        }
    }
}

const U32_VALUES: [u32; 16] = [
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x100,
    0xffff,
    0x1_0000,
    0x10_0000,
    0x1000_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fff0,
    0xffff_fffe,
    0xffff_ffff,
];

const U64_VALUES: [u64; 18] = [
    0,
    1,
    2,
    0x7f,
    0x80,
    0x3fff,
    0xffff,
    1 << 20,
    1 << 30,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    1 << 62,
    1 << 63,
    u64::MAX >> 1,
    u64::MAX - 1,
    u64::MAX,
];

fn leb128(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

fn read_leb128(b: &[u8]) -> u64 {
    b.iter().take(10).enumerate().fold(0u64, |v, (i, &x)| {
        v | ((x & 0x7f) as u64).wrapping_shl(7 * i as u32)
    })
}

fn set_field(b: &mut Vec<u8>, f: Field, rng: &mut Rng) {
    match f {
        Field::U32(at) => {
            let Some(s) = b.get_mut(at..at + 4) else {
                return;
            };
            let old = u32::from_le_bytes(s.try_into().expect("4 bytes"));
            let new = match rng.below(6) {
                0 => old.wrapping_add(1),
                1 => old.wrapping_sub(1),
                2 => old.wrapping_mul(2),
                3 => rng.next() as u32,
                _ => rng.pick(&U32_VALUES),
            };
            s.copy_from_slice(&new.to_le_bytes());
        }
        Field::Varint(at, len) => {
            if at + len > b.len() {
                return;
            }
            let old = read_leb128(&b[at..at + len]);
            let new = match rng.below(8) {
                0 => leb128(old.wrapping_add(1)),
                1 => leb128(old.wrapping_sub(1)),
                2 => leb128(rng.next()),
                3 => leb128(rng.next() % 300),
                // Overlong and unterminated varints.
                4 => vec![0xff; 1 + rng.below(12)],
                _ => leb128(rng.pick(&U64_VALUES)),
            };
            b.splice(at..at + len, new);
        }
    }
}

/// Damages a copy of `base`: aimed numbers first (from the last to the first, so a varint
/// that changes length does not move the fields before it), then bytes in place, then
/// sometimes a change of length.
fn mutate(base: &[u8], fields: &[Field], rng: &mut Rng) -> Vec<u8> {
    let mut b = base.to_vec();
    let mut aimed: Vec<Field> = Vec::new();
    if !fields.is_empty() && rng.one_in(2) {
        for _ in 0..1 + rng.below(2) {
            aimed.push(fields[rng.below(fields.len())]);
        }
    }
    aimed.sort_by_key(|f| std::cmp::Reverse(f.at()));
    aimed.dedup_by_key(|f| f.at());
    for &f in &aimed {
        set_field(&mut b, f, rng);
    }
    let in_place = if aimed.is_empty() {
        1 + rng.below(4)
    } else {
        rng.below(2)
    };
    for _ in 0..in_place {
        if b.is_empty() {
            break;
        }
        let at = rng.below(b.len());
        let room = b.len() - at;
        match rng.below(5) {
            0 => b[at] ^= 1 << rng.below(8),
            1 => {
                let n = (1 + rng.below(8)).min(room);
                b[at..at + n].copy_from_slice(&rng.bytes(n));
            }
            2 | 3 => {
                let n = (1 + rng.below(64)).min(room);
                let v = if rng.one_in(2) { 0 } else { 0xff };
                b[at..at + n].fill(v);
            }
            _ => {
                // A piece of the file copied over another: plausible-looking structure in
                // the wrong place.
                let from = rng.below(b.len());
                let n = (1 + rng.below(64)).min(room).min(b.len() - from);
                let piece = b[from..from + n].to_vec();
                b[at..at + n].copy_from_slice(&piece);
            }
        }
    }
    if rng.one_in(4) || b == base {
        match rng.below(4) {
            0 => {
                let at = rng.below(b.len() + 1);
                b.truncate(at);
            }
            1 => {
                let n = 1 + rng.below(256);
                let tail = match rng.below(3) {
                    0 => vec![0; n],
                    1 => vec![0xff; n],
                    _ => rng.bytes(n),
                };
                b.extend_from_slice(&tail);
            }
            2 => {
                let at = rng.below(b.len() + 1);
                let n = 1 + rng.below(16);
                let ins = rng.bytes(n);
                b.splice(at..at, ins);
            }
            _ => {
                let at = rng.below(b.len() + 1);
                let n = (1 + rng.below(16)).min(b.len() - at);
                b.drain(at..at + n);
            }
        }
    }
    // Truncating at the end or deleting nothing leaves the input as it was: a case must
    // always change something, or its "decoded" proves nothing.
    if b == base {
        match b.len() {
            0 => b.push(rng.next() as u8),
            n => b[rng.below(n)] ^= 1 << rng.below(8),
        }
    }
    b
}

// ---------------------------------------------------------------------------------------
// Running cases

/// What a case ended in. `Wrong` is a property the case checks beyond "no crash" (a changed
/// file accepted under its old name, say); it fails the test like a panic.
enum Verdict {
    Decoded,
    Refused,
    Skipped,
    Wrong(String),
}

fn verdict<T>(r: &Result<T>) -> Verdict {
    match r {
        Ok(_) => Verdict::Decoded,
        Err(_) => Verdict::Refused,
    }
}

/// One variant of one target: its seed and counts.
struct Target {
    name: &'static str,
    seed: u64,
    cases: usize,
    decoded: usize,
    refused: usize,
    skipped: usize,
    /// The slowest case and the largest single allocation of any case, to show how far
    /// from the limits the parsers stay.
    slowest: Duration,
    largest: usize,
}

impl Target {
    fn new(name: &'static str) -> Target {
        let from_name = u64::from_le_bytes(
            blake3::hash(name.as_bytes()).as_bytes()[..8]
                .try_into()
                .expect("8 bytes"),
        );
        let seed = std::env::var("CAIRN_FUZZ_SEED")
            .ok()
            .and_then(|s| match s.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16).ok(),
                None => s.parse().ok(),
            })
            .map_or(from_name, |s| s ^ from_name);
        Target {
            name,
            seed,
            cases: 0,
            decoded: 0,
            refused: 0,
            skipped: 0,
            slowest: Duration::ZERO,
            largest: 0,
        }
    }

    fn rng(&self, case: usize) -> Rng {
        Rng::new(self.seed, case)
    }

    /// Runs `f` on a thread of its own with the time and allocation limits; `input` is what
    /// was fed to the parser, saved for replay if the case fails.
    fn run<F>(&mut self, case: usize, input: &[u8], f: F)
    where
        F: FnOnce() -> Verdict + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        let started = std::time::Instant::now();
        std::thread::spawn(move || {
            crate::testalloc::reset();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = tx.send((r.ok(), crate::testalloc::peak()));
        });
        let got = rx.recv_timeout(CASE_TIMEOUT);
        self.slowest = self.slowest.max(started.elapsed());
        if let Ok((_, peak)) = &got {
            self.largest = self.largest.max(*peak);
        }
        let why = match got {
            Ok((Some(_), peak)) if peak > MAX_ALLOC => {
                format!("made one allocation of {peak} bytes")
            }
            Ok((Some(Verdict::Decoded), _)) => return self.count(|t| &mut t.decoded),
            Ok((Some(Verdict::Refused), _)) => return self.count(|t| &mut t.refused),
            Ok((Some(Verdict::Skipped), _)) => return self.count(|t| &mut t.skipped),
            Ok((Some(Verdict::Wrong(why)), _)) => why,
            Ok((None, _)) => "panicked".into(),
            Err(_) => format!("hung (no result after {} s)", CASE_TIMEOUT.as_secs()),
        };
        let saved = std::env::temp_dir().join(format!(
            "cairn-fuzz-{}-{case}.bin",
            self.name.replace(' ', "-")
        ));
        let _ = std::fs::write(&saved, input);
        panic!(
            "fuzz {}: case {case} (seed {:#x}) {why}; its {} input bytes are in {}",
            self.name,
            self.seed,
            input.len(),
            saved.display()
        );
    }

    fn count(&mut self, which: fn(&mut Target) -> &mut usize) {
        *which(self) += 1;
        self.cases += 1;
    }

    fn report(&self) {
        eprintln!(
            "fuzz {:<26} cases {:>7}  decoded {:>7}  refused {:>7}  skipped {:>4}  \
             slowest {:>5} ms  largest alloc {:>6.2} MiB  seed {:#018x}",
            self.name,
            self.cases,
            self.decoded,
            self.refused,
            self.skipped,
            self.slowest.as_millis(),
            self.largest as f64 / (1 << 20) as f64,
            self.seed
        );
        assert!(self.cases > 0 || cases() == 0);
    }
}

fn cases() -> usize {
    crate::fs::testutil::fuzz_cases(DEFAULT_CASES)
}

// ---------------------------------------------------------------------------------------
// Real objects to start from

/// A repository written by the library: several packs of data chunks (compressible and
/// not) and chunk tables, the index file naming them, and a snapshot of several disks and
/// files whose tables are those chunk tables.
struct Fixture {
    _dir: tempfile::TempDir,
    repo: Arc<Repository>,
    /// The plaintext the repository's snapshot file holds (manifest version 3).
    manifest: Snapshot,
    snapshot_name: String,
    index_name: String,
    /// Chunk table encodings, as stored in their blobs.
    tables: Vec<Vec<u8>>,
    /// Every pack: its id and bytes.
    packs: Vec<(Id, Vec<u8>)>,
    /// The repository folder's `keys/` file (encrypted only) and `config`.
    key_file: Option<Vec<u8>>,
    config: Vec<u8>,
}

impl Fixture {
    fn encrypted(&self) -> bool {
        self.repo.config.encrypted()
    }

    fn keys(&self) -> &Keys {
        &self.repo.keys
    }
}

fn fixture(encrypted: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("repo");
    let opts = InitOptions {
        kdf: KdfParams {
            m_cost: 64,
            t_cost: 1,
            p_cost: 1,
        },
        // Small packs, so there are several and the index names more than one.
        pack_size: 48 << 10,
        ..InitOptions::default()
    };
    let repo = Repository::init(&path, encrypted.then_some(PASSWORD), &opts).unwrap();
    let mut rng = Rng::new(0x5eed, encrypted as usize);
    let chunks: Vec<Vec<u8>> = (0..24)
        .map(|i| {
            let n = 500 + rng.below(9000);
            if i % 2 == 0 {
                format!("chunk {i}: the quick brown fox jumps over the lazy dog. ")
                    .into_bytes()
                    .into_iter()
                    .cycle()
                    .take(n)
                    .collect()
            } else {
                rng.bytes(n)
            }
        })
        .collect();
    let ids: Vec<Id> = chunks.iter().map(|c| repo.keys.chunk_id(c)).collect();
    let mut tables = Vec::new();
    for t in 0..4 {
        let mut table = ChunkTable::default();
        for (k, (c, id)) in chunks.iter().zip(&ids).enumerate().skip(t * 5).take(8) {
            if k % 3 == 0 {
                table.push(Extent {
                    len: 4096 * (1 + k as u32),
                    id: None,
                });
            }
            table.push(Extent {
                len: c.len() as u32,
                id: Some(*id),
            });
        }
        tables.push(table.encode());
    }
    let level = repo.config.zstd_level;
    {
        let mut packer = Packer::new(&repo);
        for (c, id) in chunks.iter().zip(&ids) {
            let blob = pack::seal_blob(packer.sealer(), BlobKind::Data, *id, c, level);
            packer.add(&blob).unwrap();
        }
        for t in &tables {
            let id = repo.keys.chunk_id(t);
            let blob = pack::seal_blob(packer.sealer(), BlobKind::Table, id, t, level);
            packer.add(&blob).unwrap();
        }
        packer.finish().unwrap();
    }
    let index_name = repo.backend.list("index").unwrap().remove(0).name;
    let index = repo.read_index(&index_name).unwrap();
    assert!(index.packs.len() > 1, "the fixture has several packs");
    let packs = index
        .packs
        .iter()
        .map(|p| {
            (
                p.pack,
                std::fs::read(path.join(pack::pack_name(&p.pack))).unwrap(),
            )
        })
        .collect();
    let table_ids: Vec<Option<Id>> = tables.iter().map(|t| Some(repo.keys.chunk_id(t))).collect();
    let manifest = sample_manifest(&table_ids);
    let snapshot_name = format!("snapshots/{}", snapshot::save(&repo, &manifest).unwrap());
    let key_file = encrypted.then(|| {
        let name = repo.backend.list("keys").unwrap().remove(0).name;
        repo.backend.get(&name).unwrap()
    });
    let config = std::fs::read(path.join("config")).unwrap();
    Fixture {
        _dir: dir,
        repo: Arc::new(repo),
        manifest,
        snapshot_name,
        index_name,
        tables,
        packs,
        key_file,
        config,
    }
}

/// A manifest like a backup of a VM folder writes: three disks (one spanning several
/// tables with a hole, one with a stamp and a config reference, one empty) and two files,
/// one with a lost range.
fn sample_manifest(t: &[Option<Id>]) -> Snapshot {
    let span = 1u64 << 30;
    let disk = |name: &str, format: &str, size: u64, tables: Vec<Option<Id>>| Disk {
        name: Name::new(name),
        format: format.into(),
        size,
        table_span: span,
        tables,
        stamp: None,
        config_ref: None,
        lost: Vec::new(),
        layers: Vec::new(),
        change: None,
    };
    let stamp = SourceStamp {
        dev: 2049,
        ino: 1_234_567,
        size: 3 * span + 12_288,
        mtime_ns: 1_795_000_000_123_456_789,
        ctime_ns: 1_795_000_001_000_000_000,
    };
    Snapshot {
        version: snapshot::MANIFEST_VERSION,
        vm: "web01".into(),
        time: "2026-11-22T04:00:00.123+01:00".into(),
        host: "proxy1".into(),
        tags: vec!["nightly".into(), "before-upgrade".into()],
        parent: Some(Id([7; 32])),
        disks: vec![
            Disk {
                stamp: Some(stamp),
                config_ref: Some(Name::new("web01-flat.vmdk")),
                ..disk(
                    "web01.vmdk",
                    "vmdk",
                    3 * span + 12_288,
                    vec![t[0], None, t[1], t[2]],
                )
            },
            Disk {
                stamp: Some(SourceStamp { ino: 99, ..stamp }),
                ..disk("data.qcow2", "qcow2", span, vec![t[3]])
            },
            disk("empty.raw", "raw", 0, vec![]),
        ],
        summary: Summary {
            bytes_read: 3 << 30,
            bytes_new: 12_345_678,
            bytes_stored: 4_567_890,
            holes: 1 << 30,
            duration_ms: 61_234,
        },
        files: vec![
            disk("web01.vmx", "file", 2345, vec![t[0]]),
            Disk {
                lost: vec![(4096, 4096)],
                ..disk("web01.nvram", "file", 8684, vec![t[1]])
            },
        ],
        catalog: Some(Disk {
            layers: vec![crate::snapshot::LayerRecord {
                name: Name::new("catalog"),
                stamp: None,
            }],
            ..disk("catalog", "catalog", 4321, vec![t[2]])
        }),
    }
}

/// The disk record of manifest versions 1 and 2, as cairn wrote it (names as strings).
#[derive(serde::Serialize)]
struct OldDisk {
    name: String,
    format: String,
    size: u64,
    table_span: u64,
    tables: Vec<Option<Id>>,
    stamp: Option<SourceStamp>,
}

#[derive(serde::Serialize)]
struct OldManifest {
    version: u32,
    vm: String,
    time: String,
    host: String,
    tags: Vec<String>,
    parent: Option<Id>,
    disks: Vec<OldDisk>,
    summary: Summary,
}

/// Version 2 is version 1 with `files` after it (postcard puts nested fields in order).
#[derive(serde::Serialize)]
struct OldManifestV2 {
    v1: OldManifest,
    files: Vec<OldDisk>,
}

/// `s` encoded as manifest version 1 or 2.
fn old_encoding(s: &Snapshot, version: u32) -> Vec<u8> {
    let old = |d: &Disk| OldDisk {
        name: d.name.lossy().into_owned(),
        format: d.format.clone(),
        size: d.size,
        table_span: d.table_span,
        tables: d.tables.clone(),
        stamp: d.stamp,
    };
    let v1 = OldManifest {
        version,
        vm: s.vm.clone(),
        time: s.time.clone(),
        host: s.host.clone(),
        tags: s.tags.clone(),
        parent: s.parent,
        disks: s.disks.iter().map(old).collect(),
        summary: s.summary.clone(),
    };
    match version {
        1 => postcard::to_stdvec(&v1).unwrap(),
        _ => postcard::to_stdvec(&OldManifestV2 {
            v1,
            files: s.files.iter().map(old).collect(),
        })
        .unwrap(),
    }
}

// ---------------------------------------------------------------------------------------
// Where the numbers are, from the formats (repo-format.md sections 7 to 10)

/// Walks a postcard manifest in the layout of `version` and records every varint: the
/// lengths of strings and sequences, and the integers. Checks that the walk ends exactly at
/// the end, so the walker and the encoder agree.
fn manifest_fields(b: &[u8], version: u32) -> Vec<Field> {
    struct Walk<'a> {
        b: &'a [u8],
        pos: usize,
        out: Vec<Field>,
    }
    impl Walk<'_> {
        fn varint(&mut self) -> u64 {
            let start = self.pos;
            while self.b[self.pos] & 0x80 != 0 {
                self.pos += 1;
            }
            self.pos += 1;
            self.out.push(Field::Varint(start, self.pos - start));
            read_leb128(&self.b[start..self.pos])
        }
        fn bytes(&mut self) {
            self.pos += self.varint() as usize;
        }
        fn seq(&mut self, mut item: impl FnMut(&mut Self)) {
            for _ in 0..self.varint() {
                item(self);
            }
        }
        fn option(&mut self, some: impl FnOnce(&mut Self)) {
            self.pos += 1;
            if self.b[self.pos - 1] == 1 {
                some(self);
            }
        }
        fn disk(&mut self, version: u32) {
            self.bytes(); // name
            self.bytes(); // format
            self.varint(); // size
            self.varint(); // table_span
            self.seq(|w| w.option(|w| w.pos += 32)); // tables
            self.option(|w| {
                (0..5).for_each(|_| {
                    w.varint();
                })
            }); // stamp
            if version >= 3 {
                self.option(|w| w.bytes()); // config_ref
                self.seq(|w| {
                    w.varint();
                    w.varint();
                }); // lost
                self.seq(|w| {
                    w.bytes();
                    w.option(|w| {
                        (0..5).for_each(|_| {
                            w.varint();
                        })
                    });
                }); // layers
                self.option(|w| {
                    w.bytes();
                    w.option(|w| w.bytes());
                    w.pos += 32;
                    w.varint();
                }); // change
            }
        }
    }
    let mut w = Walk {
        b,
        pos: 0,
        out: Vec::new(),
    };
    w.varint(); // version
    (0..3).for_each(|_| w.bytes()); // vm, time, host
    w.seq(|w| w.bytes()); // tags
    w.option(|w| w.pos += 32); // parent
    w.seq(|w| w.disk(version)); // disks
    (0..5).for_each(|_| {
        w.varint();
    }); // summary
    if version >= 2 {
        w.seq(|w| w.disk(version)); // files
    }
    if version >= 3 {
        w.option(|w| w.disk(version)); // catalog
    }
    assert_eq!(w.pos, b.len(), "walking a version {version} manifest");
    w.out
}

/// The three u32 of a pack entry at `at`: offset, stored length, plaintext length.
fn entry_fields(at: usize) -> [Field; 3] {
    [
        Field::U32(at + 33),
        Field::U32(at + 37),
        Field::U32(at + 41),
    ]
}

fn u32_at(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes")) as usize
}

/// Pack count, and per pack its entry count and its entries' numbers (the version 2
/// payload: the creation time comes first).
fn index_fields(b: &[u8]) -> Vec<Field> {
    let mut out = vec![Field::U32(8)];
    let mut pos = 12;
    for _ in 0..u32_at(b, 8) {
        out.push(Field::U32(pos + 64));
        let n = u32_at(b, pos + 64);
        pos += 68;
        for _ in 0..n {
            out.extend(entry_fields(pos));
            pos += ENTRY_LEN;
        }
    }
    assert_eq!(pos, b.len(), "walking an index payload");
    out
}

/// A pack's table of contents (plaintext): count, then each entry's numbers, at `base`.
fn toc_fields(toc: &[u8], base: usize) -> Vec<Field> {
    let mut out = vec![Field::U32(base)];
    for i in 0..u32_at(toc, 0) {
        out.extend(entry_fields(base + 4 + i * ENTRY_LEN));
    }
    out
}

/// Extent count, and each extent's length.
fn table_fields(b: &[u8]) -> Vec<Field> {
    let mut out = vec![Field::U32(1)];
    let mut pos = 5;
    for _ in 0..u32_at(b, 1) {
        out.push(Field::U32(pos + 1));
        pos += 5 + 32 * b[pos] as usize;
    }
    assert_eq!(pos, b.len(), "walking a chunk table");
    out
}

/// The trailer every enveloped file ends with: the payload length, never authenticated.
fn trailer_fields(b: &[u8]) -> Vec<Field> {
    vec![Field::U32(b.len() - 4)]
}

// ---------------------------------------------------------------------------------------
// Whole files through the repository

/// How a whole-file case is named and what it must do.
#[derive(Clone, Copy, PartialEq)]
enum Naming {
    /// Stored under the hash of its (damaged) bytes, so the name check passes and the damage
    /// reaches the envelope and the decoder.
    OwnHash,
    /// Stored under the undamaged file's name: every change must be refused.
    OldName,
}

/// Stores `bytes` in the folder of `original` in the fixture's repository (written directly,
/// not through the backend, whose fsyncs would dominate thousands of cases), has `read` read
/// it by name in a case, and puts the folder back as it was. With `strict` (and always under
/// the old name) a changed file must be refused.
#[allow(clippy::too_many_arguments)]
fn file_case<T: 'static>(
    t: &mut Target,
    case: usize,
    f: &Fixture,
    original: &str,
    bytes: Vec<u8>,
    naming: Naming,
    strict: bool,
    read: fn(&Repository, &str) -> Result<T>,
) {
    let name = match naming {
        Naming::OwnHash => format!(
            "{}/{}",
            original.split('/').next().unwrap(),
            Id::of_file(&bytes)
        ),
        Naming::OldName => original.to_string(),
    };
    let path = std::path::PathBuf::from(&f.repo.location).join(&name);
    let before = std::fs::read(&path).ok();
    let changed = before.as_deref() != Some(&bytes[..]);
    let strict = strict || naming == Naming::OldName;
    if changed {
        std::fs::write(&path, &bytes).unwrap();
    }
    let repo = f.repo.clone();
    let n = name.clone();
    t.run(case, &bytes, move || match read(&repo, &n) {
        Ok(_) if strict && changed => Verdict::Wrong(format!("accepted a changed {n}")),
        r => verdict(&r),
    });
    if changed {
        match before {
            Some(b) => std::fs::write(&path, b).unwrap(),
            None => std::fs::remove_file(&path).unwrap(),
        }
    }
}

fn read_snapshot(r: &Repository, name: &str) -> Result<Snapshot> {
    let s = Snapshot::decode(&r.read_file(FileKind::Snapshot, name)?, name)?;
    use_manifest(&s);
    Ok(s)
}

fn read_index(r: &Repository, name: &str) -> Result<IndexFile> {
    let i = r.read_index(name)?;
    let _ = i.blob_count();
    Ok(i)
}

/// What commands do with a manifest that decoded, in the same arithmetic: `snapshots` and
/// backup's report add up the disk sizes, restore all the sizes, each item's lost lengths
/// and each table's start and length; everything parses the time and shows the names.
fn use_manifest(s: &Snapshot) {
    let _ = s.logical_size();
    let _ = s.parsed_time();
    let _: u64 = s.items().map(|d| d.size).sum();
    for d in s.items() {
        let _: u64 = d.lost.iter().map(|l| l.1).sum();
        for slot in 0..d.tables.len() {
            let base = slot as u64 * d.table_span;
            let _ = d.table_span.min(d.size - base);
        }
        let _ = (
            d.name.lossy(),
            d.name.problem(),
            d.config_ref.as_ref().map(Name::lossy),
        );
    }
}

/// The three ways a whole enveloped file is damaged: its bytes under their own hash, its
/// bytes under the old name, and (for `resealed`) its plaintext sealed again properly.
fn whole_files<T: 'static>(
    f: &Fixture,
    names: [&'static str; 3],
    original: &str,
    kind: FileKind,
    payload_fields: &[Field],
    read: fn(&Repository, &str) -> Result<T>,
) {
    let base = std::fs::read(std::path::PathBuf::from(&f.repo.location).join(original)).unwrap();
    let payload = envelope::decode_file(kind, f.keys(), &base, original).unwrap();
    let fields = trailer_fields(&base);
    let [raw, old_name, resealed] = names.map(Target::new);
    let mut targets = [raw, old_name, resealed];
    let level = f.repo.config.zstd_level.max(1);
    for case in 0..cases() {
        let [raw, old_name, resealed] = &mut targets;
        let m = mutate(&base, &fields, &mut raw.rng(case));
        // An encrypted file is authenticated: no change at all may go unnoticed.
        file_case(
            raw,
            case,
            f,
            original,
            m,
            Naming::OwnHash,
            f.encrypted(),
            read,
        );
        let m = mutate(&base, &fields, &mut old_name.rng(case));
        file_case(old_name, case, f, original, m, Naming::OldName, true, read);
        let m = mutate(&payload, payload_fields, &mut resealed.rng(case));
        let sealed = envelope::encode_file(kind, f.keys(), &m, level);
        file_case(
            resealed,
            case,
            f,
            original,
            sealed,
            Naming::OwnHash,
            false,
            read,
        );
    }
    targets.iter().for_each(Target::report);
}

// ---------------------------------------------------------------------------------------
// JSON

/// Every JSON pointer in `v`, containers included.
fn json_pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => m
            .iter()
            .for_each(|(k, v)| json_pointers(v, format!("{at}/{k}"), out)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, v)| json_pointers(v, format!("{at}/{i}"), out)),
        _ => {}
    }
    out.push(at);
}

/// Numbers around every bound a reader checks (argon2id's, the chunker's, u32 and u64),
/// and values of the wrong type.
fn json_value(rng: &mut Rng) -> Value {
    match rng.below(26) {
        0 => json!(0),
        1 => json!(1),
        2 => json!(3),
        3 => json!(7),
        4 => json!(8),
        5 => json!(16),
        6 => json!(17),
        7 => json!(64),
        8 => json!(4096),
        9 => json!(1u64 << 20),
        10 => json!((1u64 << 20) + 1),
        11 => json!(1u64 << 24),
        12 => json!(u32::MAX),
        13 => json!(1u64 << 32),
        14 => json!(u64::MAX),
        15 => json!(-1),
        16 => json!(i64::MIN),
        17 => json!(1.5),
        18 => json!(1e300),
        19 => json!("64"),
        20 => Value::Null,
        21 => json!(true),
        22 => json!([]),
        23 => json!({}),
        24 => json!(rng.next() as u32),
        _ => json!(1u64 << rng.below(64)),
    }
}

/// Strings: names cairn knows and ones it does not, and hex of every awkward length.
fn json_string(rng: &mut Rng) -> Value {
    let hex_len = rng.pick::<usize>(&[0, 1, 2, 7, 16, 31, 32, 63, 64, 65, 128, 152, 153, 1 << 16]);
    let mut hex = hex::encode(rng.bytes(hex_len.div_ceil(2)));
    hex.truncate(hex_len);
    match rng.below(12) {
        0 => json!(""),
        1 => json!("none"),
        2 => json!("aes-256-gcm"),
        3 => json!("argon2id"),
        4 => json!("argon2i"),
        5 => json!("fixed"),
        6 => json!("fastcdc-v2020"),
        7 => json!("../../etc"),
        8 => {
            // Hex with one digit that is not one.
            let mut h = hex.into_bytes();
            if !h.is_empty() {
                let at = rng.below(h.len());
                h[at] = rng.pick(b"gZ -\\\"");
            }
            json!(String::from_utf8_lossy(&h))
        }
        9 => json!(hex.to_uppercase()),
        _ => json!(hex),
    }
}

/// Changes one or two values of a JSON document: removed, replaced by a boundary number or
/// an odd string, nested past serde_json's depth limit, or joined by an unknown field.
fn mutate_json(v: &Value, rng: &mut Rng) -> Value {
    let mut v = v.clone();
    for _ in 0..1 + rng.below(2) {
        let mut pointers = Vec::new();
        json_pointers(&v, String::new(), &mut pointers);
        let p = pointers[rng.below(pointers.len())].clone();
        let (parent, key) = p.rsplit_once('/').unwrap_or(("", ""));
        match rng.below(8) {
            0 if !p.is_empty() => {
                if let Some(Value::Object(m)) = v.pointer_mut(parent) {
                    m.remove(key);
                }
            }
            1 => {
                if let Some(Value::Object(m)) = v.pointer_mut(parent) {
                    m.insert("unknown_field".into(), json_value(rng));
                }
            }
            2 => {
                let deep = (0..200).fold(json!(1), |acc, _| json!([acc]));
                if let Some(x) = v.pointer_mut(&p) {
                    *x = deep;
                }
            }
            3 | 4 => {
                if let Some(x) = v.pointer_mut(&p) {
                    *x = json_string(rng);
                }
            }
            _ => {
                if let Some(x) = v.pointer_mut(&p) {
                    *x = json_value(rng);
                }
            }
        }
    }
    v
}

// ---------------------------------------------------------------------------------------
// 1. Snapshot manifests and snapshot files

/// A manifest with extreme values that still encodes: sizes and spans at the bounds, table
/// counts made to match, lost ranges and stamps at the ends of their types, bad names, odd
/// times, a version that names another layout. Byte damage rarely makes these.
fn extreme_manifest(s: &Snapshot, rng: &mut Rng) -> Snapshot {
    let mut s = s.clone();
    for _ in 0..1 + rng.below(3) {
        let n = s.disks.len() + s.files.len();
        let i = rng.below(n);
        let d = if i < s.disks.len() {
            &mut s.disks[i]
        } else {
            &mut s.files[i - s.disks.len()]
        };
        match rng.below(10) {
            0 | 1 => {
                d.size = rng.pick(&U64_VALUES);
                d.table_span = match rng.below(3) {
                    0 => d.table_span,
                    1 => 1 << (30 + rng.below(34)),
                    _ => rng.pick(&U64_VALUES),
                };
                // Make the count match when it is small enough to encode, so the damage
                // gets past problem() to whatever trusts it next.
                if let Some(n) = d
                    .size
                    .checked_div(d.table_span)
                    .filter(|_| d.table_span.is_power_of_two())
                {
                    let want = n + (d.size % d.table_span != 0) as u64;
                    if want <= 64 {
                        d.tables = vec![d.tables.first().copied().flatten(); want as usize];
                    }
                }
            }
            2 => d.lost.push((rng.pick(&U64_VALUES), rng.pick(&U64_VALUES))),
            3 => {
                d.stamp = Some(SourceStamp {
                    dev: rng.pick(&U64_VALUES),
                    ino: rng.next(),
                    size: rng.pick(&U64_VALUES),
                    mtime_ns: rng.pick(&U64_VALUES) as i64,
                    ctime_ns: i64::MIN,
                })
            }
            4 | 5 => {
                let long = vec![b'a'; rng.pick(&[255, 256, 4096])];
                let bad: [&[u8]; 8] = [
                    b"",
                    b".",
                    b"..",
                    b"../../etc/cron.d/x",
                    b"a/b",
                    b"a\0b",
                    b"\xff\xfe.img",
                    &long,
                ];
                d.name = Name::new(rng.pick(&bad));
            }
            6 => {
                let n = rng.below(300);
                d.config_ref = Some(Name::new(rng.bytes(n)))
            }
            7 => d.tables.push(None),
            8 => {
                let other = s
                    .items()
                    .nth(rng.below(n))
                    .map(|d| d.name.clone())
                    .unwrap_or_default();
                let d = s.disks.last_mut().unwrap();
                d.name = other;
            }
            _ => {
                let n = rng.below(40);
                d.format = String::from_utf8_lossy(&rng.bytes(n)).into_owned()
            }
        }
    }
    match rng.below(8) {
        0 => s.vm = String::new(),
        1 => {
            s.time = rng
                .pick(&[
                    "",
                    "yesterday",
                    "+275760-09-13T00:00:00Z",
                    "2026-13-45T99:99:99+25:00",
                ])
                .into()
        }
        2 => s.tags = (0..1000).map(|i| format!("tag{i}")).collect(),
        3 => s.version = rng.pick(&[0, 1, 2, 4, u32::MAX]),
        _ => {}
    }
    s
}

#[test]
fn fuzz_snapshot_manifests() {
    let f = fixture(false);
    let v3 = f.manifest.encode();
    let v2 = old_encoding(&f.manifest, 2);
    let v1 = old_encoding(&f.manifest, 1);
    for (b, v) in [(&v3, 3), (&v2, 2), (&v1, 1)] {
        let s = Snapshot::decode(b, "fixture").unwrap();
        assert_eq!((s.version, s.disks.len()), (v, 3));
    }
    let mut bases = [
        (
            Target::new("manifest v3"),
            manifest_fields(&v3, 3),
            v3.clone(),
        ),
        (Target::new("manifest v2"), manifest_fields(&v2, 2), v2),
        (Target::new("manifest v1"), manifest_fields(&v1, 1), v1),
    ];
    let mut values = Target::new("manifest v3 values");
    for case in 0..cases() {
        for (t, fields, base) in &mut bases {
            let m = mutate(base, fields, &mut t.rng(case));
            let input = m.clone();
            t.run(case, &input, move || {
                let r = Snapshot::decode(&m, "fuzz");
                if let Ok(s) = &r {
                    use_manifest(s);
                }
                verdict(&r)
            });
        }
        let mut rng = values.rng(case);
        let m = extreme_manifest(&f.manifest, &mut rng).encode();
        // Half of them damaged in their bytes too.
        let m = if rng.one_in(2) {
            let fields = manifest_fields(&m, 3);
            mutate(&m, &fields, &mut rng)
        } else {
            m
        };
        let input = m.clone();
        values.run(case, &input, move || {
            let r = Snapshot::decode(&m, "fuzz");
            if let Ok(s) = &r {
                use_manifest(s);
            }
            verdict(&r)
        });
    }
    bases.iter().for_each(|(t, _, _)| t.report());
    values.report();
}

#[test]
fn fuzz_snapshot_files() {
    for (f, names) in [
        (
            fixture(false),
            ["snapshot file", "snapshot old name", "snapshot payload"],
        ),
        (
            fixture(true),
            [
                "snapshot file enc",
                "snapshot old name enc",
                "snapshot resealed enc",
            ],
        ),
    ] {
        let fields = manifest_fields(&f.manifest.encode(), 3);
        whole_files(
            &f,
            names,
            &f.snapshot_name,
            FileKind::Snapshot,
            &fields,
            read_snapshot,
        );
    }
}

// ---------------------------------------------------------------------------------------
// 2. Index files

#[test]
fn fuzz_index() {
    let mut payload = Target::new("index payload");
    let f = fixture(false);
    let base = f.repo.read_index(&f.index_name).unwrap().encode();
    let fields = index_fields(&base);
    for case in 0..cases() {
        let m = mutate(&base, &fields, &mut payload.rng(case));
        let input = m.clone();
        payload.run(case, &input, move || {
            let r = IndexFile::decode(&m, 2, "fuzz");
            if let Ok(i) = &r {
                let _ = i.blob_count();
            }
            verdict(&r)
        });
    }
    payload.report();
    for (f, names) in [
        (f, ["index file", "index old name", "index payload sealed"]),
        (
            fixture(true),
            ["index file enc", "index old name enc", "index resealed enc"],
        ),
    ] {
        let name = f.index_name.clone();
        whole_files(
            &f,
            names,
            &name,
            FileKind::Index,
            &fields_of_index(&f),
            read_index,
        );
    }
}

fn fields_of_index(f: &Fixture) -> Vec<Field> {
    index_fields(&f.repo.read_index(&f.index_name).unwrap().encode())
}

// ---------------------------------------------------------------------------------------
// 3. Chunk tables

#[test]
fn fuzz_chunk_tables() {
    let f = fixture(false);
    let mut t = Target::new("chunk table");
    let bases: Vec<(Vec<Field>, &Vec<u8>)> =
        f.tables.iter().map(|b| (table_fields(b), b)).collect();
    for case in 0..cases() {
        let mut rng = t.rng(case);
        let (fields, base) = &bases[rng.below(bases.len())];
        let m = mutate(base, fields, &mut rng);
        let input = m.clone();
        t.run(case, &input, move || {
            let r = ChunkTable::decode(&m, "fuzz");
            if let Ok(t) = &r {
                let _ = (t.len(), t.is_hole(), t.encode());
            }
            verdict(&r)
        });
    }
    t.report();
}

// ---------------------------------------------------------------------------------------
// 4. Packs and blobs

/// A pack's parts: where its blobs end, its header, and its table of contents (opened).
fn pack_parts(keys: &Keys, bytes: &[u8]) -> (usize, FileHeader, Vec<u8>) {
    let toc_len = u32_at(bytes, bytes.len() - 4);
    let blob_end = bytes.len() - 4 - toc_len;
    let header = FileHeader::decode(FileKind::Pack, bytes, keys, "fixture").unwrap();
    let toc = header
        .sealer(keys)
        .open(
            &bytes[blob_end..bytes.len() - 4],
            &bytes[..HEADER_LEN],
            &String::new,
        )
        .unwrap();
    (blob_end, header, toc)
}

/// Parses a pack and, if that succeeds, opens every blob it lists, as check and prune do.
fn parse_and_open(keys: &Keys, id: &Id, bytes: &[u8]) -> Result<()> {
    let p = pack::parse_pack(keys, id, bytes)?;
    let sealer = p.header.sealer(keys);
    for e in &p.entries {
        let stored = &bytes[e.offset as usize..e.offset as usize + e.length as usize];
        let _ = pack::open_blob(keys, &sealer, e, stored, id);
    }
    Ok(())
}

#[test]
fn fuzz_packs() {
    for f in [fixture(false), fixture(true)] {
        let enc = f.encrypted();
        let mut raw = Target::new(if enc { "pack enc" } else { "pack" });
        let mut old_name = Target::new(if enc {
            "pack old name enc"
        } else {
            "pack old name"
        });
        let mut resealed = Target::new("pack resealed toc enc");
        let bases: Vec<_> = f
            .packs
            .iter()
            .map(|(id, bytes)| {
                let (blob_end, header, toc) = pack_parts(f.keys(), bytes);
                let mut fields = trailer_fields(bytes);
                if !enc {
                    // Unsealed, the table of contents lies in the file as it is.
                    fields.extend(toc_fields(&toc, blob_end));
                }
                (*id, bytes, fields, blob_end, header, toc)
            })
            .collect();
        for case in 0..cases() {
            let mut rng = raw.rng(case);
            let (id, base, fields, blob_end, header, toc) = &bases[rng.below(bases.len())];
            let m = mutate(base, fields, &mut rng);
            let keys = f.keys().clone();
            let input = m.clone();
            raw.run(case, &input, move || {
                verdict(&parse_and_open(&keys, &Id::of_file(&m), &m))
            });

            let m = mutate(base, fields, &mut old_name.rng(case));
            let (keys, id, changed) = (f.keys().clone(), *id, m != **base);
            let input = m.clone();
            old_name.run(case, &input, move || {
                match pack::parse_pack(&keys, &id, &m) {
                    Ok(_) if changed => {
                        Verdict::Wrong("accepted a changed pack under its old name".into())
                    }
                    r => verdict(&r),
                }
            });

            if enc {
                let mut rng = resealed.rng(case);
                let m = mutate(toc, &toc_fields(toc, 0), &mut rng);
                let h = header.encode();
                let sealed = header.sealer(f.keys()).seal(&m, &h);
                let mut p = base[..*blob_end].to_vec();
                p.extend_from_slice(&sealed);
                p.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
                let keys = f.keys().clone();
                let input = p.clone();
                resealed.run(case, &input, move || {
                    verdict(&parse_and_open(&keys, &Id::of_file(&p), &p))
                });
            }
        }
        raw.report();
        old_name.report();
        if enc {
            resealed.report();
        }
    }
}

/// One blob of a fixture pack: its entry, stored bytes, pack and sealer.
struct Blob {
    entry: PackEntry,
    stored: Vec<u8>,
    pack: Id,
    sealer: Sealer,
}

fn blobs(f: &Fixture) -> Vec<Blob> {
    let mut out = Vec::new();
    for (id, bytes) in &f.packs {
        let p = pack::parse_pack(f.keys(), id, bytes).unwrap();
        for e in p.entries {
            out.push(Blob {
                entry: e,
                stored: bytes[e.offset as usize..(e.offset + e.length) as usize].to_vec(),
                pack: *id,
                sealer: p.header.sealer(f.keys()),
            });
        }
    }
    out
}

fn blob_aad(e: &PackEntry) -> Vec<u8> {
    let mut aad = e.id.0.to_vec();
    aad.push(e.kind as u8);
    aad
}

/// Opens a blob as a restore does and moves it as prune's repacking does; a table blob that
/// opens is decoded as one.
fn open_and_reseal(keys: &Keys, b: &Blob, e: &PackEntry, stored: &[u8]) -> Result<()> {
    let fresh = keys.sealer(&[9; 32]);
    let _ = pack::reseal_blob(&b.sealer, &fresh, e, stored, &b.pack);
    let plain = pack::open_blob(keys, &b.sealer, e, stored, &b.pack)?;
    if e.kind == BlobKind::Table {
        ChunkTable::decode(&plain, "fuzz")?;
    }
    Ok(())
}

#[test]
fn fuzz_blobs() {
    for f in [fixture(false), fixture(true)] {
        let enc = f.encrypted();
        let blobs: Arc<Vec<Blob>> = Arc::new(blobs(&f));
        let mut bytes = Target::new(if enc { "blob bytes enc" } else { "blob bytes" });
        let mut entries = Target::new(if enc { "blob entry enc" } else { "blob entry" });
        let mut resealed = Target::new("blob resealed enc");
        for case in 0..cases() {
            let mut rng = bytes.rng(case);
            let i = rng.below(blobs.len());
            let m = mutate(&blobs[i].stored, &[], &mut rng);
            let (keys, all, input) = (f.keys().clone(), blobs.clone(), m.clone());
            bytes.run(case, &input, move || {
                verdict(&open_and_reseal(&keys, &all[i], &all[i].entry, &m))
            });

            let mut rng = entries.rng(case);
            let i = rng.below(blobs.len());
            let mut enc_entry = Vec::new();
            blobs[i].entry.encode_into(&mut enc_entry);
            let m = mutate(&enc_entry, &entry_fields(0), &mut rng);
            let (keys, all, input) = (f.keys().clone(), blobs.clone(), m.clone());
            entries.run(case, &input, move || match PackEntry::decode(&m) {
                Some(e) => verdict(&open_and_reseal(&keys, &all[i], &e, &all[i].stored)),
                None => Verdict::Refused,
            });

            if enc {
                let mut rng = resealed.rng(case);
                let i = rng.below(blobs.len());
                let b = &blobs[i];
                let aad = blob_aad(&b.entry);
                let payload = b.sealer.open(&b.stored, &aad, &String::new).unwrap();
                let m = mutate(&payload, &[], &mut rng);
                let stored = b.sealer.seal(&m, &aad);
                let (keys, all, input) = (f.keys().clone(), blobs.clone(), m.clone());
                resealed.run(case, &input, move || {
                    verdict(&open_and_reseal(&keys, &all[i], &all[i].entry, &stored))
                });
            }
        }
        bytes.report();
        entries.report();
        if enc {
            resealed.report();
        }
    }
}

// ---------------------------------------------------------------------------------------
// 5. Key files

/// Parses a key file and unwraps it, never starting argon2id with parameters problem()
/// refuses; accepted parameters above the test's budget are checked against problem()'s
/// caps instead of being run.
fn key_case(m: &[u8]) -> Verdict {
    let Ok(kf) = serde_json::from_slice::<KeyFile>(m) else {
        return Verdict::Refused;
    };
    let p = kf.kdf_params;
    let problem = p.problem();
    if problem.is_none()
        && (p.m_cost > KDF_RUN_MAX_M || p.m_cost as u64 * p.t_cost as u64 > KDF_RUN_MAX_WORK)
    {
        let bounded = p.m_cost <= KdfParams::MAX_M_COST
            && p.t_cost <= KdfParams::MAX_T_COST
            && (1..=KdfParams::MAX_P_COST).contains(&p.p_cost)
            && p.m_cost as u64 * p.t_cost as u64 <= KdfParams::MAX_WORK;
        return if bounded {
            Verdict::Skipped
        } else {
            Verdict::Wrong(format!("problem() accepts {p:?}"))
        };
    }
    let r = kf.unwrap_master(PASSWORD, "keys/fuzz");
    match (problem, r) {
        (None, Ok(Some(_))) => Verdict::Decoded,
        (None, _) => Verdict::Refused,
        (Some(_), Ok(_)) => Verdict::Wrong(format!("unwrapped with refused parameters {p:?}")),
        (Some(_), Err(e)) => {
            // Both refusals come before the KDF; any other error means it ran.
            let msg = e.to_string();
            if !msg.contains("parameters are refused") && !msg.contains("unknown KDF") {
                return Verdict::Wrong(format!("refused parameters {p:?} reached the KDF: {msg}"));
            }
            if p.derive(PASSWORD.as_bytes(), &[0; 32]).is_ok() {
                return Verdict::Wrong(format!("derive() ran with refused parameters {p:?}"));
            }
            Verdict::Refused
        }
    }
}

#[test]
fn fuzz_key_files() {
    let f = fixture(true);
    let base = f.key_file.clone().unwrap();
    let value: Value = serde_json::from_slice(&base).unwrap();
    assert!(
        matches!(key_case(&base), Verdict::Decoded),
        "the fixture's key file opens"
    );
    let mut bytes = Target::new("key file bytes");
    let mut values = Target::new("key file values");
    for case in 0..cases() {
        let m = mutate(&base, &[], &mut bytes.rng(case));
        let input = m.clone();
        bytes.run(case, &input, move || key_case(&m));
        let m = serde_json::to_vec_pretty(&mutate_json(&value, &mut values.rng(case))).unwrap();
        let input = m.clone();
        values.run(case, &input, move || key_case(&m));
    }
    bytes.report();
    values.report();
}

// ---------------------------------------------------------------------------------------
// 6. The config

/// What a config that opens must also satisfy: what `init` checked and backup relies on.
fn config_problem(c: &Config) -> Option<String> {
    (!c.table_span.is_power_of_two() || c.table_span < c.chunker.segment_size as u64)
        .then(|| format!("opened with table_span {}", c.table_span))
}

/// A copy of the fixture's repository holding only `config` and `keys/`, for configs to be
/// written into.
fn scratch_repo(f: &Fixture, dir: &Path) -> PathBuf {
    let p = dir.join("scratch");
    std::fs::create_dir_all(p.join("keys")).unwrap();
    for name in f
        .repo
        .backend
        .list("keys")
        .unwrap()
        .into_iter()
        .map(|l| l.name)
    {
        std::fs::write(p.join(&name), f.repo.backend.get(&name).unwrap()).unwrap();
    }
    p
}

#[test]
fn fuzz_configs() {
    let dir = tempfile::tempdir().unwrap();
    for f in [fixture(false), fixture(true)] {
        let enc = f.encrypted();
        let scratch = Arc::new(scratch_repo(&f, &dir.path().join(enc.to_string())));
        let value: Value = serde_json::from_slice(&f.config).unwrap();
        let mut bytes = Target::new(if enc {
            "config bytes enc"
        } else {
            "config bytes"
        });
        let mut values = Target::new(if enc {
            "config values enc"
        } else {
            "config values"
        });
        let mut resealed = Target::new("config resealed enc");
        let open = |t: &mut Target, case: usize, m: Vec<u8>| {
            std::fs::write(scratch.join("config"), &m).unwrap();
            let s = scratch.clone();
            t.run(case, &m, move || {
                match Repository::open(s.as_path(), &|| Ok(PASSWORD.into())) {
                    Ok(r) => config_problem(&r.config).map_or(Verdict::Decoded, Verdict::Wrong),
                    Err(_) => Verdict::Refused,
                }
            });
        };
        for case in 0..cases() {
            let m = mutate(&f.config, &[], &mut bytes.rng(case));
            open(&mut bytes, case, m);
            let mut rng = values.rng(case);
            let v = mutate_json(&value, &mut rng);
            open(&mut values, case, serde_json::to_vec_pretty(&v).unwrap());
            if enc {
                // The same changes with a valid MAC: what the checks behind the MAC see.
                let v = mutate_json(&value, &mut resealed.rng(case));
                let m = match serde_json::from_value::<Config>(v.clone()) {
                    Ok(mut c) => {
                        c.seal(f.keys());
                        serde_json::to_vec_pretty(&c).unwrap()
                    }
                    Err(_) => serde_json::to_vec_pretty(&v).unwrap(),
                };
                open(&mut resealed, case, m);
            }
        }
        bytes.report();
        values.report();
        if enc {
            resealed.report();
        }
    }
}

// ---------------------------------------------------------------------------------------
// 7. The envelope

#[test]
fn fuzz_envelope() {
    let f = fixture(false);
    let manifest = f.manifest.encode();
    let index = f.repo.read_index(&f.index_name).unwrap().encode();
    let payloads = [manifest, index];
    let mut files = Target::new("envelope file");
    let mut files_enc = Target::new("envelope file enc");
    let mut decompress = Target::new("decompress");
    let keysets = [Keys::unencrypted(), Keys::from_master([5; 64])];
    for case in 0..cases() {
        for (t, keys) in [(&mut files, &keysets[0]), (&mut files_enc, &keysets[1])] {
            let mut rng = t.rng(case);
            let kind = rng.pick(&[FileKind::Index, FileKind::Snapshot]);
            let base = envelope::encode_file(kind, keys, &payloads[rng.below(2)], 3);
            let m = mutate(&base, &trailer_fields(&base), &mut rng);
            let (keys, input) = (keys.clone(), m.clone());
            t.run(case, &input, move || {
                verdict(&envelope::decode_file(kind, &keys, &m, "fuzz"))
            });
        }
        let mut rng = decompress.rng(case);
        let plain = &payloads[rng.below(2)];
        let (comp, data) = envelope::compress(plain, rng.pick(&[0, 1, 3, 19]));
        let mut base = vec![comp];
        base.extend_from_slice(&data);
        let m = if rng.one_in(4) {
            base
        } else {
            mutate(&base, &[], &mut rng)
        };
        let raw_len = match rng.below(3) {
            0 => plain.len(),
            1 => rng.pick(&U32_VALUES) as usize,
            _ => rng.pick(&[plain.len() - 1, plain.len() + 1, 1 << 40, usize::MAX]),
        };
        let input = m.clone();
        decompress.run(case, &input, move || {
            verdict(&envelope::decompress(&m, raw_len, &|| "fuzz".to_string()))
        });
    }
    files.report();
    files_enc.report();
    decompress.report();
}
