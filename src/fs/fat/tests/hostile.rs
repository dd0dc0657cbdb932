//! Damaged and mutated images: every answer is Ok or an error naming the problem.

use super::super::*;
use super::{blank, build_tree, fill, find, fragment, noise, s, tool, tools};
use crate::blockdev::MemDisk;
use crate::fs::testutil;
use std::path::Path;

/// The three fixtures the mutation test and its hot ranges use.
fn fixtures(tmp: &Path) -> Vec<(Vec<u8>, Vec<Range<usize>>)> {
    let src = tmp.join("fsrc");
    build_tree(&src, 40_000, 40);
    let mut out = Vec::new();
    let kinds: [(FatType, u64, &[&str]); 3] = [
        (FatType::Fat12, 1_474_560, &["-F", "12"]),
        (FatType::Fat16, 4 << 20, &["-F", "16", "-s", "1"]),
        (FatType::Fat32, 34 << 20, &["-F", "32", "-s", "1"]),
    ];
    for (i, (want, size, args)) in kinds.into_iter().enumerate() {
        let name = want.name();
        let img = tmp.join(format!("fuzz-{name}.img"));
        blank(&img, size);
        let mut a: Vec<&str> = args.to_vec();
        a.push(s(&img));
        tool("mkfs.vfat", &a);
        fill(&img, &src);
        let scratch = tmp.join(format!("scratch{i}"));
        fragment(&img, &scratch.join("src"), &scratch, 512);
        let data = testutil::load(&img);
        let g = bpb::parse(&data[..512], data.len() as u64).unwrap();
        assert!(
            g.fat_type == want && g.notes.is_empty(),
            "{name}: {:?}",
            g.notes
        );
        let r = |start: u64, len: u64| start as usize..(start + len).min(size) as usize;
        let hot = vec![
            0..512,
            r(g.fat_offset, g.fat_used.min(16 << 10)),
            r(g.root_offset, (g.root_entries * 32).max(1)),
            r(g.data_offset, 64 << 10),
        ];
        out.push((data, hot));
    }
    out
}

#[test]
fn fuzz_fat() {
    if !tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cases = testutil::fuzz_cases(1500);
    for (i, (image, hot)) in fixtures(tmp.path()).into_iter().enumerate() {
        // Sanity: the unmutated fixture opens and walks.
        let fs = open(Arc::new(MemDisk(image.clone()))).unwrap();
        testutil::walk(fs.as_ref()).unwrap();
        let stats = testutil::mutate(
            image,
            &hot,
            cases / 3 + 1,
            0x9E37_79B9_7F4A_7C15u64.wrapping_mul(i as u64 + 1),
            |dev| {
                let _ = probe(dev.as_ref());
                let fat = Fat::open(dev)?;
                let _ = fat.used_clusters();
                Ok(Arc::new(fat) as Arc<dyn Filesystem>)
            },
        );
        eprintln!("fuzz_fat fixture {i}: {stats:?}");
        assert!(stats.opened > 0);
    }
}

/// Damaged chains, made by patching the FAT of a real image: each is an error naming the
/// problem, never a wrong answer; the entry itself still stats.
#[test]
fn damaged_chains() {
    if !tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("d.img");
    blank(&img, 4 << 20);
    tool("mkfs.vfat", &["-F", "16", "-s", "1", s(&img)]);
    let src = tmp.path().join("dsrc");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("file.bin"), noise(5000, 3)).unwrap();
    std::fs::write(src.join("sub/x.txt"), b"x").unwrap();
    fill(&img, &src);
    let base = testutil::load(&img);
    let fat = Fat::open(Arc::new(MemDisk(base.clone()))).unwrap();
    let file = find(&fat, "file.bin");
    let sub = find(&fat, "sub");
    let first = |ino| match fat.node(ino).unwrap() {
        Node::Entry(i) => i.first_cluster,
        Node::Root => unreachable!(),
    };
    let (f, d) = (first(file), first(sub));
    let entry = |c: u32| fat.geo.fat_offset as usize + 2 * c as usize;
    let cases: [(u32, u16, &str); 5] = [
        (f + 2, f as u16, "loops"),
        (f + 2, 0, "free cluster"),
        (f + 2, 0xFFFF, "ends after 3 of the 10"),
        (f + 2, 0xFFF7, "bad cluster"),
        (f + 2, 0xFFF0, "not a cluster of the volume"),
    ];
    for (at, v, want) in cases {
        let mut b = base.clone();
        b[entry(at)..entry(at) + 2].copy_from_slice(&v.to_le_bytes());
        let fat = Fat::open(Arc::new(MemDisk(b))).unwrap();
        assert_eq!(fat.stat(file).unwrap().size, 5000);
        let e = fat.read(file, 0, &mut [0u8; 100]).unwrap_err().to_string();
        assert!(e.contains(want), "{want}: {e}");
        assert!(fat.map(file).unwrap_err().to_string().contains(want));
    }
    // A directory whose chain points back at itself: longer than 65536 entries allow.
    let mut b = base.clone();
    b[entry(d)..entry(d) + 2].copy_from_slice(&(d as u16).to_le_bytes());
    let fat2 = Fat::open(Arc::new(MemDisk(b))).unwrap();
    let e = fat2.read_dir(sub).unwrap_err().to_string();
    assert!(e.contains("longer than"), "{e}");
    assert_eq!(
        fat2.stat(sub).unwrap().size,
        0,
        "a damaged chain sizes as 0"
    );
    // A file entry pointing outside the volume.
    let mut b = base.clone();
    let at = file as usize + 26;
    b[at..at + 2].copy_from_slice(&0xFFF0u16.to_le_bytes());
    let fat3 = Fat::open(Arc::new(MemDisk(b))).unwrap();
    let e = fat3.read(file, 0, &mut [0u8; 10]).unwrap_err().to_string();
    assert!(e.contains("outside"), "{e}");
}
