//! `runvm template list` and `runvm template rm`: the VM templates of
//! [`crate::template`].

use clap::{Args, Subcommand};

use super::CliError;
use crate::template;

#[derive(Args, Debug)]
pub struct TemplateArgs {
    #[command(subcommand)]
    pub command: TemplateCommand,
}

#[derive(Subcommand, Debug)]
pub enum TemplateCommand {
    /// List the templates: name, size on disk, and with --verbose the
    /// inputs each was made from.
    List {
        #[arg(short, long)]
        verbose: bool,
    },
    /// Remove templates by name, or all of them (VMs restored from one
    /// keep running).
    Rm {
        #[arg(long, conflicts_with = "names")]
        all: bool,
        names: Vec<String>,
    },
}

pub fn template(args: TemplateArgs) -> Result<u8, CliError> {
    let store = template::store_dir();
    match args.command {
        TemplateCommand::List { verbose } => {
            for found in template::list(&store).map_err(CliError::new)? {
                println!(
                    "{}\t{} KiB\t{}",
                    found.name,
                    found.bytes / 1024,
                    found.dir.display()
                );
                if verbose {
                    for line in found.inputs.lines() {
                        println!("\t{line}");
                    }
                }
            }
        }
        TemplateCommand::Rm { all, names } => {
            if !all && names.is_empty() {
                return Err(CliError::new("name the templates to remove, or give --all"));
            }
            let names = if all {
                template::list(&store)
                    .map_err(CliError::new)?
                    .into_iter()
                    .map(|t| t.name)
                    .collect()
            } else {
                names
            };
            for name in names {
                template::remove(&store, &name).map_err(CliError::new)?;
            }
        }
    }
    Ok(0)
}
