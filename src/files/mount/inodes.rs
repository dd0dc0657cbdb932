//! The mount's own inode numbers.
//!
//! The kernel names every file by a 64-bit node id. Guest inode numbers cannot be those
//! ids: the same number occurs in every snapshot and every volume, FAT and NTFS numbers are
//! positions rather than stable inodes, and a hostile image chooses its own. So each
//! [`Node`] the kernel is told about gets a number from a counter, kept in a table that maps
//! both ways. Numbers are never reused, so a stale id can only miss, never name another
//! file.
//!
//! Lifetimes follow the FUSE protocol: every entry a `lookup` returns holds one kernel
//! reference, `forget` drops them. A guest node with no references is dropped from the
//! table when the kernel forgets it; one only listed by `readdir` (which takes no
//! reference) is dropped by a sweep once the table has doubled since the last one. The
//! synthetic nodes (VMs, snapshots, disks, volume folders) are few and stay for the life
//! of the mount.

use std::collections::HashMap;
use std::sync::Mutex;

/// The root's node id, fixed by the protocol.
pub const ROOT: u64 = 1;

/// Fewest entries before a sweep is worth its scan.
const MIN_SWEEP: usize = 64 * 1024;

/// What a node id names. Indices are into the mount's snapshot list and a snapshot's disks
/// and volumes, all fixed at mount time (volume discovery is deterministic, so a
/// snapshot's volume numbers survive its browser being closed and opened again).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    /// `/`: the VMs.
    Root,
    /// `/<vm>`: its snapshots and `latest`.
    Vm(u32),
    /// `/<vm>/latest`, a symlink to the newest snapshot's folder.
    Latest(u32),
    /// `/<vm>/<time>`: `disks` and `files`.
    Snap(u32),
    /// `<snap>/disks`.
    Disks(u32),
    /// `<snap>/disks/<disk>`, the raw image (snapshot, disk).
    Disk(u32, u32),
    /// `<snap>/files`.
    Files(u32),
    /// `<snap>/files/<disk>`: the disk's volumes (snapshot, disk).
    FilesDisk(u32, u32),
    /// A folder on the way to a volume, `<snap>/files/<disk>/lvm[/<vg>]` (snapshot, disk,
    /// the path below `files/<disk>`).
    VolDir(u32, u32, Box<str>),
    /// `<snap>/files/<disk>/README-unreadable-volumes` (snapshot, disk).
    Readme(u32, u32),
    /// A file, folder or link inside volume `vol` of snapshot `snap`; the volume's root
    /// folder is its filesystem's root inode.
    Guest { snap: u32, vol: u32, ino: u64 },
}

impl Node {
    fn is_guest(&self) -> bool {
        matches!(self, Node::Guest { .. })
    }
}

struct Slot {
    node: Node,
    /// References the kernel holds (lookups not yet forgotten).
    lookups: u64,
    /// The folder it was found in, for `..` (the root for the root).
    parent: u64,
}

#[derive(Default)]
struct Inner {
    by_node: HashMap<Node, u64>,
    by_ino: HashMap<u64, Slot>,
    next: u64,
    sweep_at: usize,
}

/// The two-way map between nodes and node ids.
pub struct Table {
    inner: Mutex<Inner>,
}

impl Default for Table {
    fn default() -> Table {
        Table::new()
    }
}

impl Table {
    pub fn new() -> Table {
        let mut t = Inner {
            next: ROOT + 1,
            sweep_at: MIN_SWEEP,
            ..Inner::default()
        };
        t.by_node.insert(Node::Root, ROOT);
        t.by_ino.insert(
            ROOT,
            Slot {
                node: Node::Root,
                lookups: 1,
                parent: ROOT,
            },
        );
        Table {
            inner: Mutex::new(t),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The node of id `ino` and the id of its folder.
    pub fn get(&self, ino: u64) -> Option<(Node, u64)> {
        self.lock()
            .by_ino
            .get(&ino)
            .map(|s| (s.node.clone(), s.parent))
    }

    /// The id of `node`, found in folder `parent`, for a `readdir` entry (no reference).
    pub fn listed(&self, node: Node, parent: u64) -> u64 {
        self.id(node, parent, 0)
    }

    /// The id of `node`, found in folder `parent`, for a `lookup` reply: the kernel now
    /// holds one more reference.
    pub fn looked_up(&self, node: Node, parent: u64) -> u64 {
        self.id(node, parent, 1)
    }

    fn id(&self, node: Node, parent: u64, refs: u64) -> u64 {
        let mut t = self.lock();
        if let Some(&ino) = t.by_node.get(&node) {
            if let Some(s) = t.by_ino.get_mut(&ino) {
                s.lookups += refs;
                return ino;
            }
        }
        if t.by_ino.len() >= t.sweep_at {
            sweep(&mut t);
        }
        let ino = t.next;
        t.next += 1;
        t.by_node.insert(node.clone(), ino);
        t.by_ino.insert(
            ino,
            Slot {
                node,
                lookups: refs,
                parent,
            },
        );
        ino
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        let mut t = self.lock();
        let Some(s) = t.by_ino.get_mut(&ino) else {
            return;
        };
        s.lookups = s.lookups.saturating_sub(n);
        if s.lookups == 0 && s.node.is_guest() {
            if let Some(s) = t.by_ino.remove(&ino) {
                t.by_node.remove(&s.node);
            }
        }
    }

    /// Node ids in the table.
    pub fn len(&self) -> usize {
        self.lock().by_ino.len()
    }

    pub fn is_empty(&self) -> bool {
        false // the root is always there
    }
}

/// Drops guest nodes the kernel holds no reference to (they were only listed).
fn sweep(t: &mut Inner) {
    let Inner {
        by_node, by_ino, ..
    } = t;
    by_ino.retain(|_, s| s.lookups > 0 || !s.node.is_guest());
    by_node.retain(|_, ino| by_ino.contains_key(ino));
    t.sweep_at = (by_ino.len() * 2).max(MIN_SWEEP);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(ino: u64) -> Node {
        Node::Guest {
            snap: 0,
            vol: 1,
            ino,
        }
    }

    #[test]
    fn the_same_node_keeps_its_id_until_forgotten() {
        let t = Table::new();
        assert_eq!(t.get(ROOT).map(|g| g.0), Some(Node::Root));
        let a = t.looked_up(guest(2), ROOT);
        assert_eq!(t.listed(guest(2), ROOT), a);
        assert_eq!(t.looked_up(guest(2), ROOT), a);
        assert_ne!(t.looked_up(guest(3), ROOT), a);
        t.forget(a, 1);
        assert_eq!(t.get(a).map(|g| g.0), Some(guest(2)));
        t.forget(a, 1);
        assert_eq!(t.get(a), None);
        // Forgotten ids are never reused.
        let b = t.looked_up(guest(2), ROOT);
        assert!(b > a);
    }

    #[test]
    fn synthetic_nodes_stay_and_listed_guests_are_swept() {
        let t = Table::new();
        let vm = t.looked_up(Node::Vm(0), ROOT);
        t.forget(vm, 1);
        assert_eq!(t.get(vm).map(|g| g.0), Some(Node::Vm(0)));
        let held = t.looked_up(guest(1), vm);
        for i in 0..MIN_SWEEP as u64 {
            t.listed(guest(10 + i), vm);
        }
        // The next insertion sweeps the listed-only entries.
        t.listed(guest(1 << 40), vm);
        assert!(t.len() < 10, "{}", t.len());
        assert_eq!(t.get(held), Some((guest(1), vm)));
        assert_eq!(t.get(ROOT).map(|g| g.0), Some(Node::Root));
    }
}
