//! Serde helpers for what reports print. Host paths are bytes on Linux, and a report must
//! never fail (or panic) on a file name that is not UTF-8: JSON shows such paths lossily.

use serde::Serializer;
use std::path::{Path, PathBuf};

pub fn path<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

pub fn paths<S: Serializer>(v: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|p| p.to_string_lossy()))
}
