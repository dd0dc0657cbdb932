use super::Cli;
use crate::repo::config::ChunkerParams;
use crate::repo::{InitOptions, Repository};
use crate::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// aes-256-gcm (default) or none.
    #[arg(long, default_value = "aes-256-gcm", value_parser = ["aes-256-gcm", "none"])]
    encryption: String,
    /// fastcdc (content-defined, default) or fixed.
    #[arg(long, default_value = "fastcdc", value_parser = ["fastcdc", "fixed"])]
    chunker: String,
    /// Average (fastcdc) or exact (fixed) chunk size.
    #[arg(long, value_parser = super::parse_size)]
    chunk_size: Option<u64>,
    /// Create an encrypted repository with an empty password (anyone who can read the
    /// repository can then open it; for tests and throw-away repositories).
    #[arg(long)]
    insecure_no_password: bool,
    /// zstd level for stored chunks, 0 for none.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(0..=19))]
    compression: i32,
}

pub fn run(cli: &Cli, a: &Args) -> Result<i32> {
    let loc = cli.location()?;
    let mut opts = InitOptions::default();
    let default_avg = opts.chunker.avg_size;
    let size = a
        .chunk_size
        .map_or(default_avg, |s| s.min(u32::MAX as u64) as u32);
    opts.chunker = match a.chunker.as_str() {
        "fixed" => ChunkerParams::fixed(size),
        _ => ChunkerParams::fastcdc(size),
    };
    opts.zstd_level = a.compression;
    let password = match a.encryption.as_str() {
        "none" => None,
        _ if a.insecure_no_password => Some(String::new()),
        _ => {
            let pw = cli.password(true)?;
            if pw.is_empty() {
                return Err(crate::Error::Usage(
                    "refusing an empty password for an encrypted repository: anyone who can \
                     read the repository could open it. Give a password, or pass \
                     --insecure-no-password if that is really what you want"
                        .into(),
                ));
            }
            Some(pw)
        }
    };
    let repo = Repository::init_at(&loc, password.as_deref(), &opts)?;
    if cli.json {
        cli.print_json(&repo.config);
    } else {
        println!(
            "created cairn repository {} at {} ({}, {} chunks of {} on average)",
            &repo.config.id[..8],
            loc.display(),
            repo.config.cipher,
            repo.config.chunker.kind.name(),
            super::human(repo.config.chunker.avg_size as u64)
        );
    }
    Ok(0)
}
