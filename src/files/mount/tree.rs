//! What the mount shows, independent of FUSE: the folders made up from the snapshot list,
//! the raw disks, and the guest filesystems, as [`Node`]s with a [`Meta`], children and
//! content.
//!
//! ```text
//! <vm>/<time>/disks/<disk>                 the raw disk image
//! <vm>/<time>/files/<disk>/<volume>/...    a volume's files (p<N>, fs, lvm/<vg>/<lv>)
//! <vm>/<time>/files/<disk>/README-unreadable-volumes
//! <vm>/latest -> <time>
//! ```
//!
//! Nothing is read before it is asked for: a snapshot's [`Browser`] is opened on first
//! access (at most [`OPEN_BROWSERS`] stay open, the least recently used is closed), and its
//! volumes are discovered, and their filesystems opened, on the first access of
//! `files/<disk>`.

use super::inodes::Node;
use super::layout::{layout, valid_name, Layout, README};
use crate::files::Browser;
use crate::fs::{FileType, Meta, Time};
use crate::snapshot::view::Store;
use crate::snapshot::Snapshot;
use crate::{Error, Id};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

/// Snapshots whose browser (open filesystems, decoded tables) is kept.
pub const OPEN_BROWSERS: usize = 32;
/// Longest folder name made from a VM name or a snapshot time, leaving room for a suffix
/// that tells two apart (Linux allows 255 bytes).
const MAX_MADE_NAME: usize = 200;

/// Why an operation on a node gives no answer.
#[derive(Debug)]
pub enum Fault {
    NotFound,
    NotDir,
    NotLink,
    /// Reading the repository or the guest's metadata failed.
    Failed(Error),
}

impl From<Error> for Fault {
    fn from(e: Error) -> Fault {
        Fault::Failed(e)
    }
}

pub type Res<T> = std::result::Result<T, Fault>;

/// One name in a folder.
pub struct Child {
    pub name: Vec<u8>,
    pub node: Node,
    pub kind: FileType,
}

/// A snapshot as the mount shows it.
pub struct Snap {
    pub id: Id,
    pub snap: Snapshot,
    /// Its folder's name in its VM's folder.
    pub name: String,
    pub vm: u32,
    pub time: Time,
}

/// A VM's folder.
pub struct Vm {
    pub name: String,
    /// Its snapshots, oldest first; the last is `latest`.
    pub snaps: Vec<u32>,
}

/// A snapshot being browsed.
struct Opened {
    b: Browser,
    /// Per disk: what `files/<disk>` holds, found on first access.
    layouts: Vec<OnceLock<Arc<Layout>>>,
}

/// Messages written to stderr once each: a damaged file read over and over by a tool
/// would otherwise flood the terminal.
#[derive(Default)]
pub struct Log {
    seen: Mutex<HashSet<String>>,
}

impl Log {
    const MAX: usize = 10_000;

    pub fn once(&self, msg: String) {
        let mut s = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() > Self::MAX || s.contains(&msg) {
            return;
        }
        if s.len() == Self::MAX {
            eprintln!("cairn: warning: too many distinct errors; no more are shown");
        } else {
            eprintln!("cairn: warning: {msg}");
        }
        s.insert(msg);
    }
}

pub struct Tree {
    store: Arc<Store>,
    pub vms: Vec<Vm>,
    pub snaps: Vec<Snap>,
    open: Mutex<Lru>,
    pub log: Log,
    uid: u32,
    gid: u32,
    mounted: Time,
}

#[derive(Default)]
struct Lru {
    tick: u64,
    entries: Vec<(u32, Arc<Opened>, u64)>,
}

fn time_of(s: &Snapshot) -> Option<Time> {
    s.parsed_time().map(|t| Time {
        sec: t.timestamp(),
        nsec: t.timestamp_subsec_nanos(),
    })
}

/// `s` as one path component: no `/` or NUL, not `.` or `..`, not empty, not too long.
pub fn safe_name(s: &str) -> String {
    let mut n: String = s
        .chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect();
    while n.len() > MAX_MADE_NAME {
        n.pop();
    }
    if n.is_empty() || n == "." || n == ".." {
        n = "_".repeat(n.len().max(1));
    }
    n
}

/// `name`, or `name-2`, `name-3`, … if taken.
fn unique(name: String, used: &mut HashSet<String>) -> String {
    let mut n = name.clone();
    let mut i = 2;
    while !used.insert(n.clone()) {
        n = format!("{name}-{i}");
        i += 1;
    }
    n
}

impl Tree {
    /// The tree of `snapshots` (oldest first, as [`crate::snapshot::load_all`] gives them).
    pub fn new(store: Arc<Store>, snapshots: Vec<(Id, Snapshot)>) -> Tree {
        let mounted = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(Time::default(), |d| Time {
                sec: d.as_secs() as i64,
                nsec: d.subsec_nanos(),
            });
        // VMs by name; folder names told apart when two VM names look alike once made safe.
        let mut by_vm: Vec<(String, Vec<(Id, Snapshot)>)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for (id, s) in snapshots {
            let i = *index.entry(s.vm.clone()).or_insert_with(|| {
                by_vm.push((s.vm.clone(), Vec::new()));
                by_vm.len() - 1
            });
            by_vm[i].1.push((id, s));
        }
        by_vm.sort_by(|a, b| a.0.cmp(&b.0));
        let mut vm_names = HashSet::new();
        let mut vms = Vec::new();
        let mut snaps = Vec::new();
        for (vm, list) in by_vm {
            let v = vms.len() as u32;
            let name = unique(safe_name(&vm), &mut vm_names);
            let mut count: HashMap<String, usize> = HashMap::new();
            for (_, s) in &list {
                *count.entry(safe_name(&s.time)).or_default() += 1;
            }
            let mut used: HashSet<String> = ["latest".to_string()].into();
            let mut ids = Vec::new();
            for (id, s) in list {
                let base = safe_name(&s.time);
                let base = if count[&base] > 1 {
                    format!("{base}-{}", id.short())
                } else {
                    base
                };
                ids.push(snaps.len() as u32);
                snaps.push(Snap {
                    id,
                    name: unique(base, &mut used),
                    vm: v,
                    time: time_of(&s).unwrap_or(mounted),
                    snap: s,
                });
            }
            vms.push(Vm { name, snaps: ids });
        }
        Tree {
            store,
            vms,
            snaps,
            open: Mutex::new(Lru::default()),
            log: Log::default(),
            // SAFETY: getuid and getgid cannot fail.
            uid: unsafe { libc::getuid() },
            gid: unsafe { libc::getgid() },
            mounted,
        }
    }

    fn snap(&self, s: u32) -> Res<&Snap> {
        self.snaps.get(s as usize).ok_or(Fault::NotFound)
    }

    /// The browser of snapshot `s`, opened if it is not.
    fn opened(&self, s: u32) -> Res<Arc<Opened>> {
        let snap = self.snap(s)?;
        let mut lru = self.open.lock().unwrap_or_else(|e| e.into_inner());
        lru.tick += 1;
        let tick = lru.tick;
        if let Some(e) = lru.entries.iter_mut().find(|e| e.0 == s) {
            e.2 = tick;
            return Ok(e.1.clone());
        }
        // Opening costs no read: volumes are discovered on first use.
        let b = Browser::new(&self.store, snap.id, snap.snap.clone());
        let o = Arc::new(Opened {
            layouts: (0..b.disks.len()).map(|_| OnceLock::new()).collect(),
            b,
        });
        if lru.entries.len() >= OPEN_BROWSERS {
            if let Some(oldest) = (0..lru.entries.len()).min_by_key(|&i| lru.entries[i].2) {
                // Readers still using it hold their own reference.
                lru.entries.swap_remove(oldest);
            }
        }
        lru.entries.push((s, o.clone(), tick));
        Ok(o)
    }

    fn layout(&self, o: &Opened, disk: u32) -> Res<Arc<Layout>> {
        let cell = o.layouts.get(disk as usize).ok_or(Fault::NotFound)?;
        Ok(cell.get_or_init(|| Arc::new(layout(&o.b, disk))).clone())
    }

    fn fs(&self, s: u32, vol: u32) -> Res<(Arc<Opened>, Arc<dyn crate::fs::Filesystem>)> {
        let o = self.opened(s)?;
        let fs = o.b.fs(vol as usize)?;
        Ok((o, fs))
    }

    fn dir(&self, time: Time) -> Meta {
        self.meta(FileType::Dir, 0o555, 0, 2, time)
    }

    fn meta(&self, kind: FileType, mode: u32, size: u64, nlink: u32, t: Time) -> Meta {
        Meta {
            ino: 0,
            kind,
            mode,
            uid: self.uid,
            gid: self.gid,
            size,
            nlink,
            mtime: t,
            atime: t,
            ctime: t,
            rdev: None,
            owner: None,
        }
    }

    fn latest(&self, v: u32) -> Res<&Snap> {
        let vm = self.vms.get(v as usize).ok_or(Fault::NotFound)?;
        self.snap(*vm.snaps.last().ok_or(Fault::NotFound)?)
    }

    /// What `stat` says of `node` (its `ino` is the guest's or 0; the caller puts its own).
    pub fn stat(&self, node: &Node) -> Res<Meta> {
        Ok(match node {
            Node::Root => self.dir(self.mounted),
            Node::Vm(v) => self.dir(self.latest(*v)?.time),
            Node::Latest(v) => {
                let l = self.latest(*v)?;
                self.meta(FileType::Symlink, 0o777, l.name.len() as u64, 1, l.time)
            }
            Node::Snap(s) | Node::Disks(s) | Node::Files(s) => self.dir(self.snap(*s)?.time),
            Node::FilesDisk(s, _) | Node::VolDir(s, _, _) => self.dir(self.snap(*s)?.time),
            Node::Disk(s, d) => {
                let snap = self.snap(*s)?;
                let disk = snap.snap.disks.get(*d as usize).ok_or(Fault::NotFound)?;
                self.meta(FileType::File, 0o444, disk.size, 1, snap.time)
            }
            Node::Readme(s, d) => {
                let o = self.opened(*s)?;
                let len = self
                    .layout(&o, *d)?
                    .readme
                    .as_ref()
                    .ok_or(Fault::NotFound)?
                    .len();
                self.meta(FileType::File, 0o444, len as u64, 1, self.snap(*s)?.time)
            }
            Node::Guest { snap, vol, ino } => self.fs(*snap, *vol)?.1.stat(*ino)?,
        })
    }

    /// The names in folder `node`, in the order they are listed.
    pub fn children(&self, node: &Node) -> Res<Vec<Child>> {
        let dir = |name: &str, node: Node| Child {
            name: name.as_bytes().to_vec(),
            node,
            kind: FileType::Dir,
        };
        Ok(match node {
            Node::Root => (0..self.vms.len() as u32)
                .map(|v| dir(&self.vms[v as usize].name, Node::Vm(v)))
                .collect(),
            Node::Vm(v) => {
                let vm = self.vms.get(*v as usize).ok_or(Fault::NotFound)?;
                let mut out: Vec<Child> = vm
                    .snaps
                    .iter()
                    .map(|&s| dir(&self.snaps[s as usize].name, Node::Snap(s)))
                    .collect();
                out.push(Child {
                    name: b"latest".to_vec(),
                    node: Node::Latest(*v),
                    kind: FileType::Symlink,
                });
                out
            }
            Node::Snap(s) => vec![dir("disks", Node::Disks(*s)), dir("files", Node::Files(*s))],
            Node::Disks(s) | Node::Files(s) => {
                let files = matches!(node, Node::Files(_));
                let snap = self.snap(*s)?;
                (0..snap.snap.disks.len() as u32)
                    .map(|d| Child {
                        name: snap.snap.disks[d as usize].name.as_bytes().to_vec(),
                        node: if files {
                            Node::FilesDisk(*s, d)
                        } else {
                            Node::Disk(*s, d)
                        },
                        kind: if files { FileType::Dir } else { FileType::File },
                    })
                    .collect()
            }
            Node::FilesDisk(s, d) => self.volume_children(*s, *d, "")?,
            Node::VolDir(s, d, prefix) => self.volume_children(*s, *d, prefix)?,
            Node::Guest { snap, vol, ino } => {
                let (_, fs) = self.fs(*snap, *vol)?;
                let entries = fs.read_dir(*ino)?;
                let n = entries.len();
                let out: Vec<Child> = entries
                    .into_iter()
                    .filter(|e| valid_name(&e.name))
                    .map(|e| Child {
                        name: e.name,
                        node: Node::Guest {
                            snap: *snap,
                            vol: *vol,
                            ino: e.ino,
                        },
                        kind: e.kind,
                    })
                    .collect();
                if out.len() < n {
                    self.log.once(format!(
                        "{}: {} names are not valid file names (damaged metadata?) and are \
                         left out",
                        self.place(node),
                        n - out.len()
                    ));
                }
                out
            }
            Node::Latest(_) | Node::Disk(..) | Node::Readme(..) => return Err(Fault::NotDir),
        })
    }

    /// The folders and volume roots below `files/<disk>/<prefix>`.
    fn volume_children(&self, s: u32, d: u32, prefix: &str) -> Res<Vec<Child>> {
        let o = self.opened(s)?;
        let l = self.layout(&o, d)?;
        let pre: Vec<&str> = prefix.split('/').filter(|c| !c.is_empty()).collect();
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for (vol, comps) in &l.vols {
            if comps.len() <= pre.len() || comps.iter().zip(&pre).any(|(a, b)| a != b) {
                continue;
            }
            let name = &comps[pre.len()];
            if !seen.insert(name.as_str()) {
                continue;
            }
            let node = if comps.len() == pre.len() + 1 {
                Node::Guest {
                    snap: s,
                    vol: *vol,
                    ino: o.b.fs(*vol as usize)?.root(),
                }
            } else {
                Node::VolDir(s, d, comps[..=pre.len()].join("/").into())
            };
            out.push(Child {
                name: name.as_bytes().to_vec(),
                node,
                kind: FileType::Dir,
            });
        }
        if pre.is_empty() && l.readme.is_some() {
            out.push(Child {
                name: README.as_bytes().to_vec(),
                node: Node::Readme(s, d),
                kind: FileType::File,
            });
        }
        Ok(out)
    }

    /// The entry `name` of folder `dir`, with its `stat`.
    pub fn lookup(&self, dir: &Node, name: &[u8]) -> Res<(Node, Meta)> {
        let node = match dir {
            Node::Guest { snap, vol, ino } => {
                if !valid_name(name) {
                    return Err(Fault::NotFound);
                }
                let (_, fs) = self.fs(*snap, *vol)?;
                let e = fs.lookup(*ino, name)?.ok_or(Fault::NotFound)?;
                let meta = fs.stat(e.ino)?;
                let node = Node::Guest {
                    snap: *snap,
                    vol: *vol,
                    ino: e.ino,
                };
                return Ok((node, meta));
            }
            _ => {
                self.children(dir)?
                    .into_iter()
                    .find(|c| c.name == name)
                    .ok_or(Fault::NotFound)?
                    .node
            }
        };
        let meta = self.stat(&node)?;
        Ok((node, meta))
    }

    /// Up to `len` bytes of `node`'s content at `offset`, of its `size` bytes.
    pub fn read(&self, node: &Node, offset: u64, len: usize, size: u64) -> Res<Vec<u8>> {
        let len = (len as u64).min(size.saturating_sub(offset)) as usize;
        let mut buf = vec![0u8; len];
        if len == 0 {
            return Ok(buf);
        }
        match node {
            Node::Disk(s, d) => {
                let o = self.opened(*s)?;
                let disk = o.b.disks.get(*d as usize).ok_or(Fault::NotFound)?;
                let len = (len as u64).min(disk.disk().size.saturating_sub(offset)) as usize;
                buf.truncate(len);
                crate::blockdev::BlockRead::read_at(disk.as_ref(), offset, &mut buf)?;
            }
            Node::Readme(s, d) => {
                let o = self.opened(*s)?;
                let l = self.layout(&o, *d)?;
                let text = l.readme.as_deref().unwrap_or_default();
                let start = (offset as usize).min(text.len());
                let end = (start + len).min(text.len());
                return Ok(text[start..end].to_vec());
            }
            Node::Guest { snap, vol, ino } => {
                let (_, fs) = self.fs(*snap, *vol)?;
                let mut done = 0;
                while done < len {
                    let n = fs.read(*ino, offset + done as u64, &mut buf[done..])?;
                    if n == 0 {
                        break;
                    }
                    done += n;
                }
                buf.truncate(done);
            }
            _ => return Err(Fault::NotFound),
        }
        Ok(buf)
    }

    /// A symlink's target.
    pub fn read_link(&self, node: &Node) -> Res<Vec<u8>> {
        match node {
            Node::Latest(v) => Ok(self.latest(*v)?.name.as_bytes().to_vec()),
            Node::Guest { snap, vol, ino } => Ok(self.fs(*snap, *vol)?.1.read_link(*ino)?),
            _ => Err(Fault::NotLink),
        }
    }

    /// Where `node` is, for messages: `<vm>/<time>` and, inside a volume, the volume and
    /// the guest's inode number.
    pub fn place(&self, node: &Node) -> String {
        let s = match node {
            Node::Root | Node::Vm(_) | Node::Latest(_) => return "the mount".into(),
            Node::Snap(s) | Node::Disks(s) | Node::Files(s) => *s,
            Node::Disk(s, _) | Node::FilesDisk(s, _) | Node::VolDir(s, _, _) => *s,
            Node::Readme(s, _) | Node::Guest { snap: s, .. } => *s,
        };
        let Ok(snap) = self.snap(s) else {
            return "the mount".into();
        };
        let vm = self
            .vms
            .get(snap.vm as usize)
            .map_or("", |v| v.name.as_str());
        match node {
            Node::Guest { vol, ino, .. } => {
                let vol = self
                    .opened(s)
                    .ok()
                    .and_then(|o| o.b.volume_path(*vol as usize).ok())
                    .unwrap_or_default();
                format!("{vm}/{}/files{vol}, inode {ino}", snap.name)
            }
            _ => format!("{vm}/{}", snap.name),
        }
    }

    /// Total bytes of every disk of every snapshot, for `statfs`.
    pub fn logical_size(&self) -> u64 {
        self.snaps
            .iter()
            .map(|s| s.snap.logical_size())
            .fold(0u64, u64::saturating_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_names_are_single_safe_components() {
        assert_eq!(safe_name("web/01"), "web_01");
        assert_eq!(safe_name(".."), "__");
        assert_eq!(safe_name(""), "_");
        assert_eq!(safe_name("a\0b"), "a_b");
        assert!(safe_name(&"é".repeat(300)).len() <= MAX_MADE_NAME);
        let mut used = HashSet::new();
        assert_eq!(unique("a".into(), &mut used), "a");
        assert_eq!(unique("a".into(), &mut used), "a-2");
        assert_eq!(unique("a".into(), &mut used), "a-3");
        assert!(!valid_name(b"a/b") && !valid_name(b".") && valid_name(b"..."));
    }
}
