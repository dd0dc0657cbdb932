//! The mutation run `fuzz_lvm`: probe + assemble + reads of every LV over mutated PV
//! images, one made by hand (metadata wrapping around its ring, striped, refused and hidden
//! LVs) and one made by the lvm2 tools. Half the cases recompute the label, mda header and
//! metadata text checksums after mutating, so the damage reaches the metadata parser
//! instead of stopping at a checksum.

use super::label::{crc, INITIAL_CRC};
use super::synth::{pattern, pv_image, standard_lvs, vg_text, Mda, PV0, PV1};
use super::tests::{first_extent_at, lvm, mkfs_at, sparse, vg_name, Backing, Loop};
use super::*;
use std::collections::BTreeMap;

const MIB: usize = 1 << 20;

/// An image with a few bytes changed, over a base shared by every case.
struct Patched {
    base: Arc<Vec<u8>>,
    patch: BTreeMap<usize, u8>,
}

impl Patched {
    fn byte(&self, at: usize) -> u8 {
        self.patch
            .get(&at)
            .copied()
            .unwrap_or_else(|| self.base.get(at).copied().unwrap_or(0))
    }

    fn bytes(&self, at: usize, n: usize) -> Vec<u8> {
        (at..at + n).map(|i| self.byte(i)).collect()
    }

    fn set_u32(&mut self, at: usize, v: u32) {
        for (i, b) in v.to_le_bytes().into_iter().enumerate() {
            self.patch.insert(at + i, b);
        }
    }

    /// Recomputes the label, mda header and text checksums after a mutation, so the
    /// mutation reaches the parsers behind them.
    fn fix_checksums(&mut self, mdas: &[usize]) {
        for &h in mdas {
            let le = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap());
            let size = le(&self.bytes(h + 32, 8)).clamp(513, 1 << 20) as usize;
            let off = le(&self.bytes(h + 40, 8)) as usize;
            let len = (le(&self.bytes(h + 48, 8)) as usize).min(1 << 20);
            if (512..size).contains(&off) {
                let mut text = Vec::with_capacity(len);
                let mut pos = off;
                for _ in 0..len {
                    text.push(self.byte(h + pos));
                    pos += 1;
                    if pos >= size {
                        pos = 512;
                    }
                }
                self.set_u32(h + 56, crc(INITIAL_CRC, &text));
            }
            let c = crc(INITIAL_CRC, &self.bytes(h + 4, 508));
            self.set_u32(h, c);
        }
        let c = crc(INITIAL_CRC, &self.bytes(512 + 20, 492));
        self.set_u32(512 + 16, c);
    }
}

impl BlockRead for Patched {
    fn size(&self) -> u64 {
        self.base.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        read_slice(&self.base, offset, buf)?;
        for (&at, &v) in self
            .patch
            .range(offset as usize..offset as usize + buf.len())
        {
            buf[at - offset as usize] = v;
        }
        Ok(())
    }
}

fn read_slice(b: &[u8], offset: u64, buf: &mut [u8]) -> Result<()> {
    if !fits(offset, buf.len(), b.len() as u64) {
        return Err(past_end("image", offset, buf.len(), b.len() as u64));
    }
    buf.copy_from_slice(&b[offset as usize..offset as usize + buf.len()]);
    Ok(())
}

#[derive(Debug, Default)]
struct Stats {
    cases: usize,
    probed: usize,
    lvs_read: usize,
    errors: usize,
}

/// Probes, assembles and reads mutated versions of `image`: every case must end within
/// 20 s, without a panic or an allocation over 256 MiB. Half the cases fix the checksums
/// after mutating, so the metadata parser sees the damage.
fn mutate_pv(
    image: Vec<u8>,
    hot: &[std::ops::Range<usize>],
    mdas: &[usize],
    cases: usize,
    seed: u64,
) -> Stats {
    let base = Arc::new(image);
    let len = base.len();
    let mut st = Stats::default();
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for case in 0..cases {
        let mut dev = Patched {
            base: base.clone(),
            patch: BTreeMap::new(),
        };
        for _ in 0..1 + next() % 8 {
            let r = if next() % 8 != 0 {
                hot[(next() % hot.len() as u64) as usize].clone()
            } else {
                0..len
            };
            let at = (r.start + (next() as usize % (r.end - r.start).max(1))).min(len - 1);
            for i in at..(at + 1 + (next() % 4) as usize).min(len) {
                let v = match next() % 6 {
                    0 => 0,
                    1 => 0xff,
                    2 => base[i] ^ (1 << (next() % 8)),
                    3 => b"{}[]=\",#\n 0123456789-"[(next() % 21) as usize],
                    _ => next() as u8,
                };
                dev.patch.insert(i, v);
            }
        }
        if next() % 2 == 0 {
            dev.fix_checksums(mdas);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            crate::testalloc::reset();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let dev: Dev = Arc::new(dev);
                let pv = match probe(dev.as_ref()) {
                    Ok(Some(pv)) => pv,
                    _ => return (false, 0),
                };
                let Ok(lvs) = assemble(vec![(pv, dev)]) else {
                    return (true, 0);
                };
                let mut read = 0;
                let mut buf = vec![0u8; 4096];
                for lv in lvs {
                    if let Ok(d) = lv.dev {
                        let n = d.size().min(4096) as usize;
                        let a = d.read_at(0, &mut buf[..n]);
                        let b = d.read_at(d.size() - n as u64, &mut buf[..n]);
                        read += (a.is_ok() && b.is_ok()) as usize;
                    }
                }
                (true, read)
            }));
            let _ = tx.send((r.map_err(|_| ()), crate::testalloc::peak()));
        });
        match rx.recv_timeout(std::time::Duration::from_secs(20)) {
            Ok((Ok((probed, read)), peak)) => {
                assert!(
                    peak <= 256 << 20,
                    "case {case} (seed {seed:#x}): one allocation of {peak} bytes"
                );
                st.probed += probed as usize;
                st.errors += !probed as usize;
                st.lvs_read += read;
            }
            Ok((Err(()), _)) => panic!("case {case} (seed {seed:#x}): the LVM reader panicked"),
            Err(_) => panic!("case {case} (seed {seed:#x}): the LVM reader hung (20 s)"),
        }
        st.cases += 1;
    }
    st
}

/// The hot ranges of a PV image: the label sectors, the mda header, its text (found
/// through the first raw location), and the first MiB as a whole.
fn hot_ranges(img: &[u8]) -> Vec<std::ops::Range<usize>> {
    let h = 4096;
    let off = u64::from_le_bytes(img[h + 40..h + 48].try_into().unwrap()) as usize;
    let len = u64::from_le_bytes(img[h + 48..h + 56].try_into().unwrap()) as usize;
    vec![0..2048, h..h + 512, h + off..h + off + len, 0..MIB]
}

#[test]
fn fuzz_lvm() {
    let cases = crate::fs::testutil::fuzz_cases(1500);
    // Hand-built: metadata wrapping around, striped, refused and hidden LVs.
    let text = vg_text(3, &[(PV0, 256), (PV1, 256)], &standard_lvs());
    let mda = Mda {
        off: 4096,
        size: 8192,
        text: &text,
        text_off: 8192 - 700,
        flags: 0,
    };
    let mut img = pv_image(PV0, 2 * MIB, &[mda]);
    pattern(&mut img);
    let hot = vec![0..2048, 4096..4096 + 8192];
    let s = mutate_pv(img, &hot, &[4096], cases, 0x9e37_79b9_7f4a_7c15);
    eprintln!("fuzz_lvm (hand-built PV): {s:?}");
    assert!(s.probed > 0 && s.lvs_read > 0);

    // Made by the lvm2 tools.
    if !tests::have_lvm() {
        return;
    }
    let img = tool_pv_image();
    let hot = hot_ranges(&img);
    let s = mutate_pv(img, &hot, &[4096], cases, 0x2545_f491_4f6c_dd1d);
    eprintln!("fuzz_lvm (lvm2-made PV): {s:?}");
    assert!(s.probed > 0 && s.lvs_read > 0);
}

/// An 8 MiB PV made by the tools, in memory: 64 KiB extents, `a` in two pieces and `b`,
/// each starting with ext4 (the fuzz fixture).
fn tool_pv_image() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("pv.img");
    sparse(&img, 8);
    {
        let lo = Loop::attach(&img, &[]);
        let vg = vg_name();
        let l = [&lo];
        lvm("pvcreate", &[&lo.dev], &l);
        lvm("vgcreate", &["-s", "64k", &vg, &lo.dev], &l);
        lvm("lvcreate", &["-an", "-Zn", "-L", "2M", "-n", "a", &vg], &l);
        lvm("lvcreate", &["-an", "-Zn", "-L", "2M", "-n", "b", &vg], &l);
        lvm("lvextend", &["-L", "+512k", &format!("{vg}/a")], &l);
        let backing = [Backing {
            lo: &lo,
            img: img.clone(),
            base: 0,
        }];
        for lv in ["a", "b"] {
            let (path, at, len) = first_extent_at(&vg, lv, &backing);
            mkfs_at(&path, at, len);
        }
    }
    crate::fs::testutil::load(&img)
}
