use super::Cli;
use crate::repo::lock::list_locks;
use crate::Result;

#[derive(clap::Args, Debug)]
pub struct UnlockArgs {
    /// Remove every lock, also those of running processes (dangerous while they run).
    #[arg(long)]
    remove_all: bool,
}

/// `locks`: who holds the repository.
pub fn list(cli: &Cli) -> Result<i32> {
    let repo = cli.open()?;
    let locks = list_locks(&*repo.backend)?;
    if cli.json {
        let rows: Vec<_> = locks
            .iter()
            .map(|(name, info)| {
                serde_json::json!({
                    "name": name,
                    "lock": info,
                    "stale": info.as_ref().map(|i| i.stale_reason()),
                })
            })
            .collect();
        cli.print_json(&rows);
        return Ok(0);
    }
    for (name, info) in &locks {
        match info {
            Some(i) => {
                let stale = i
                    .stale_reason()
                    .map(|r| format!(" — STALE: {r}"))
                    .unwrap_or_default();
                println!("{name}: {}{stale}", i.describe());
            }
            None => println!("{name}: unreadable (being written or removed)"),
        }
    }
    println!("{} locks", locks.len());
    Ok(0)
}

/// `unlock`: remove stale locks, or with --remove-all every lock.
pub fn unlock(cli: &Cli, a: &UnlockArgs) -> Result<i32> {
    let repo = cli.open()?;
    let mut removed = 0;
    for (name, info) in list_locks(&*repo.backend)? {
        let stale = info.as_ref().and_then(|i| i.stale_reason());
        if a.remove_all || stale.is_some() {
            if stale.is_none() {
                eprintln!(
                    "warning: removing a live lock {name} ({}): its process may still be writing",
                    info.as_ref()
                        .map(|i| i.describe())
                        .unwrap_or_else(|| "unreadable".into())
                );
            }
            repo.backend.delete(&name)?;
            removed += 1;
        }
    }
    if cli.json {
        cli.print_json(&serde_json::json!({ "removed": removed }));
    } else {
        println!("removed {removed} locks");
    }
    Ok(0)
}
