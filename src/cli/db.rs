//! `duckpond db upgrade|status`.

use clap::Subcommand;

use crate::config::{FlagOverrides, Home};
use crate::meta::SchemaStatus;

/// Metadata schema commands.
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Apply pending migrations (creates the SQLite file if needed).
    Upgrade,
    /// Show whether the schema matches this binary.
    Status,
}

pub async fn run(home: &Home, command: DbCommand) -> anyhow::Result<()> {
    let (_, meta) = super::connect(home, &FlagOverrides::default()).await?;
    match command {
        DbCommand::Upgrade => {
            let applied = meta.migrate().await?;
            println!("metadata database up to date ({applied} migration(s) applied)");
        }
        DbCommand::Status => match meta.schema_status().await? {
            SchemaStatus::Current { version } => println!("current (version {version})"),
            SchemaStatus::Uninitialised => println!("uninitialised: run `duckpond db upgrade`"),
            SchemaStatus::Behind { pending } => println!("behind: pending {pending:?}; run `duckpond db upgrade`"),
            SchemaStatus::Ahead { unknown } => println!("ahead: unknown migrations {unknown:?}"),
        },
    }
    meta.close().await;
    Ok(())
}
