//! `shoal-sim`: runs a whole Shoal mesh on one machine and reports what happened.

use clap::Parser;

/// Runs a whole Shoal mesh on one machine — real nodes, demo backends, traffic,
/// injected faults — and reports what happened.
#[derive(Parser, Debug)]
#[command(name = "shoal-sim", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    println!(
        "shoal-sim: the simulator is not built yet. When it is, this command will start five \
         real Shoal nodes on loopback, send traffic through them, kill, partition and restart \
         nodes, and report how the mesh coped."
    );
}
