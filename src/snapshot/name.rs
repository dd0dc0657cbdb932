//! Names of disks and files inside a snapshot, kept as bytes.
//!
//! A name comes back as the name of a file in the restore target, so it is checked both
//! when a backup records it and before a restore (or `check`) uses it: a manifest is only
//! as trustworthy as whoever could write to the repository, and in an unencrypted
//! repository anyone with write access to the share can plant one. Linux file names are
//! bytes, not UTF-8, so names are stored and restored byte for byte; they are shown
//! lossily.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;

/// Longest name accepted: what Linux, NTFS and most NAS filesystems allow for one path
/// component. Restore writes under the final name inside a temporary folder, so no
/// temporary suffix ever has to fit.
pub const MAX_NAME: usize = 255;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Name(Vec<u8>);

impl Name {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Name {
        Name(bytes.into())
    }

    pub fn from_os(s: &OsStr) -> Name {
        Name(s.as_bytes().to_vec())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn as_os(&self) -> &OsStr {
        OsStr::from_bytes(&self.0)
    }

    pub fn lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }

    /// Why this name cannot be a file name in a restore target, if it cannot.
    pub fn problem(&self) -> Option<&'static str> {
        let b = &self.0;
        if b.is_empty() {
            Some("it is empty")
        } else if b == b"." || b == b".." {
            Some("it is . or ..")
        } else if b.contains(&b'/') {
            Some("it contains '/'")
        } else if b.contains(&0) {
            Some("it contains a NUL byte")
        } else if b.len() > MAX_NAME {
            Some("it is longer than 255 bytes")
        } else {
            None
        }
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lossy())
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.lossy())
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}

/// Bytes in binary formats (postcard encodes them exactly as it encoded the `String` of
/// manifest versions 1 and 2), text in JSON reports.
impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.lossy())
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Name, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Name;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a name as bytes or text")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Name, E> {
                Ok(Name(v.to_vec()))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Name, E> {
                Ok(Name(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Name, E> {
                Ok(Name(v.as_bytes().to_vec()))
            }
        }
        if d.is_human_readable() {
            d.deserialize_str(V)
        } else {
            d.deserialize_byte_buf(V)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_escape_the_target_are_refused() {
        for bad in [&b""[..], b".", b"..", b"../x", b"/etc/cron.d/x", b"a\0b"] {
            assert!(Name::new(bad).problem().is_some(), "{bad:?}");
        }
        assert!(Name::new(vec![b'a'; 256]).problem().is_some());
        assert!(Name::new(vec![b'a'; 255]).problem().is_none());
        assert!(Name::new(&b"caf\xe9.vmx"[..]).problem().is_none());
    }

    #[test]
    fn bytes_survive_postcard_and_strings_still_decode() {
        let n = Name::new(&b"caf\xe9.vmx"[..]);
        let b = postcard::to_stdvec(&n).unwrap();
        assert_eq!(postcard::from_bytes::<Name>(&b).unwrap(), n);
        let old = postcard::to_stdvec("web01.vmx").unwrap();
        assert_eq!(postcard::from_bytes::<Name>(&old).unwrap(), *"web01.vmx");
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"caf\u{fffd}.vmx\"");
    }
}
