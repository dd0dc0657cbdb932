//! The index at scale: a repository whose index names N chunks (default 10 million; the
//! first argument sets it), made of synthetic index files shaped like a backup's (packs of
//! about 1000 blobs of 32 KiB, index files of 65,536 entries), without the packs
//! themselves. Measures what a backup host pays for its local index cache:
//!
//! - building the cache from scratch (a new proxy, or a lost cache);
//! - bringing it up to date after one night that added 1 % new chunks;
//! - lookups during a backup (present and absent ids, one thread);
//! - the cache's size on disk and this process's peak memory.
//!
//! `cargo bench --bench index_scale -- 10000000 [DIR]` (DIR: where the repository and cache
//! go, default the system temp folder; they are removed afterwards).

use cairn::repo::index::{IndexFile, IndexPack};
use cairn::repo::pack::{BlobKind, PackEntry};
use cairn::repo::{InitOptions, Repository};
use cairn::Id;
use std::time::Instant;

const BLOBS_PER_PACK: usize = 1000;
const ENTRIES_PER_FILE: usize = 64 * 1024;

/// Deterministic ids: splitmix64 of a counter, stretched to 32 bytes.
fn id(n: u64) -> Id {
    let mut out = [0u8; 32];
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5151_5151;
    for w in out.chunks_mut(8) {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        w.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    Id(out)
}

/// Writes index files naming blobs `from..to`; returns how many files.
fn write_index(repo: &Repository, from: u64, to: u64) -> usize {
    let mut files = 0;
    let mut n = from;
    while n < to {
        let mut idx = IndexFile::default();
        let file_end = (n + ENTRIES_PER_FILE as u64).min(to);
        while n < file_end {
            let pack_end = (n + BLOBS_PER_PACK as u64).min(file_end);
            let entries = (n..pack_end)
                .enumerate()
                .map(|(i, k)| PackEntry {
                    kind: BlobKind::Data,
                    id: id(k),
                    offset: 40 + i as u32 * 20_000,
                    length: 20_000,
                    raw_len: 32 << 10,
                })
                .collect();
            idx.packs.push(IndexPack {
                pack: id(u64::MAX - n),
                salt: [7; 32],
                entries,
            });
            n = pack_end;
        }
        repo.write_index(&idx).expect("writing an index file");
        files += 1;
    }
    files
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn du(path: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.flatten() {
            let m = e.metadata().expect("metadata");
            total += if m.is_dir() { du(&e.path()) } else { m.len() };
        }
    }
    total
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let n: u64 = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let base = args
        .get(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("cairn-index-scale-")
        .tempdir_in(base)
        .expect("scratch folder");
    let cache_dir = dir.path().join("cache");
    std::env::set_var("CAIRN_CACHE_DIR", &cache_dir);
    let repo =
        Repository::init(dir.path().join("repo"), None, &InitOptions::default()).expect("init");

    let t = Instant::now();
    let files = write_index(&repo, 0, n);
    println!(
        "index: {n} blobs in {files} index files ({:.0} MiB), written in {:.1} s",
        du(&dir.path().join("repo/index")) as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let repo = Repository::open(dir.path().join("repo"), &|| Ok(String::new())).expect("open");
    let cache = repo.index_cache().expect("cache");
    let build = t.elapsed().as_secs_f64();
    drop(cache);
    println!(
        "cache from scratch: {build:.1} s ({:.2} M blobs/s), {:.0} MiB on disk ({:.1} bytes per blob), peak RSS {:.0} MiB",
        n as f64 / build / 1e6,
        du(&cache_dir) as f64 / (1 << 20) as f64,
        du(&cache_dir) as f64 / n as f64,
        peak_rss_mib()
    );

    let night = (n / 100).max(1);
    write_index(&repo, n, n + night);
    let t = Instant::now();
    let cache = repo.index_cache().expect("cache");
    println!(
        "after a night adding {night} blobs: {:.2} s, peak RSS {:.0} MiB",
        t.elapsed().as_secs_f64(),
        peak_rss_mib()
    );

    let reader = cache.reader().expect("reader");
    let lookups = 1_000_000u64;
    for (what, offset) in [("present", 0u64), ("absent", 1u64 << 62)] {
        let t = Instant::now();
        let mut found = 0u64;
        for k in 0..lookups {
            // Spread over the whole index, as a backup's chunks are.
            let key = offset + (k.wrapping_mul(0x9E37_79B9) % (n + night));
            if reader.get(&id(key)).expect("lookup").is_some() {
                found += 1;
            }
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "lookups ({what}): {:.2} M/s ({found} of {lookups} found), peak RSS {:.0} MiB",
            lookups as f64 / secs / 1e6,
            peak_rss_mib()
        );
    }
}
