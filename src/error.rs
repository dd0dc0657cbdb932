//! The crate's error type. Every variant names the object it is about and, where the user
//! can act, says what to do.

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a cairn repository (no config file found); create one with `cairn init`")]
    NotARepository(String),
    #[error("wrong password for repository {0}: no key file opens with it")]
    WrongPassword(String),
    #[error("repository {path} has format version {found}; this cairn reads version {supported}: {hint}")]
    UnsupportedVersion {
        path: String,
        found: u32,
        supported: u32,
        hint: &'static str,
    },
    #[error("{object} is damaged: {detail}. {advice}")]
    Corrupt {
        object: String,
        detail: String,
        advice: &'static str,
    },
    #[error("{0}")]
    Locked(String),
    /// Guest data (a partition table, a filesystem inside a disk image) is damaged or
    /// hostile: it is reported, never trusted.
    #[error("{0}")]
    Guest(String),
    /// Guest data cairn recognises but does not read (an encrypted volume, an unsupported
    /// filesystem feature); the message names the volume and the reason.
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// The process exit code for this error, restic's where restic has one, so scripts
    /// can tell what happened: 1 failure, 2 bad usage, 10 no repository there, 11 locked,
    /// 12 wrong password.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => 2,
            Error::NotARepository(_) => 10,
            Error::Locked(_) => 11,
            Error::WrongPassword(_) => 12,
            _ => 1,
        }
    }

    /// True if the object was not there: another process removed it between a listing
    /// and the read (a concurrent forget or prune), which is not damage.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }

    pub fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    pub fn corrupt(object: impl Into<String>, detail: impl Into<String>) -> Error {
        Error::Corrupt {
            object: object.into(),
            detail: detail.into(),
            advice: "Run `cairn check --read-data` to list every damaged object",
        }
    }

    /// Damage to what every command needs before it can look at anything else (the
    /// config, the key files): `check` cannot run either, so say what can be done.
    pub fn corrupt_root(object: impl Into<String>, detail: impl Into<String>) -> Error {
        Error::Corrupt {
            object: object.into(),
            detail: detail.into(),
            advice: "No command can open the repository without it. Put back this file from \
                     a copy of the repository (it never changes after `init`); the data in \
                     the repository is intact and readable again once it is back",
        }
    }
}

/// Attach "what was being done" to I/O errors.
pub trait IoContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(what(), e))
    }
}
