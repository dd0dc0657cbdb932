use super::forget::KeepArgs;
use super::Cli;
use crate::forget::{load_policies, save_policies, StoredPolicy};
use crate::{Error, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Store (or replace) the policy for VMs matching a pattern.
    Set {
        /// VM name pattern, with * and ? wildcards.
        #[arg(long)]
        vm: String,
        #[command(flatten)]
        keep: KeepArgs,
    },
    /// Show the stored policies, in the order they are tried.
    Show,
    /// Remove the policy for a pattern.
    Remove {
        #[arg(long)]
        vm: String,
    },
}

pub fn run(cli: &Cli, a: &Args) -> Result<i32> {
    let repo = cli.open()?;
    let mut list = load_policies(&repo)?;
    match &a.action {
        Action::Set { vm, keep } => {
            let policy = keep.policy();
            if policy.is_empty() {
                return Err(Error::Usage("give at least one --keep-* rule".into()));
            }
            match list.iter_mut().find(|p| &p.vm == vm) {
                Some(p) => p.policy = policy,
                None => list.push(StoredPolicy {
                    vm: vm.clone(),
                    policy,
                }),
            }
            save_policies(&repo, &list)?;
        }
        Action::Remove { vm } => {
            let before = list.len();
            list.retain(|p| &p.vm != vm);
            if list.len() == before {
                return Err(Error::Usage(format!("no stored policy for {vm:?}")));
            }
            save_policies(&repo, &list)?;
        }
        Action::Show => {}
    }
    if cli.json {
        cli.print_json(&list);
    } else {
        for p in &list {
            println!(
                "{:<16} {}",
                p.vm,
                serde_json::to_string(&p.policy).expect("serializes")
            );
        }
        if list.is_empty() {
            println!("no stored policies");
        }
    }
    Ok(0)
}
