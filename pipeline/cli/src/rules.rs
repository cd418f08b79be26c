//! `kairos rules check`: every rule and the templates it sends, checked
//! without a server.

use std::path::{Path, PathBuf};

/// Work with the SQL trigger rules.
#[derive(clap::Subcommand)]
pub enum RulesCommand {
    /// Validate every rule file: header, parameters, `${...}` uses, and the
    /// SQL planned against the real table schemas with its required output
    /// columns; then every template the rules send, for each channel, and
    /// the names it uses. Errors as `file:line: message`.
    Check {
        /// Rules folder.
        #[arg(default_value = "sql")]
        dir: PathBuf,
        /// Templates folder.
        #[arg(long, default_value = "templates")]
        templates: PathBuf,
    },
}

/// Runs `command`.
pub fn run(command: RulesCommand, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    match command {
        RulesCommand::Check { dir, templates } => check(&dir, &templates, rt),
    }
}

fn check(dir: &Path, templates: &Path, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let (rules, errors) = rt.block_on(kairos_rules::check_dir(dir));
    let template_errors = match kairos_messaging::Templates::load(templates) {
        Ok(t) => rt.block_on(kairos_messaging::check_rules(&rules, &t)),
        Err(e) => e,
    };
    for e in &errors {
        eprintln!("{e}");
    }
    for e in &template_errors {
        eprintln!("{e}");
    }
    let problems = errors.len() + template_errors.len();
    if problems > 0 {
        anyhow::bail!(
            "{problems} problem(s) in {} and {}; {} rule(s) valid",
            dir.display(),
            templates.display(),
            rules.len()
        );
    }
    println!(
        "{} rule(s) valid in {}, their templates in {}",
        rules.len(),
        dir.display(),
        templates.display()
    );
    Ok(())
}
