//! The names of a repository's objects. This module alone spells them; everything above
//! the repository layer asks for a snapshot, an index file or a pack by id, so a backend
//! (a folder, an S3 bucket under a prefix) only ever sees names made here.
//!
//! ```text
//! config  keys/<hex>  data/<hh>/<id>  index/<id>  snapshots/<id>  locks/<hex>
//! policies  protected/<id>  pending/<hex>
//! ```

use crate::Id;

pub const CONFIG: &str = "config";
pub const POLICIES: &str = "policies";

/// The folders objects are listed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Folder {
    Keys,
    /// Packs, under two-hex-digit fan-out folders.
    Data,
    Index,
    Snapshots,
    Locks,
    Protected,
    /// Two-phase prune records.
    Pending,
}

impl Folder {
    pub fn name(self) -> &'static str {
        match self {
            Folder::Keys => "keys",
            Folder::Data => "data",
            Folder::Index => "index",
            Folder::Snapshots => "snapshots",
            Folder::Locks => "locks",
            Folder::Protected => "protected",
            Folder::Pending => "pending",
        }
    }
}

/// An object found by listing a folder, with its size (a listing gives it; no per-object
/// request, which on object storage would be one HEAD per pack).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub size: u64,
}

impl Listed {
    /// The id a content-named object (pack, index file, snapshot, protection marker)
    /// carries as its last name component.
    pub fn id(&self) -> Option<Id> {
        id_of(&self.name)
    }
}

/// The id in the last component of an object name.
pub fn id_of(name: &str) -> Option<Id> {
    name.rsplit('/').next().and_then(Id::from_hex)
}

pub fn pack(id: &Id) -> String {
    let h = id.to_hex();
    format!("data/{}/{}", &h[..2], h)
}

pub fn index(id: &Id) -> String {
    format!("index/{id}")
}

pub fn snapshot(id: &Id) -> String {
    format!("snapshots/{id}")
}

pub fn key(id: &Id) -> String {
    format!("keys/{id}")
}

/// A lock file; `tag` is its random name.
pub fn lock(tag: &str) -> String {
    format!("locks/{tag}")
}

/// A prune's record of packs to delete later; `tag` is its random name.
pub fn pending(tag: &str) -> String {
    format!("pending/{tag}")
}

pub fn protected(id: &Id) -> String {
    format!("protected/{id}")
}
