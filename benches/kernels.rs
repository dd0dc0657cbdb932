//! Throughput of cairn's hot kernels: chunking, chunk ids, compression, sealing, and the
//! whole in-memory store path (id + compress + seal + pack). No disk I/O.
//!
//! Run: `cargo bench --bench kernels`. Every benchmark processes a 16 MiB input per
//! iteration and reports bytes/s of plaintext.

use cairn::chunker::{is_zero, Chunker};
use cairn::crypto::Keys;
use cairn::repo::config::ChunkerParams;
use cairn::repo::envelope::{self, FileHeader, FileKind};
use cairn::repo::pack::{seal_blob, BlobKind, PackWriter};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;

const INPUT: usize = 16 << 20;
const CHUNK: usize = 64 << 10;

/// Deterministic xorshift64* generator, so every run sees the same bytes.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Incompressible pseudo-random bytes.
fn random_data(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&rng.next().to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Log-like text: lines of words from a small vocabulary and decimal/hex numbers, with an
/// occasional run of random bytes. Compresses roughly 3:1 with zstd.
fn text_data(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "kernel", "disk", "block", "write", "read", "error", "warning", "info", "debug", "sector",
        "volume", "snapshot", "backup", "restore", "network", "packet", "device", "driver",
        "thread", "process", "memory", "page", "cache", "flush", "sync", "mount", "inode",
        "journal", "commit", "offset", "length", "request", "timeout", "retry", "queue", "server",
        "client", "session", "token", "user", "admin", "config", "update", "service", "started",
        "stopped", "failed", "ok", "the", "a", "of", "to", "in", "for", "with", "on", "at", "from",
        "by", "and", "or", "not", "is", "was",
    ];
    let mut rng = Rng::new(seed);
    let mut v = Vec::with_capacity(len + 256);
    // Milliseconds since midnight; log timestamps only move forward.
    let mut ms = 0usize;
    while v.len() < len {
        ms += rng.below(2000);
        let line = format!(
            "2024-05-{:02}T{:02}:{:02}:{:02}.{:03} host{:02} ",
            1 + ms / 86_400_000 % 28,
            ms / 3_600_000 % 24,
            ms / 60_000 % 60,
            ms / 1000 % 60,
            ms % 1000,
            rng.below(8),
        );
        v.extend_from_slice(line.as_bytes());
        for _ in 0..4 + rng.below(8) {
            match rng.below(10) {
                0 => v.extend_from_slice(format!("{} ", rng.next() % 1_000_000).as_bytes()),
                1 => v.extend_from_slice(format!("id=0x{:08x} ", rng.next() as u32).as_bytes()),
                _ => {
                    // Skewed towards the first words, like real text.
                    let top = 1 + rng.below(WORDS.len());
                    let w = rng.below(top);
                    v.extend_from_slice(WORDS[w].as_bytes());
                    v.push(b' ');
                }
            }
        }
        if rng.below(8) == 0 {
            for _ in 0..rng.below(24) {
                v.push(rng.next() as u8);
            }
        }
        v.push(b'\n');
    }
    v.truncate(len);
    v
}

fn keys() -> Keys {
    let mut master = [0u8; 64];
    master.copy_from_slice(&random_data(64, 0xCA1E)[..]);
    Keys::from_master(master)
}

fn chunking(c: &mut Criterion) {
    let data = random_data(INPUT, 1);
    let seed = keys().chunker_seed();
    // One allocated range covering the whole input.
    let whole = 0..data.len();
    let all = std::slice::from_ref(&whole);
    let mut g = c.benchmark_group("chunking");
    g.throughput(Throughput::Bytes(INPUT as u64));
    for avg in [16u32 << 10, 64 << 10, 256 << 10, 1 << 20] {
        let chunker = Chunker::new(ChunkerParams::fastcdc(avg), seed);
        g.bench_with_input(
            BenchmarkId::new("fastcdc", format!("{}K", avg >> 10)),
            &data,
            |b, d| b.iter(|| chunker.split(black_box(d), all)),
        );
    }
    // On non-zero data the fixed chunker only runs `is_zero` per chunk, which stops at the
    // first non-zero word: this measures the per-chunk overhead, not a scan of the bytes.
    let fixed = Chunker::new(ChunkerParams::fixed(CHUNK as u32), seed);
    g.bench_with_input(BenchmarkId::new("fixed", "64K"), &data, |b, d| {
        b.iter(|| fixed.split(black_box(d), all))
    });
    // Cut rules 2 and 3 at the default 32 KiB on what a file system holds: text files of
    // 300 B to 40 KiB, each starting on a 4 KiB boundary with its last block's rest zero
    // (rule 3 cuts at most of those starts).
    let mut volume = Vec::with_capacity(INPUT + 64 * 1024);
    let mut rng = Rng::new(7);
    while volume.len() < INPUT {
        let len = 300 + rng.below(40 << 10);
        volume.extend_from_slice(&text_data(len, rng.next()));
        volume.resize(volume.len().next_multiple_of(4096), 0);
    }
    volume.truncate(INPUT);
    for rule in [2, 3] {
        let mut p = ChunkerParams::fastcdc(32 << 10);
        p.cut_rule = rule;
        let chunker = Chunker::new(p, seed);
        g.bench_with_input(
            BenchmarkId::new("files/32K", format!("rule{rule}")),
            &volume,
            |b, d| b.iter(|| chunker.split(black_box(d), all)),
        );
    }
    let zeros = vec![0u8; INPUT];
    g.bench_with_input("is_zero", &zeros, |b, d| b.iter(|| is_zero(black_box(d))));
    g.finish();
}

fn hashing(c: &mut Criterion) {
    let data = random_data(INPUT, 2);
    let keys = keys();
    let mut g = c.benchmark_group("hashing");
    g.throughput(Throughput::Bytes(INPUT as u64));
    g.bench_function("chunk_id/64K", |b| {
        b.iter(|| {
            for chunk in black_box(&data).chunks(CHUNK) {
                black_box(keys.chunk_id(chunk));
            }
        })
    });
    g.bench_function("blake3/16M", |b| b.iter(|| blake3::hash(black_box(&data))));
    g.finish();
}

fn compression(c: &mut Criterion) {
    let inputs = [
        ("random", random_data(INPUT, 3)),
        ("text", text_data(INPUT, 4)),
    ];
    let mut g = c.benchmark_group("compression");
    g.throughput(Throughput::Bytes(INPUT as u64));
    for (name, data) in &inputs {
        for level in [1, 3] {
            g.bench_function(format!("compress/{name}/zstd{level}"), |b| {
                b.iter(|| {
                    for chunk in black_box(data).chunks(CHUNK) {
                        black_box(envelope::compress(chunk, level));
                    }
                })
            });
        }
    }
    for (name, data) in &inputs {
        for level in [1, 3] {
            // Raw zstd frames, also for random data (which `compress` would store as is).
            let frames: Vec<Vec<u8>> = data
                .chunks(CHUNK)
                .map(|chunk| zstd::bulk::compress(chunk, level).expect("zstd compress"))
                .collect();
            let packed: usize = frames.iter().map(Vec::len).sum();
            eprintln!(
                "compression: {name} data, zstd level {level}: ratio {:.2}",
                data.len() as f64 / packed as f64
            );
            g.bench_function(format!("decompress/{name}/zstd{level}"), |b| {
                b.iter(|| {
                    for frame in black_box(&frames) {
                        black_box(zstd::bulk::decompress(frame, CHUNK).expect("zstd decompress"));
                    }
                })
            });
        }
    }
    g.finish();
}

fn sealing(c: &mut Criterion) {
    let data = random_data(INPUT, 5);
    let keys = keys();
    let header = FileHeader::new(FileKind::Pack, &keys);
    let sealer = keys.sealer(&header.salt);
    let aad = [7u8; 33];
    let mut g = c.benchmark_group("sealing");
    g.throughput(Throughput::Bytes(INPUT as u64));
    g.bench_function("seal/aes256gcm/64K", |b| {
        b.iter(|| {
            for chunk in black_box(&data).chunks(CHUNK) {
                black_box(sealer.seal(chunk, &aad));
            }
        })
    });
    let sealed: Vec<Vec<u8>> = data
        .chunks(CHUNK)
        .map(|chunk| sealer.seal(chunk, &aad))
        .collect();
    let what = || String::from("bench blob");
    g.bench_function("open/aes256gcm/64K", |b| {
        b.iter(|| {
            for s in black_box(&sealed) {
                black_box(sealer.open(s, &aad, &what).expect("open"));
            }
        })
    });
    g.finish();
}

fn pack_write(c: &mut Criterion) {
    let data = text_data(INPUT, 6);
    let keys = keys();
    let mut g = c.benchmark_group("pack_write");
    g.throughput(Throughput::Bytes(INPUT as u64));
    g.bench_function("text/64K/zstd3", |b| {
        b.iter(|| {
            let header = FileHeader::new(FileKind::Pack, &keys);
            let sealer = keys.sealer(&header.salt);
            let mut pack = PackWriter::new(header, INPUT);
            for chunk in black_box(&data).chunks(CHUNK) {
                let id = keys.chunk_id(chunk);
                let blob = seal_blob(&sealer, BlobKind::Data, id, chunk, 3);
                pack.add(&blob).expect("memory");
            }
            pack.finish(&keys).expect("memory")
        })
    });
    g.finish();
}

fn short() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = kernels;
    config = short();
    targets = chunking, hashing, compression, sealing, pack_write
}
criterion_main!(kernels);
