//! What `files/<disk>` holds: the volumes of the disk whose filesystem cairn opens, each
//! under its `cairn ls` path (`p<N>`, `fs`, `lvm/<vg>/<lv>`), and a note naming the others
//! with the reason, so that a volume left out never looks like a missing one.

use crate::files::Browser;
use std::sync::Arc;

/// The file in `files/<disk>` that names the volumes left out, and why.
pub const README: &str = "README-unreadable-volumes";

/// The volumes of one disk that `files/<disk>` shows, and the note on the others.
pub struct Layout {
    /// (volume index, the components of its path: `["p2"]`, `["lvm", "vg", "lv"]`).
    pub vols: Vec<(u32, Vec<String>)>,
    pub readme: Option<Arc<[u8]>>,
}

/// Whether a guest name can be a name in a FUSE folder.
pub fn valid_name(n: &[u8]) -> bool {
    !n.is_empty() && n != b"." && n != b".." && !n.contains(&b'/') && !n.contains(&0)
}

/// Which volumes of disk `disk` `files/<disk>` shows: those whose filesystem opens, under a
/// path of safe names that does not clash with another's. The others are named in the
/// README with the reason.
pub fn layout(b: &Browser, disk: u32) -> Layout {
    let name = b.disk_name(disk as usize);
    let mut vols: Vec<(u32, Vec<String>)> = Vec::new();
    let mut left_out: Vec<String> = Vec::new();
    match b.volumes() {
        Err(e) => left_out.push(format!("/{name}: the volumes cannot be found: {e}")),
        Ok(all) => {
            for (i, v) in all.iter().enumerate() {
                if v.disk != disk as usize {
                    continue;
                }
                let comps: Vec<String> = v.path.split('/').map(str::to_string).collect();
                let clash = vols.iter().any(|(_, c)| {
                    let n = c.len().min(comps.len());
                    c[..n] == comps[..n]
                });
                if comps
                    .iter()
                    .any(|c| !valid_name(c.as_bytes()) || c.len() > 255)
                {
                    left_out.push(format!(
                        "/{name}/{}: the name is not a safe file name",
                        v.path.escape_debug()
                    ));
                } else if clash || comps == [README] {
                    left_out.push(format!("/{name}/{}: another volume has that name", v.path));
                } else {
                    match b.fs(i) {
                        Ok(_) => vols.push((i as u32, comps)),
                        Err(e) => left_out.push(e.to_string()),
                    }
                }
            }
        }
    }
    let readme = (!left_out.is_empty()).then(|| {
        let mut t = format!(
            "Volumes of disk {name} that are not under files/{name}/ here, and why (paths as \
             `cairn ls` names them):\n\n"
        );
        for l in &left_out {
            t.push_str(l);
            t.push('\n');
        }
        t.push_str(&format!(
            "\nTheir bytes are all in the raw disk image, disks/{name} in this snapshot's \
             folder, which can be attached read-only with `losetup -r -P -f --show IMAGE`.\n"
        ));
        Arc::from(t.into_bytes())
    });
    Layout { vols, readme }
}
