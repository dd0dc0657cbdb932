//! Command-line parsing and dispatch. One file per command; each turns options into a call
//! of the library and prints the result, as text or (with `--json`) one JSON document.

mod backup;
mod check;
mod files;
mod forget;
mod init;
mod locks;
mod mount;
mod policy;
mod protect;
mod prune;
mod repair;
mod restore;
mod snapshots;

use crate::repo::Repository;
use crate::{Error, Result};
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "cairn",
    version,
    about = "Deduplicating, encrypted backups of VM disk images"
)]
pub struct Cli {
    /// Repository: a folder (local disk or NAS mount), or `s3:https://HOST/BUCKET/PREFIX`
    /// (credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
    #[arg(long = "repo", short = 'r', env = "CAIRN_REPOSITORY", global = true)]
    pub repo: Option<std::ffi::OsString>,
    /// A backend option, KEY=VALUE (s3.storage-class, s3.bucket-lookup=auto|dns|path,
    /// s3.region, s3.ca-file, s3.conditional-put); repeat for more.
    #[arg(long = "option", short = 'o', global = true, value_parser = parse_option)]
    pub options: Vec<(String, String)>,
    /// File holding the repository password (else $CAIRN_PASSWORD, else a prompt).
    #[arg(long, env = "CAIRN_PASSWORD_FILE", global = true)]
    pub password_file: Option<PathBuf>,
    /// Print one JSON document instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress bars.
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
    /// Wait up to this long for a conflicting lock (e.g. 90s, 30m, 2h) instead of failing
    /// at once.
    #[arg(long, global = true, value_parser = parse_wait)]
    pub retry_lock: Option<i64>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a repository.
    Init(init::Args),
    /// Back up one VM's disk images into one snapshot.
    Backup(backup::Args),
    /// Restore a snapshot's disks into a folder.
    Restore(restore::Args),
    /// List snapshots.
    Snapshots(snapshots::Args),
    /// List the disks and volumes of a snapshot, or the files of a directory inside one.
    Ls(files::LsArgs),
    /// Write one file of a snapshot to stdout (a directory with --archive tar).
    Dump(files::DumpArgs),
    /// Find files by name or path in every snapshot (each version of a file).
    Find(files::FindArgs),
    /// Serve every snapshot read-only over FUSE: disks as raw images, volumes as files.
    Mount(mount::Args),
    /// Verify the repository (add --read-data to verify every byte).
    Check(check::Args),
    /// Remove snapshots by retention policy (add --prune to reclaim space).
    Forget(forget::Args),
    /// Delete data no snapshot needs; repack mostly unused packs.
    Prune(prune::Args),
    /// Protect a snapshot from forget.
    Protect(protect::Args),
    /// Remove a snapshot's protection.
    Unprotect(protect::Args),
    /// Store retention policies in the repository, for `forget --policy`.
    Policy(policy::Args),
    /// Repair a damaged repository: index, packs, snapshots.
    Repair(repair::Args),
    /// List the repository's locks.
    Locks,
    /// Remove stale locks (--remove-all: every lock).
    Unlock(locks::UnlockArgs),
}

/// Exit codes: 0 success, 1 failure (including problems found by check), 2 bad usage.
pub fn run(cli: Cli) -> Result<i32> {
    crate::fixed_mmap_threshold();
    match &cli.command {
        Command::Init(a) => init::run(&cli, a),
        Command::Backup(a) => backup::run(&cli, a),
        Command::Restore(a) => restore::run(&cli, a),
        Command::Snapshots(a) => snapshots::run(&cli, a),
        Command::Ls(a) => files::ls(&cli, a),
        Command::Dump(a) => files::dump(&cli, a),
        Command::Find(a) => files::find(&cli, a),
        Command::Mount(a) => mount::run(&cli, a),
        Command::Check(a) => check::run(&cli, a),
        Command::Forget(a) => forget::run(&cli, a),
        Command::Prune(a) => prune::run(&cli, a),
        Command::Protect(a) => protect::run(&cli, a, true),
        Command::Unprotect(a) => protect::run(&cli, a, false),
        Command::Policy(a) => policy::run(&cli, a),
        Command::Repair(a) => repair::run(&cli, a),
        Command::Locks => locks::list(&cli),
        Command::Unlock(a) => locks::unlock(&cli, a),
    }
}

impl Cli {
    /// Where the repository is, from --repo / $CAIRN_REPOSITORY and --option.
    pub fn location(&self) -> Result<crate::backend::Location> {
        let r = self.repo.as_ref().ok_or_else(|| {
            Error::Usage(
                "no repository given: pass --repo PATH|s3:URL or set CAIRN_REPOSITORY".into(),
            )
        })?;
        crate::backend::Location::parse(r, &self.options)
    }

    /// The password from --password-file, $CAIRN_PASSWORD, or a terminal prompt.
    pub fn password(&self, confirm: bool) -> Result<String> {
        if let Some(f) = &self.password_file {
            let s = std::fs::read_to_string(f)
                .map_err(|e| Error::io(format!("reading password file {}", f.display()), e))?;
            return Ok(s.trim_end_matches(['\n', '\r']).to_string());
        }
        if let Ok(p) = std::env::var("CAIRN_PASSWORD") {
            return Ok(p);
        }
        if !std::io::stdin().is_terminal() {
            return Err(Error::Usage(
                "the repository is encrypted and no password was given: set CAIRN_PASSWORD or \
                 CAIRN_PASSWORD_FILE, or pass --password-file"
                    .into(),
            ));
        }
        let p = rpassword::prompt_password("repository password: ")
            .map_err(|e| Error::io("reading the password", e))?;
        if confirm
            && rpassword::prompt_password("again: ")
                .map_err(|e| Error::io("reading the password", e))?
                != p
        {
            return Err(Error::Usage("the passwords differ".into()));
        }
        Ok(p)
    }

    pub fn open(&self) -> Result<Repository> {
        let mut repo = Repository::open_at(&self.location()?, &|| self.password(false))?;
        repo.lock_wait = std::time::Duration::from_secs(self.retry_lock.unwrap_or(0).max(0) as u64);
        Ok(repo)
    }

    pub fn print_json<T: serde::Serialize>(&self, v: &T) {
        match serde_json::to_string_pretty(v) {
            Ok(s) => println!("{s}"),
            // Reports are plain data; this would be a bug, and still must not panic.
            Err(e) => eprintln!("cairn: error: the report cannot be written as JSON: {e}"),
        }
    }
}

/// "1 disk", "2 disks".
pub fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn parse_option(s: &str) -> std::result::Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// Bytes as users read them (KiB, MiB, GiB).
pub fn human(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

/// Parses sizes such as `65536`, `64K`, `64KiB`, `1M`.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim().trim_end_matches("iB").trim_end_matches('B');
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| format!("{s:?} is not a size (examples: 65536, 64K, 1M)"))
}

/// Parses a wait such as `90s`, `30m`, `2h` or `1h30m` (a bare number is seconds) into
/// seconds. Unlike retention periods, `m` means minutes here.
pub(crate) fn parse_wait(s: &str) -> std::result::Result<i64, String> {
    let bad = || format!("{s:?} is not a wait (examples: 90s, 30m, 2h)");
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n.max(0));
    }
    let (mut total, mut num) = (0i64, String::new());
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: i64 = num.parse().map_err(|_| bad())?;
        num.clear();
        total += n * match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(bad()),
        };
    }
    if !num.is_empty() {
        return Err(bad());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    #[test]
    fn waits_are_minutes_not_months() {
        assert_eq!(super::parse_wait("30m"), Ok(1800));
        assert_eq!(super::parse_wait("1h30m"), Ok(5400));
        assert_eq!(super::parse_wait("90"), Ok(90));
        assert!(super::parse_wait("2d").is_err());
        assert!(super::parse_wait("m").is_err());
    }
}
