//! The volumes of a disk: its partitions (GPT, MBR with logical partitions), the logical
//! volumes of LVM2 groups inside them, and the filesystem on each, named as file-level
//! restore paths name them (`p2`, `fs`, `lvm/<vg>/<lv>`).

use crate::blockdev::BlockRead;

/// What the first bytes of a volume say it holds, for volumes no reader opens: a refusal
/// names the reason.
pub fn refusal(dev: &dyn BlockRead) -> Option<&'static str> {
    let mut head = [0u8; 4096];
    let n = head.len().min(dev.size() as usize);
    dev.read_at(0, &mut head[..n]).ok()?;
    let head = &head[..n];
    if head.starts_with(b"LUKS\xba\xbe") || head.starts_with(b"SKUL\xba\xbe") {
        Some("encrypted (LUKS); cairn does not decrypt guest volumes")
    } else if head.get(3..11) == Some(b"-FVE-FS-") {
        Some("encrypted (BitLocker); cairn does not decrypt guest volumes")
    } else if head.get(4086..4096) == Some(b"SWAPSPACE2")
        || head.get(4086..4096) == Some(b"SWAP-SPACE")
    {
        Some("swap space, which holds no files")
    } else {
        None
    }
}
