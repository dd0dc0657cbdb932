//! The repository config (`config`, JSON) and key files (`keys/<id>`, JSON).
//!
//! The config is plain JSON so that tools and people can read what a repository is without
//! a password; in an encrypted repository it carries a MAC under a key derived from the
//! master key, so a changed chunker or cipher setting is refused rather than obeyed.

use crate::crypto::{self, KdfParams, Keys};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Version of the repository format this build writes and reads (see repo-format.md).
pub const REPO_VERSION: u32 = 1;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ChunkerKind {
    /// FastCDC, 2020 paper's algorithm, as implemented by the pinned `fastcdc` crate.
    FastcdcV2020,
    /// Fixed-size chunks aligned to the disk offset.
    Fixed,
}

impl ChunkerKind {
    /// As users read it (and as the config spells it).
    pub fn name(self) -> &'static str {
        match self {
            ChunkerKind::FastcdcV2020 => "fastcdc-v2020",
            ChunkerKind::Fixed => "fixed",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkerParams {
    pub kind: ChunkerKind,
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
    /// Disk segments are cut independently; a chunk never spans a segment boundary.
    pub segment_size: u32,
    /// How holes are found (repo-format.md section 10). 1: zero runs inside the source's
    /// allocated ranges, and every unallocated range; 2: zero runs of the guest-visible
    /// bytes only, allocation used only to skip reading known zeros, so the same guest
    /// content cuts the same in every container. Absent in configs written before rule 2
    /// (which means 1), and written only when it is not 1, so those configs and their MACs
    /// stay as they were.
    #[serde(default = "rule_1", skip_serializing_if = "is_rule_1")]
    pub cut_rule: u32,
}

fn rule_1() -> u32 {
    1
}

fn is_rule_1(r: &u32) -> bool {
    *r == 1
}

/// The cut rule new repositories get.
pub const CUT_RULE: u32 = 3;

impl ChunkerParams {
    pub fn fastcdc(avg: u32) -> ChunkerParams {
        ChunkerParams {
            kind: ChunkerKind::FastcdcV2020,
            min_size: avg / 4,
            avg_size: avg,
            max_size: avg * 4,
            segment_size: 16 << 20,
            cut_rule: CUT_RULE,
        }
    }

    pub fn fixed(size: u32) -> ChunkerParams {
        ChunkerParams {
            kind: ChunkerKind::Fixed,
            min_size: size,
            avg_size: size,
            max_size: size,
            segment_size: 16 << 20,
            cut_rule: CUT_RULE,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let ok = match self.kind {
            ChunkerKind::FastcdcV2020 => {
                self.min_size >= 64
                    && self.min_size <= self.avg_size
                    && self.avg_size <= self.max_size
                    && (256..=4 << 20).contains(&self.avg_size)
                    && self.max_size <= 16 << 20
            }
            ChunkerKind::Fixed => {
                self.avg_size >= 512 && self.avg_size.is_power_of_two() && self.avg_size <= 16 << 20
            }
        };
        let ok = ok && (1..=CUT_RULE).contains(&self.cut_rule);
        let seg_ok = self.segment_size.is_power_of_two() && self.segment_size >= self.max_size;
        if ok && seg_ok {
            Ok(())
        } else {
            Err(Error::Usage(format!("invalid chunker settings: {self:?}")))
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Config {
    pub version: u32,
    /// Random repository id (hex); names the local cache folder.
    pub id: String,
    /// "aes-256-gcm" or "none".
    pub cipher: String,
    pub chunker: ChunkerParams,
    /// Disk bytes covered by one chunk table.
    pub table_span: u64,
    /// Target pack size in bytes.
    pub pack_size: u32,
    /// zstd level for blobs (0: no compression).
    pub zstd_level: i32,
    pub created: String,
    /// Hex keyed BLAKE3 over the config serialized with `mac: null`.
    pub mac: Option<String>,
}

pub const CIPHER_NAME_AES: &str = "aes-256-gcm";
pub const CIPHER_NAME_NONE: &str = "none";

impl Config {
    pub fn encrypted(&self) -> bool {
        self.cipher != CIPHER_NAME_NONE
    }

    fn canonical(&self) -> Vec<u8> {
        let mut c = self.clone();
        c.mac = None;
        serde_json::to_vec(&c).expect("config serializes")
    }

    pub fn seal(&mut self, keys: &Keys) {
        self.mac = keys.config_mac(&self.canonical());
    }

    pub fn verify(&self, keys: &Keys) -> Result<()> {
        if keys.config_mac(&self.canonical()) != self.mac {
            return Err(Error::corrupt_root(
                "config",
                "its MAC does not match (the file was changed by hand or damaged)",
            ));
        }
        Ok(())
    }
}

/// A key file: the master key wrapped under a password.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct KeyFile {
    pub kdf: String,
    pub kdf_params: KdfParams,
    pub salt: String,
    pub cipher: String,
    /// Hex of nonce | AES-256-GCM(master key, 64 bytes) | tag.
    pub wrapped: String,
    pub host: String,
    pub created: String,
}

impl KeyFile {
    pub fn new(master: &[u8; 64], password: &str, params: KdfParams) -> Result<KeyFile> {
        let salt: [u8; 32] = crypto::random_bytes();
        let kek = params.derive(password.as_bytes(), &salt)?;
        Ok(KeyFile {
            kdf: "argon2id".into(),
            kdf_params: params,
            salt: hex::encode(salt),
            cipher: CIPHER_NAME_AES.into(),
            wrapped: hex::encode(crypto::seal_with_key(&kek, master)),
            host: crate::repo::hostname(),
            created: chrono::Utc::now().to_rfc3339(),
        })
    }

    /// The master key, if `password` opens this key file.
    pub fn unwrap_master(&self, password: &str, name: &str) -> Result<Option<[u8; 64]>> {
        if self.kdf != "argon2id" || self.cipher != CIPHER_NAME_AES {
            return Err(Error::corrupt(
                name,
                format!("unknown KDF {:?} or cipher {:?}", self.kdf, self.cipher),
            ));
        }
        if let Some(p) = self.kdf_params.problem() {
            return Err(Error::corrupt_root(
                name,
                format!(
                    "its argon2id parameters are refused ({p}); a key file cairn wrote never \
                     has them, so it was changed. Remove it if another key file opens the \
                     repository"
                ),
            ));
        }
        let salt = hex::decode(&self.salt).map_err(|_| Error::corrupt(name, "bad salt"))?;
        let wrapped =
            hex::decode(&self.wrapped).map_err(|_| Error::corrupt(name, "bad wrapped key"))?;
        let kek = self.kdf_params.derive(password.as_bytes(), &salt)?;
        Ok(crypto::open_with_key(&kek, &wrapped).and_then(|m| m[..].try_into().ok()))
    }
}
