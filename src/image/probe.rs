//! Which format a disk image is in, decided the way qemu learned to decide it: never from
//! bytes the guest can write alone.
//!
//! A raw disk's first sector belongs to the guest. If cairn believed a qcow2 header or a
//! VMDK descriptor found there, a guest could make the backup read any host file through
//! a "backing file" or "extent" it names (qemu's format-probing hole). So a format comes
//! from, in this order:
//!
//! 1. `--format` given by the user (per disk);
//! 2. the hypervisor's configuration: a `.vmx` names its disks, which are VMDKs;
//! 3. the file's name and its content agreeing (`*.qcow2` starting with a qcow2 header,
//!    `*.vmdk` holding a sparse header or a descriptor, `*.vhd` with a VHD footer,
//!    `*.vhdx` with its signature).
//!
//! A block device, or a file named `*.raw`, `*.img` or `*-flat.vmdk`, is raw unless told
//! otherwise; if its content looks like another format it is still backed up as raw, with
//! a warning. A name that says nothing (`disk0`) with content that looks like a format is
//! refused with the `--format` to pass: guessing either way could be wrong.

use super::vhd;
use crate::{Error, Result};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

/// The formats cairn reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2,
    Vmdk,
    Vhd,
    Vhdx,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Vhd => "vhd",
            Format::Vhdx => "vhdx",
        }
    }

    /// The names `--format` and qcow2's backing-format extension use.
    pub fn parse(s: &str) -> Option<Format> {
        Some(match s {
            "raw" | "file" | "host_device" => Format::Raw,
            "qcow2" => Format::Qcow2,
            "vmdk" => Format::Vmdk,
            "vhd" | "vpc" => Format::Vhd,
            "vhdx" => Format::Vhdx,
            _ => return None,
        })
    }
}

/// Who said what format a disk is, recorded in the backup report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// `--format`.
    Given,
    /// The `.vmx` names it as a disk.
    Config,
    /// The referring image says (qcow2 backing format, VMDK descriptor).
    Referrer,
    /// Its name and its content agree.
    NameAndContent,
    /// A block device, or a name that means raw.
    RawByName,
    /// No name to go by, and content that looks like no format.
    NoFormatFound,
}

/// The decision for one file: its format, who said so, and a warning to show.
pub struct Choice {
    pub format: Format,
    pub source: Source,
    pub warning: Option<String>,
}

/// What the name of a file says its format is.
fn by_name(path: &Path) -> Option<Format> {
    let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
    let ends = |s: &str| name.ends_with(s);
    if ends("-flat.vmdk") || ends(".raw") || ends(".img") {
        Some(Format::Raw)
    } else if ends(".qcow2") || ends(".qcow") {
        Some(Format::Qcow2)
    } else if ends(".vmdk") {
        Some(Format::Vmdk)
    } else if ends(".vhd") || ends(".avhd") {
        Some(Format::Vhd)
    } else if ends(".vhdx") || ends(".avhdx") {
        Some(Format::Vhdx)
    } else {
        None
    }
}

/// Decides the format of `path`. `given` is `--format` (or the referring image's word);
/// `config` says the hypervisor's configuration names the file as a VMDK disk.
pub fn choose(path: &Path, given: Option<(Format, Source)>, config: bool) -> Result<Choice> {
    let content = detect(path)?;
    let shown = path.display();
    if let Some((format, source)) = given {
        if format != Format::Raw && content != format {
            return Err(Error::Usage(format!(
                "{shown} is said to be {} ({}), but its content is {}; check the path, or pass \
                 --format {}=raw if it is a raw disk",
                format.name(),
                match source {
                    Source::Referrer => "by the image that names it",
                    _ => "--format",
                },
                describe(content),
                file_label(path)
            )));
        }
        return Ok(Choice {
            format,
            source,
            warning: None,
        });
    }
    if config {
        if content != Format::Vmdk {
            return Err(Error::Usage(format!(
                "the .vmx names {shown} as a disk, but it cannot be read as a VMDK (its content \
                 is {}); nothing was backed up. Repair the descriptor, or back up the disk on \
                 its own with --format",
                describe(content)
            )));
        }
        return Ok(Choice {
            format: Format::Vmdk,
            source: Source::Config,
            warning: None,
        });
    }
    let device = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device());
    let named = if device {
        Some(Format::Raw)
    } else {
        by_name(path)
    };
    match named {
        Some(Format::Raw) => Ok(Choice {
            format: Format::Raw,
            source: Source::RawByName,
            warning: (content != Format::Raw).then(|| {
                format!(
                    "{shown}: its content looks like a {} image, but a {} is raw unless told \
                     otherwise, and a guest can write such a header into its own disk; backed up \
                     as raw. If it really is a {} image, pass --format {}={}",
                    content.name(),
                    if device {
                        "block device"
                    } else {
                        "file with this name"
                    },
                    content.name(),
                    file_label(path),
                    content.name()
                )
            }),
        }),
        Some(f) if f == content => Ok(Choice {
            format: f,
            source: Source::NameAndContent,
            warning: None,
        }),
        Some(f) => Err(Error::Usage(format!(
            "{shown} is named like a {} image but its content is {}; pass --format {}=raw if \
             it is a raw disk, or --format {}=FORMAT",
            f.name(),
            describe(content),
            file_label(path),
            file_label(path)
        ))),
        None if content == Format::Raw => Ok(Choice {
            format: Format::Raw,
            source: Source::NoFormatFound,
            warning: None,
        }),
        None => Err(Error::Usage(format!(
            "cannot tell the format of {shown}: its name does not say, and its content looks \
             like a {} image, which a guest could also have written into a raw disk. Pass \
             --format {}={} or --format {}=raw",
            content.name(),
            file_label(path),
            content.name(),
            file_label(path)
        ))),
    }
}

fn describe(f: Format) -> String {
    match f {
        Format::Raw => "no known image format".into(),
        f => format!("a {} image", f.name()),
    }
}

/// How `--format NAME=FMT` names this disk.
fn file_label(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// What the first bytes (and, for a fixed VHD, the last sector) look like.
pub(super) fn detect(path: &Path) -> Result<Format> {
    let (f, head, n) = read_head(path)?;
    let head = &head[..n];
    if let Some(kind) = unsupported(head) {
        return Err(Error::Usage(format!(
            "{} is a {kind} image; this cairn reads raw, qcow2, VMDK, VHD and VHDX images \
             and block devices. Convert it first: qemu-img convert -O qcow2 {} disk.qcow2",
            path.display(),
            path.display()
        )));
    }
    let starts = |m: &[u8]| head.starts_with(m);
    Ok(if starts(b"QFI\xfb") {
        Format::Qcow2
    } else if starts(b"KDMV") || starts(b"COWD") || is_descriptor(head) {
        Format::Vmdk
    } else if starts(b"vhdxfile") {
        Format::Vhdx
    } else if starts(b"conectix") || vhd::has_footer(&f) {
        Format::Vhd
    } else {
        Format::Raw
    })
}

/// A VMDK text descriptor, recognised as tolerantly as qemu and VMware do: comment lines
/// (`#…`) and blank lines, then a `version=N` line. The usual first line is
/// `# Disk DescriptorFile`, but its exact spelling does not matter.
pub(super) fn is_descriptor(head: &[u8]) -> bool {
    let end = head.iter().position(|&b| b == 0).unwrap_or(head.len());
    let Ok(text) = std::str::from_utf8(&head[..end]) else {
        return false;
    };
    for line in text.split('\n') {
        let line = line.trim_matches([' ', '\t', '\r']);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return false;
        };
        let v = v.trim().trim_matches('"');
        return k.trim().eq_ignore_ascii_case("version") && matches!(v, "1" | "2" | "3");
    }
    false
}

fn read_head(path: &Path) -> Result<(std::fs::File, [u8; 512], usize)> {
    use std::io::Read;
    let mut head = [0u8; 512];
    let mut f = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("opening disk image {}", path.display()), e))?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }
    Ok((f, head, n))
}

/// Formats recognised only to be refused by name.
fn unsupported(head: &[u8]) -> Option<&'static str> {
    let starts = |m: &[u8]| head.starts_with(m);
    if starts(b"QED\0") {
        Some("QED")
    } else if starts(b"WithoutFreeSpace") || starts(b"WithouFreSpacExt") {
        Some("Parallels")
    } else if head.get(64..68) == Some(&[0x7f, 0x10, 0xda, 0xbe]) {
        Some("VDI")
    } else if starts(b"QFI\xfb") && head.get(4..8).is_some_and(|v| v == [0, 0, 0, 1]) {
        Some("qcow (version 1)")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_are_recognised_tolerantly() {
        assert!(is_descriptor(
            b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\n"
        ));
        assert!(is_descriptor(b"# Disk Descriptor File\r\nversion=1\r\n"));
        assert!(is_descriptor(b"\n\n#x\n  version = \"2\"\n"));
        assert!(!is_descriptor(b"version=9\n"));
        assert!(!is_descriptor(b"hello\nversion=1\n"));
        assert!(!is_descriptor(b"\xeb\x58\x90mkfs.fat"));
    }

    #[test]
    fn names_say_raw_or_a_format() {
        assert_eq!(by_name(Path::new("/x/web-flat.vmdk")), Some(Format::Raw));
        assert_eq!(by_name(Path::new("d.IMG")), Some(Format::Raw));
        assert_eq!(by_name(Path::new("d.qcow2")), Some(Format::Qcow2));
        assert_eq!(by_name(Path::new("d.vmdk")), Some(Format::Vmdk));
        assert_eq!(by_name(Path::new("d.vhdx")), Some(Format::Vhdx));
        assert_eq!(by_name(Path::new("disk0")), None);
    }
}
