//! Mutation fuzzing over two small images: an ext4 one (1 KiB blocks, extents with an
//! index level, htree, inline data, metadata_csum) and an ext3 one (block maps with
//! double and triple indirection, a journal). Hot ranges are the metadata as the reader
//! itself finds it in the pristine image: every used block that is not file data.

use super::fixtures::*;
use crate::blockdev::BlockRead;
use crate::fs::ext4::{open_ext4, Ext4};
use crate::fs::testutil::{fuzz_cases, mutate, walk};
use crate::fs::{FileType, Filesystem};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

/// Byte ranges of `fs` holding metadata: used blocks minus file and journal data.
fn hot_ranges(fs: &Ext4) -> Vec<Range<usize>> {
    let bs = fs.block_size();
    let mut data: Vec<Range<u64>> = Vec::new();
    let tree = walk(fs).unwrap();
    let mut inos: Vec<u64> = tree
        .values()
        .filter(|(m, _)| m.kind == FileType::File)
        .map(|(m, _)| m.ino)
        .collect();
    inos.push(8); // the journal
    for ino in inos {
        for m in fs.map(ino).unwrap_or_default() {
            if let Some(d) = m.disk_offset {
                data.push(d / bs..(d + m.len).div_ceil(bs));
            }
        }
    }
    data.sort_by_key(|r| r.start);
    let is_data = |b: u64| {
        let i = data.partition_point(|r| r.end <= b);
        data.get(i).is_some_and(|r| r.start <= b)
    };
    let mut out: Vec<Range<usize>> = Vec::new();
    out.push(1024..2048);
    for r in fs.used_blocks().unwrap() {
        for b in r {
            if !is_data(b) {
                let a = (b * bs) as usize;
                match out.last_mut() {
                    Some(last) if last.end == a => last.end = a + bs as usize,
                    _ => out.push(a..a + bs as usize),
                }
            }
        }
    }
    out
}

fn fixture(tmp: &Path, tool: &str, opts: &[&str], entries: usize) -> Vec<u8> {
    let src = tmp.join(format!("src-{tool}"));
    std::fs::create_dir(&src).unwrap();
    build_tree(&src, false, entries);
    // The sparse file's 100 MiB are holes but each piece costs blocks; keep it.
    let img = mkfs(&src, tmp, tool, opts, 8, true);
    std::fs::read(img).unwrap()
}

fn run(image: Vec<u8>, cases: usize, seed: u64) -> crate::fs::testutil::FuzzStats {
    let fs = open_ext4(Arc::new(crate::blockdev::MemDisk(image.clone()))).unwrap();
    let hot = hot_ranges(&fs);
    assert!(!hot.is_empty());
    mutate(image, &hot, cases, seed, |dev: Arc<dyn BlockRead>| {
        let fs = open_ext4(dev)?;
        let _ = fs.used_blocks();
        Ok(Arc::new(fs) as Arc<dyn Filesystem>)
    })
}

#[test]
fn fuzz_ext4() {
    if !tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ext4 = fixture(
        tmp.path(),
        "mkfs.ext4",
        &[
            "-b",
            "1024",
            "-N",
            "256",
            "-O",
            "inline_data,metadata_csum,64bit",
        ],
        120,
    );
    let ext3 = fixture(tmp.path(), "mkfs.ext3", &["-b", "1024", "-N", "256"], 60);
    let cases = fuzz_cases(1500);
    let a = run(ext4, cases.div_ceil(2), 0x5eed_e474);
    let b = run(ext3, cases / 2, 0x5eed_e473);
    eprintln!(
        "fuzz_ext4: ext4 image {} cases ({} opened, {} refused); ext3 image {} cases ({} opened, {} refused)",
        a.cases, a.opened, a.errors, b.cases, b.opened, b.errors
    );
}
