//! `shoal`: the per-host Shoal node.

use clap::Parser;

/// The per-host Shoal node: gossip membership, mTLS QUIC tunnels, proxying.
#[derive(Parser, Debug)]
#[command(name = "shoal", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!("shoal: the node daemon is not built yet; see README.md");
    std::process::exit(2);
}
