//! Key derivation, authenticated encryption and keyed chunk ids.
//!
//! One random 64-byte master key per repository, stored only wrapped (AES-256-GCM under an
//! argon2id key of the password) in `keys/`. Everything else is derived from it with
//! BLAKE3's `derive_key`, each use under its own context string:
//!
//! * the chunk-id key: chunk ids are keyed BLAKE3 of the plaintext, so they leak nothing to
//!   someone who holds only the repository files;
//! * the FastCDC gear seed, so cut points do not reveal content either;
//! * per-file sealing keys: every pack, index and snapshot file starts with a fresh random
//!   32-byte salt, and its key is derived from the master key and that salt. Nonces are random
//!   96-bit values, and since one key seals only the blobs of one file (thousands, not the
//!   2^32 that random GCM nonces are safe for), nonce reuse is never a practical risk.

use crate::{Error, Id, Result};
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Cipher ids recorded in the config, key files and every sealed file header.
pub const CIPHER_NONE: u8 = 0;
pub const CIPHER_AES256GCM: u8 = 1;

pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// Bytes a sealed message adds to its plaintext.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
pub const SALT_LEN: usize = 32;

const CTX_ID: &str = "cairn 2026-11 chunk id key";
const CTX_SEED: &str = "cairn 2026-11 chunker gear seed";
const CTX_FILE: &str = "cairn 2026-11 file sealing key";
const CTX_CONFIG: &str = "cairn 2026-11 config mac key";

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // The OS RNG failing is not recoverable and not caused by input.
    getrandom::fill(&mut b).expect("the operating system's random number generator failed");
    b
}

/// The repository's secrets, derived once from the unwrapped master key.
/// `None` mode (an unencrypted repository) uses plain BLAKE3 ids and no sealing.
#[derive(Clone)]
pub struct Keys {
    master: Option<Zeroizing<[u8; 64]>>,
    id_key: Option<[u8; 32]>,
}

impl Keys {
    pub fn unencrypted() -> Keys {
        Keys {
            master: None,
            id_key: None,
        }
    }

    pub fn from_master(master: [u8; 64]) -> Keys {
        let id_key = blake3::derive_key(CTX_ID, &master);
        Keys {
            master: Some(Zeroizing::new(master)),
            id_key: Some(id_key),
        }
    }

    pub fn master_bytes(&self) -> Option<&[u8; 64]> {
        self.master.as_deref()
    }

    pub fn cipher(&self) -> u8 {
        if self.master.is_some() {
            CIPHER_AES256GCM
        } else {
            CIPHER_NONE
        }
    }

    /// The id of a chunk or table with this plaintext.
    pub fn chunk_id(&self, data: &[u8]) -> Id {
        match &self.id_key {
            Some(k) => Id(*blake3::keyed_hash(k, data).as_bytes()),
            None => Id(*blake3::hash(data).as_bytes()),
        }
    }

    /// A hasher that yields the same as [`Keys::chunk_id`], for streaming input.
    pub fn chunk_hasher(&self) -> blake3::Hasher {
        match &self.id_key {
            Some(k) => blake3::Hasher::new_keyed(k),
            None => blake3::Hasher::new(),
        }
    }

    /// The FastCDC gear seed: secret for encrypted repositories, 0 otherwise.
    pub fn chunker_seed(&self) -> u64 {
        match &self.master {
            Some(m) => {
                let k = blake3::derive_key(CTX_SEED, &m[..]);
                u64::from_le_bytes(k[..8].try_into().expect("8 bytes"))
            }
            None => 0,
        }
    }

    /// MAC over the config's canonical bytes, so a tampered config is refused.
    pub fn config_mac(&self, canonical: &[u8]) -> Option<String> {
        let m = self.master.as_ref()?;
        let k = blake3::derive_key(CTX_CONFIG, &m[..]);
        Some(blake3::keyed_hash(&k, canonical).to_hex().to_string())
    }

    /// The sealer of the file whose header carries `salt`.
    pub fn sealer(&self, salt: &[u8; SALT_LEN]) -> Sealer {
        match &self.master {
            Some(m) => {
                let mut material = Zeroizing::new([0u8; 64 + SALT_LEN]);
                material[..64].copy_from_slice(&m[..]);
                material[64..].copy_from_slice(salt);
                let key = Zeroizing::new(blake3::derive_key(CTX_FILE, &material[..]));
                Sealer(Some(Box::new(Aes256Gcm::new((&*key).into()))))
            }
            None => Sealer(None),
        }
    }
}

/// Seals and opens the messages of one file. With no cipher it passes bytes through; the
/// content hashes (chunk ids, file names) still detect any corruption.
#[derive(Clone)]
pub struct Sealer(Option<Box<Aes256Gcm>>);

impl Sealer {
    pub fn overhead(&self) -> usize {
        if self.0.is_some() {
            SEAL_OVERHEAD
        } else {
            0
        }
    }

    pub fn seal(&self, plain: &[u8], aad: &[u8]) -> Vec<u8> {
        self.seal_parts(&[plain], aad)
    }

    /// Seals the concatenation of `parts` without first copying them together.
    pub fn seal_parts(&self, parts: &[&[u8]], aad: &[u8]) -> Vec<u8> {
        let mut out = bytes::BytesMut::new();
        self.seal_parts_into(&mut out, parts, aad);
        out.into()
    }

    /// Appends the sealed concatenation of `parts` to `out`, growing it only if its spare
    /// room is too small.
    pub fn seal_parts_into(&self, out: &mut bytes::BytesMut, parts: &[&[u8]], aad: &[u8]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        out.reserve(len + self.overhead());
        let Some(c) = &self.0 else {
            parts.iter().for_each(|p| out.extend_from_slice(p));
            return;
        };
        let nonce: [u8; NONCE_LEN] = random_bytes();
        out.extend_from_slice(&nonce);
        let start = out.len();
        parts.iter().for_each(|p| out.extend_from_slice(p));
        let tag = c
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), aad, &mut out[start..])
            .expect("AES-GCM encryption of a message under 64 GiB cannot fail");
        out.extend_from_slice(&tag);
    }

    /// Opens a sealed message; `what` names the object in the error.
    pub fn open(&self, sealed: &[u8], aad: &[u8], what: &dyn Fn() -> String) -> Result<Vec<u8>> {
        let Some(c) = &self.0 else {
            return Ok(sealed.to_vec());
        };
        if sealed.len() < SEAL_OVERHEAD {
            return Err(Error::corrupt(
                what(),
                "sealed message is shorter than its nonce and tag",
            ));
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
        let mut buf = ct.to_vec();
        c.decrypt_in_place_detached(
            Nonce::from_slice(nonce),
            aad,
            &mut buf,
            Tag::from_slice(tag),
        )
        .map_err(|_| {
            Error::corrupt(
                what(),
                "authentication failed (bytes were changed or the key is wrong)",
            )
        })?;
        Ok(buf)
    }
}

/// argon2id parameters, stored in each key file so they can be raised later.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

impl KdfParams {
    /// 64 MiB, 3 passes: OWASP's argon2id floor is 19 MiB/2 passes; we spend a bit more since
    /// the key is derived once per command.
    pub const DEFAULT: KdfParams = KdfParams {
        m_cost: 64 * 1024,
        t_cost: 3,
        p_cost: 1,
    };

    /// Largest memory accepted from a key file: 1 GiB.
    pub const MAX_M_COST: u32 = 1 << 20;
    /// Most passes accepted.
    pub const MAX_T_COST: u32 = 16;
    /// Most lanes accepted.
    pub const MAX_P_COST: u32 = 16;
    /// Most work (memory × passes, in KiB) accepted: 4 GiB-passes, about 20 s on one core.
    pub const MAX_WORK: u64 = 4 << 20;

    /// Why these parameters are refused, if they are. Key files are read before the
    /// password is known to be right, so anyone who can write to `keys/` chooses them:
    /// unbounded, `m_cost = 4294967295` aborts every command on a 4 TiB allocation and a
    /// large `t_cost` runs for minutes.
    pub fn problem(&self) -> Option<String> {
        let work = self.m_cost as u64 * self.t_cost as u64;
        if self.p_cost == 0 || self.p_cost > Self::MAX_P_COST {
            Some(format!(
                "p_cost {} is outside 1..={}",
                self.p_cost,
                Self::MAX_P_COST
            ))
        } else if self.m_cost < 8 * self.p_cost || self.m_cost > Self::MAX_M_COST {
            Some(format!(
                "m_cost {} KiB is outside {}..={} KiB",
                self.m_cost,
                8 * self.p_cost,
                Self::MAX_M_COST
            ))
        } else if self.t_cost == 0 || self.t_cost > Self::MAX_T_COST {
            Some(format!(
                "t_cost {} is outside 1..={}",
                self.t_cost,
                Self::MAX_T_COST
            ))
        } else if work > Self::MAX_WORK {
            Some(format!(
                "m_cost × t_cost = {work} KiB-passes exceeds {}",
                Self::MAX_WORK
            ))
        } else {
            None
        }
    }

    /// The key-encryption key for a password.
    pub fn derive(&self, password: &[u8], salt: &[u8]) -> Result<Zeroizing<[u8; 32]>> {
        if let Some(p) = self.problem() {
            return Err(Error::Other(format!("argon2id parameters refused: {p}")));
        }
        let params = argon2::Params::new(self.m_cost, self.t_cost, self.p_cost, Some(32))
            .map_err(|e| Error::Other(format!("invalid argon2id parameters in key file: {e}")))?;
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = Zeroizing::new([0u8; 32]);
        a.hash_password_into(password, salt, &mut out[..])
            .map_err(|e| Error::Other(format!("argon2id failed: {e}")))?;
        Ok(out)
    }
}

/// Seals `plain` under a raw 256-bit key (used for wrapping the master key).
pub fn seal_with_key(key: &[u8; 32], plain: &[u8]) -> Vec<u8> {
    Sealer(Some(Box::new(Aes256Gcm::new(key.into())))).seal(plain, b"cairn key")
}

pub fn open_with_key(key: &[u8; 32], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    Sealer(Some(Box::new(Aes256Gcm::new(key.into()))))
        .open(sealed, b"cairn key", &|| String::new())
        .ok()
        .map(Zeroizing::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trip_and_tamper() {
        let keys = Keys::from_master([7u8; 64]);
        let s = keys.sealer(&[1u8; 32]);
        let mut sealed = s.seal(b"hello blob", b"aad");
        assert_eq!(sealed.len(), 10 + SEAL_OVERHEAD);
        let name = || "test".to_string();
        assert_eq!(s.open(&sealed, b"aad", &name).unwrap(), b"hello blob");
        assert!(s.open(&sealed, b"other", &name).is_err());
        sealed[14] ^= 1;
        assert!(s.open(&sealed, b"aad", &name).is_err());
        // Another file's salt gives another key.
        let other = keys.sealer(&[2u8; 32]).seal(b"hello blob", b"aad");
        assert!(s.open(&other, b"aad", &name).is_err());
    }

    #[test]
    fn ids_are_keyed() {
        let a = Keys::from_master([1u8; 64]);
        let b = Keys::from_master([2u8; 64]);
        assert_ne!(a.chunk_id(b"x"), b.chunk_id(b"x"));
        assert_eq!(Keys::unencrypted().chunk_id(b"x"), Id::of_file(b"x"));
        let mut h = a.chunk_hasher();
        h.update(b"x");
        assert_eq!(Id(*h.finalize().as_bytes()), a.chunk_id(b"x"));
    }

    #[test]
    fn wrap_unwrap() {
        let kek = [9u8; 32];
        let w = seal_with_key(&kek, &[5u8; 64]);
        assert_eq!(&open_with_key(&kek, &w).unwrap()[..], &[5u8; 64]);
        assert!(open_with_key(&[8u8; 32], &w).is_none());
    }
}
