//! `shoal-sim`: runs a whole Shoal mesh on one machine and reports what happened.
//! With no arguments it runs the demo (sim/scenarios/demo.toml).

/// `println!` that ignores a closed stdout (`shoal ... | head` must not panic).
macro_rules! say {
    () => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout());
    }};
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `print!` that ignores a closed stdout.
macro_rules! say_inline {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use shoal_sim::mesh::Mode;
use shoal_sim::runner::{RunOptions, run};
use shoal_sim::scenario::{Scenario, Step};

/// Runs a whole Shoal mesh on one machine — real nodes, demo backends, traffic,
/// injected faults — and reports what happened. Without a subcommand: the demo.
#[derive(Parser, Debug)]
#[command(name = "shoal-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    demo: DemoArgs,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Nodes in the demo (at least 5).
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Stretch or shrink the demo's fixed waits to about this many seconds in all.
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE", global = true)]
    json: Option<PathBuf>,
    /// Run each node as a `shoal run` child process instead of in this process.
    #[arg(long, global = true)]
    processes: bool,
    /// Seed for the run (overrides the scenario's).
    #[arg(long, global = true)]
    seed: Option<u64>,
    /// No live status line.
    #[arg(long, global = true)]
    quiet: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a scenario file (see docs/simulator.md and sim/scenarios/).
    Run {
        /// The scenario.
        file: PathBuf,
    },
    /// Check a scenario file without running it.
    Check {
        /// The scenario.
        file: PathBuf,
    },
    /// The membership protocol of thousands of nodes on a simulated clock
    /// (cold start, quiet, join, broadcasts, kills, a partition, a steady
    /// period), checked against the scaling targets. See docs/simulator.md.
    Model {
        /// Nodes in the mesh.
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        /// Probability that a message is lost, for the whole run.
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// Length of the steady phase (simulated), e.g. 60s or 10m.
        #[arg(long, default_value = "60s", value_parser = humantime_serde::re::humantime::parse_duration)]
        duration: Duration,
        /// Length of the quiet phase (simulated).
        #[arg(long, default_value = "30s", value_parser = humantime_serde::re::humantime::parse_duration)]
        quiet_period: Duration,
        /// Fraction of the nodes cut off in the partition phase (0: none).
        #[arg(long, default_value_t = 0.1)]
        partition: f64,
        /// How the mesh starts: `waves` (from nothing, the cold start
        /// measured) or `settled` (every node holding every other's records,
        /// for meshes too large to cold-start in a simulation).
        #[arg(long, value_enum, default_value = "waves")]
        start: shoal_sim::model::Start,
    },
    /// Memory benchmark: RSS of `shoal run` processes idle and with many
    /// tunnelled connections open (needs the release `shoal` binary).
    Memory {
        /// Concurrent tunnelled connections to hold open.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
    },
    /// (Used by `memory`.) Open connections and hold them until stdin closes.
    #[command(hide = true)]
    HoldConnections {
        /// The listener.
        #[arg(long)]
        addr: std::net::SocketAddr,
        /// How many.
        #[arg(long)]
        count: usize,
    },
}

/// mimalloc, as the `shoal` binary: the model's nodes make small allocations
/// for every message and record they handle (glibc's malloc and free were about
/// a third of a 1,000-node run's CPU, docs/benchmarks.md), and in-process real
/// nodes then allocate as `shoal run` does. Built with `no_thp`, as the node.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shoal-sim: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main_async(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("shoal-sim: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn demo(args: &DemoArgs) -> Result<Scenario> {
    let mut s = Scenario::parse(shoal_sim::DEMO, "demo")?;
    if args.nodes < 5 {
        bail!(
            "--nodes: the demo needs at least 5 nodes, got {}",
            args.nodes
        );
    }
    for i in (s.mesh.nodes + 1)..=args.nodes {
        for l in &mut s.mesh.listeners {
            l.on.push(format!("n{i}"));
        }
    }
    s.mesh.nodes = args.nodes;
    if let Some(target) = args.duration {
        if !(5.0..=3600.0).contains(&target) {
            bail!("--duration: give between 5 and 3600 seconds, got {target}");
        }
        let fixed: f64 = s
            .steps
            .iter()
            .filter_map(|st| match st {
                Step::Wait {
                    duration: Some(d), ..
                } => Some(d.as_secs_f64()),
                _ => None,
            })
            .sum();
        // Convergence waits take a few seconds on their own; scale the fixed ones.
        let factor = ((target - 8.0).max(1.0) / fixed.max(1.0)).max(0.1);
        for st in &mut s.steps {
            if let Step::Wait {
                duration: Some(d), ..
            } = st
            {
                *d = Duration::from_secs_f64(d.as_secs_f64() * factor);
            }
        }
    }
    Ok(s)
}

async fn main_async(cli: Cli) -> Result<bool> {
    let mut scenario = match &cli.command {
        None => demo(&cli.demo)?,
        Some(Command::Memory { connections }) => {
            return run_memory(*connections, cli.common.json.as_deref()).await;
        }
        Some(Command::Model {
            nodes,
            loss,
            duration,
            quiet_period,
            partition,
            start,
        }) => {
            let opts = shoal_sim::model::ModelOptions {
                nodes: *nodes,
                loss: *loss,
                steady: *duration,
                quiet: *quiet_period,
                partition: *partition,
                start: *start,
                seed: cli.common.seed.unwrap_or(1),
                progress: !cli.common.quiet,
                ..shoal_sim::model::ModelOptions::default()
            };
            return run_model(opts, cli.common.json.as_deref()).await;
        }
        Some(Command::Run { file }) => Scenario::load(file)?,
        Some(Command::HoldConnections { addr, count }) => {
            shoal_sim::memory::hold(*addr, *count).await?;
            return Ok(true);
        }
        Some(Command::Check { file }) => {
            let s = Scenario::load(file)?;
            say!(
                "{}: ok ({} nodes, {} steps)",
                file.display(),
                s.mesh.nodes,
                s.steps.len()
            );
            return Ok(true);
        }
    };
    if let Some(seed) = cli.common.seed {
        scenario.seed = seed;
    }
    let mode = if cli.common.processes {
        Mode::Processes {
            shoal: shoal_binary()?,
        }
    } else {
        Mode::InProcess
    };
    use std::io::IsTerminal;
    let live = !cli.common.quiet && std::io::stderr().is_terminal();
    say!(
        "shoal-sim: running scenario {:?}: {}",
        scenario.name,
        scenario.description
    );
    let notes = !cli.common.quiet;
    let report = run(&scenario, RunOptions { mode, live, notes }).await?;
    say_inline!("{}", report.to_text());
    if let Some(path) = &cli.common.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        say!("report written to {}", path.display());
    }
    Ok(report.passed())
}

/// `shoal-sim memory`: measures a node's memory idle and holding
/// `connections`, prints and optionally saves it.
async fn run_memory(connections: usize, json: Option<&std::path::Path>) -> Result<bool> {
    let shoal = shoal_binary()?;
    let me = std::env::current_exe()?;
    let r = shoal_sim::memory::run(shoal, me, connections).await?;
    say!(
        "memory of `shoal run` (RSS):\n  idle: caller {:.1} MiB, server {:.1} MiB\n  with {} tunnelled connections open: caller {:.1} MiB, server {:.1} MiB (opened in {:.1} s)",
        r.caller_idle_mib,
        r.server_idle_mib,
        r.connections,
        r.caller_loaded_mib,
        r.server_loaded_mib,
        r.open_s
    );
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&r)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(true)
}

/// `shoal-sim model`: runs the membership model, prints and optionally saves
/// its report; whether every target was met.
async fn run_model(
    opts: shoal_sim::model::ModelOptions,
    json: Option<&std::path::Path>,
) -> Result<bool> {
    let report = tokio::task::spawn_blocking(move || shoal_sim::model::run(opts)).await??;
    say_inline!("{}", report.to_text());
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        say!("report written to {}", path.display());
    }
    Ok(report.passed())
}

/// The `shoal` binary next to this one.
fn shoal_binary() -> Result<PathBuf> {
    let shoal = std::env::current_exe()?.with_file_name("shoal");
    if !shoal.exists() {
        bail!(
            "this needs the `shoal` binary, but {} does not exist; build it first: cargo build --release -p shoal-node",
            shoal.display()
        );
    }
    Ok(shoal)
}
