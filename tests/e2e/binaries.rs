//! What each binary offers: `kairos` the product commands only, and
//! `kairos-dev` the generator, load generator and benchmarks.

use std::process::Command;

use crate::support::{kairos_bin, kairos_dev_bin};

fn help(bin: &std::path::Path) -> String {
    let out = Command::new(bin)
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success(), "{} --help failed", bin.display());
    String::from_utf8(out.stdout).expect("utf8 help")
}

/// The command names of a clap help page (the indented lines under
/// "Commands:").
fn commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn kairos_help_lists_only_product_commands() {
    let product = commands(&help(&kairos_bin()));
    for c in [
        "serve", "import", "replay", "backtest", "rules", "sql", "report", "demo",
    ] {
        assert!(
            product.iter().any(|p| p == c),
            "{c} missing from {product:?}"
        );
    }
    let dev = commands(&help(&kairos_dev_bin()));
    for c in [
        "generate",
        "loadgen",
        "bench-rules",
        "bench-policy",
        "bench-delivery",
        "bench-report",
    ] {
        assert!(
            dev.iter().any(|d| d == c),
            "{c} missing from kairos-dev: {dev:?}"
        );
        assert!(
            !product.iter().any(|p| p == c),
            "{c} is in the product binary"
        );
    }
}
