use super::Cli;
use crate::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// An empty folder to mount on.
    mountpoint: std::path::PathBuf,
    /// Only this VM's snapshots.
    #[arg(long)]
    vm: Option<String>,
}

pub fn run(_cli: &Cli, _a: &Args) -> Result<i32> {
    Err(crate::Error::Other("mount is being written".into()))
}
