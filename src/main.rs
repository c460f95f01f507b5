//! The `fleet` command: one binary, one role per subcommand. This file only
//! parses flags, loads the config, binds the listeners and hands them with a
//! shutdown future to the library's `run` for the role; everything else is
//! in the `fleet` library.

#![deny(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use fleet::config::{Config, ConfigSources};
use fleet::launcher::Outcome;
use fleet::progress::Verbosity;
use fleet::runs::RunFolder;
use fleet::{bench, cli, eval, export, health, launcher, plot, process};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "fleet", version, about = "Distributed actor-learner reinforcement learning")]
struct Cli {
    /// TOML config file layered over the embedded default.
    #[arg(long, global = true, env = "FLEET_CONFIG")]
    config: Option<PathBuf>,
    /// Set any config key, e.g. --set learner.learning_rate=5e-4 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    overrides: Vec<String>,
    /// Seed for environments, sampling and initialisation (config key `seed`).
    #[arg(long, global = true)]
    seed: Option<u64>,
    /// Serve Prometheus metrics (and an actor's health) here; port 0 picks a
    /// free one. Loopback unless asked: the images set 0.0.0.0:9090, where
    /// Prometheus scrapes from another container.
    #[arg(long, global = true, default_value = "127.0.0.1:9090", env = "FLEET_METRICS_LISTEN")]
    metrics_listen: SocketAddr,
    /// End when stdin closes (used by `fleet run` for its children).
    #[arg(long, global = true, hide = true)]
    exit_with_stdin: bool,
    /// Say less: no progress bar or lines, warnings and errors only.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Say more: progress lines above the bar, and the logs of `fleet run`'s
    /// children (-v: info, -vv: debug). RUST_LOG, where set, wins.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train on this machine: replay, learner and actors as child processes.
    Run {
        /// Actor processes (config key `run.actors`).
        #[arg(long)]
        actors: Option<usize>,
        /// Succeed once the step-weighted return of the last 50,000 env steps reaches this (`run.target_return`).
        #[arg(long)]
        target_return: Option<f64>,
        /// Fail once this many env steps pass without success (`run.max_env_steps`);
        /// a resumed run counts the steps of its earlier segments.
        #[arg(long)]
        max_env_steps: Option<u64>,
        /// Name of the run's folder under --run-dir (default: the UTC start
        /// time, e.g. 20261204-233501); one that exists already is an error.
        #[arg(long, conflicts_with = "resume")]
        name: Option<String>,
        /// Folder that holds the run folders.
        #[arg(long, value_name = "DIR", default_value = "runs", conflicts_with = "resume")]
        run_dir: PathBuf,
        /// Continue the stopped run in this folder: its config.toml is the
        /// config file (flags still apply), the learner resumes from its
        /// newest checkpoint, and progress rows are appended.
        #[arg(long, value_name = "RUN")]
        resume: Option<PathBuf>,
        /// Also write the progress as TensorBoard event files in the run
        /// folder's tensorboard/ (`run.tensorboard`).
        #[arg(long)]
        tensorboard: bool,
    },
    /// Draw learning curves (mean return of the last 100 episodes) of run
    /// folders as a PNG; runs whose configs differ only in the seed are one
    /// line with a shaded band between their lowest and highest.
    Plot {
        /// Run folders (each with a progress.csv and a config.toml).
        #[arg(required = true, value_name = "RUN")]
        runs: Vec<PathBuf>,
        /// The PNG file to write.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// The horizontal axis: env steps or wall-clock seconds.
        #[arg(long, value_enum, default_value_t = plot::XAxis::Steps)]
        x: plot::XAxis,
        /// Image width in pixels.
        #[arg(long, default_value_t = 1024)]
        width: u32,
        /// Image height in pixels.
        #[arg(long, default_value_t = 640)]
        height: u32,
    },
    /// Play a run's trained policy for whole episodes in this process and
    /// print the return's mean ± standard deviation, lowest and highest,
    /// and the episode lengths; optionally record episodes as a GIF.
    /// `--seed` seeds the environments and sampling (default: the run's).
    Eval {
        /// The run folder (its config.toml and policy.safetensors).
        #[arg(value_name = "RUN")]
        run: PathBuf,
        /// Play this weights file instead of RUN/policy.safetensors, e.g. a
        /// learner checkpoint's model.safetensors (or its folder).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// Episodes to play.
        #[arg(long, default_value_t = 10)]
        episodes: usize,
        /// Take the most probable action at every step instead of sampling.
        #[arg(long)]
        greedy: bool,
        /// Also write the numbers, per-episode returns and lengths included, as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Record episodes as an animated GIF.
        #[arg(long, value_name = "GIF")]
        record: Option<PathBuf>,
        /// Episodes to record, the first ones played.
        #[arg(long, default_value_t = 1, value_name = "N", requires = "record")]
        record_episodes: usize,
    },
    /// Write a run's policy as a PyTorch module (fleet_torch.py, with
    /// architecture.json and a copy of policy.safetensors) into a folder,
    /// and print how to load it.
    Export {
        /// The run folder (with config.toml and policy.safetensors).
        #[arg(value_name = "RUN")]
        run: PathBuf,
        /// What to export to.
        #[arg(long, value_enum, default_value_t = export::Format::Torch)]
        format: export::Format,
        /// The folder to write (created if need be).
        #[arg(short, long, value_name = "DIR")]
        output: PathBuf,
    },
    /// Record a fleet that runs elsewhere (replay, learner and actors
    /// started on their own, e.g. by docker compose) into a run folder, as
    /// `fleet run` records its own: progress rows from every process's
    /// /metrics, TensorBoard events with --tensorboard, the summary, and the
    /// final policy when learner.checkpoint_dir is a folder this process can
    /// read. Ends at the target, the step budget or Ctrl-C; stops nothing.
    Record {
        /// A process's /metrics address (host:port), once per process: the
        /// learner's and every actor's (replay's is welcome too).
        #[arg(long = "metrics", value_name = "HOST:PORT", required = true)]
        metrics: Vec<String>,
        /// Name of the run's folder under --run-dir (default: the UTC start time).
        #[arg(long)]
        name: Option<String>,
        /// Folder that holds the run folders.
        #[arg(long, value_name = "DIR", default_value = "runs")]
        run_dir: PathBuf,
        /// Also write the progress as TensorBoard event files (`run.tensorboard`).
        #[arg(long)]
        tensorboard: bool,
    },
    /// Serve the replay tables.
    Replay {
        #[arg(long, default_value = "0.0.0.0:50051", env = "FLEET_LISTEN")]
        listen: SocketAddr,
        /// Start from the newest complete checkpoint under DIR (an error if
        /// there is none); without it, from replay.checkpoint_dir's newest, if any.
        #[arg(long, value_name = "DIR")]
        restore: Option<PathBuf>,
    },
    /// Learn from replay and serve weights.
    Learner {
        #[arg(long, default_value = "0.0.0.0:50052", env = "FLEET_LISTEN")]
        listen: SocketAddr,
        /// Replay service address (host:port).
        #[arg(long, default_value = "127.0.0.1:50051", env = "FLEET_REPLAY_ADDRESS")]
        replay: String,
    },
    /// Measure a part of fleet and print a table of numbers.
    Bench {
        #[command(subcommand)]
        target: BenchTarget,
    },
    /// Print the effective config (default, file, environment, flags) as TOML
    /// and exit; a bad key or value is an error naming it.
    Config,
    /// Check a fleet process's health (exit 0 when healthy); for container health checks.
    ///
    /// With --address: asks that gRPC server's health service for SERVING.
    /// Without: checks this container's own fleet process, found from its
    /// environment: the gRPC server on FLEET_LISTEN's port if set (replay,
    /// learner), else the /metrics endpoint on FLEET_METRICS_LISTEN's (actor).
    Health {
        /// gRPC server address (host:port).
        #[arg(long)]
        address: Option<String>,
        /// Service to ask about; empty means the server as a whole.
        #[arg(long, default_value = "")]
        service: String,
    },
    /// Act in environments and stream sequences to replay.
    Actor {
        /// Unique id of this actor (defaults to one derived from host name and process id).
        #[arg(long, env = "FLEET_ACTOR_ID")]
        actor_id: Option<u64>,
        #[arg(long, default_value = "127.0.0.1:50051", env = "FLEET_REPLAY_ADDRESS")]
        replay: String,
        #[arg(long, default_value = "127.0.0.1:50052", env = "FLEET_LEARNER_ADDRESS")]
        learner: String,
    },
}

#[derive(Debug, Subcommand)]
enum BenchTarget {
    /// The replay service (its own process) under K inserting and M sampling
    /// clients over loopback gRPC, for each item size.
    Replay {
        #[arg(long, default_value_t = 4)]
        inserters: usize,
        #[arg(long, default_value_t = 4)]
        samplers: usize,
        /// Sequences per sampled batch.
        #[arg(long, default_value_t = 16)]
        batch_size: u32,
        /// Seconds per workload.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Only these workloads (1KiB, 100KiB, r2d2-80x84x84); all by default.
        #[arg(long = "workload")]
        workloads: Vec<String>,
        /// Items each inserter keeps unacknowledged.
        #[arg(long, default_value_t = 256)]
        inserts_in_flight: usize,
        /// Batches the server keeps ready ahead of each sampler's stream
        /// (at most 16).
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=16))]
        batches_in_flight: u32,
        /// One request in flight per client: inserts wait for their ack,
        /// each batch is its own `Sample` call.
        #[arg(long)]
        closed_loop: bool,
        /// Items inserted before the clock starts (at most the table's
        /// capacity).
        #[arg(long, default_value_t = 0)]
        prefill: usize,
    },
    /// The replay codecs (none, lz4, zstd) on one item of CartPole vectors
    /// and of 84×84 frames: ratio and the cost of storing and reading back.
    Compression {
        /// Items stored and read back per row.
        #[arg(long, default_value_t = 200)]
        reps: usize,
    },
    /// Learner updates/s and frames/s on synthetic batches (32 × 20): the
    /// CartPole MLP, the IMPALA shallow CNN on 84×84×4 frames, that CNN
    /// with an LSTM and burn-in 20, and IMPALA's deep ResNet torso.
    Learner {
        /// Seconds per workload.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Only these workloads (mlp, shallow_cnn, shallow_cnn_lstm, deep_resnet, nature_cnn); all by default.
        #[arg(long = "workload")]
        workloads: Vec<String>,
        /// One JSON line per workload instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The whole system as `fleet run` starts it (replay, learner and N
    /// actor processes) on the configured environment, for each actor count
    /// and network core: env steps/s, learner updates/s, policy lag and each
    /// process's peak RSS, from a real run per row.
    E2e {
        /// Seconds measured per row, after the warm-up.
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
        /// Seconds of each run left out, from its first progress row.
        #[arg(long, default_value_t = 10.0)]
        warmup: f64,
        /// Actor counts, one run each.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
        actors: Vec<usize>,
        /// Network cores (`network.core`), one run each per actor count.
        #[arg(long, value_delimiter = ',', default_value = "none,lstm")]
        cores: Vec<String>,
        /// Also run the config as given until it reaches its target return,
        /// for at most this many seconds, and report how long it took.
        #[arg(long, value_name = "SECONDS")]
        time_to_target: Option<f64>,
        /// One JSON line per run instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The configured environment (`env.*`, `actor.num_envs`) stepped with
    /// random actions and no policy: agent steps/s and env frames/s, through
    /// the env bridge for a bridged one.
    Env {
        /// Seconds measured, after one of warm-up.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// One JSON line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn load_config(cli: &Cli) -> Result<Config> {
    let mut overrides = Vec::new();
    if let Some(seed) = cli.seed {
        overrides.push(format!("seed={seed}"));
    }
    let mut file = cli.config.clone();
    // A command on a run folder takes the folder's config.toml as its file.
    let run_folder = match &cli.command {
        Command::Run { resume: Some(folder), .. } => Some(("--resume", folder)),
        Command::Eval { run, .. } => Some(("fleet eval", run)),
        _ => None,
    };
    if let Some((what, folder)) = run_folder {
        if let Some(config) = &cli.config {
            anyhow::bail!(
                "{what} {} takes the run's own config.toml; --config {} cannot be given with it (use --set to change keys)",
                folder.display(),
                config.display()
            );
        }
        file = Some(RunFolder::open(folder)?.config_path());
    }
    if let Command::Run {
        actors,
        target_return,
        max_env_steps,
        tensorboard,
        ..
    } = &cli.command
    {
        if let Some(v) = actors {
            overrides.push(format!("run.actors={v}"));
        }
        if let Some(v) = target_return {
            overrides.push(format!("run.target_return={v:?}"));
        }
        if let Some(v) = max_env_steps {
            overrides.push(format!("run.max_env_steps={v}"));
        }
        if *tensorboard {
            overrides.push("run.tensorboard=true".into());
        }
    }
    if let Command::Record { tensorboard: true, .. } = &cli.command {
        overrides.push("run.tensorboard=true".into());
    }
    // Flags named above win over generic --set ones given alongside.
    let mut all = cli.overrides.clone();
    all.extend(overrides);
    Config::load(&ConfigSources {
        file,
        env: std::env::vars().collect(),
        overrides: all,
    })
}

fn default_actor_id() -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    std::fs::read_to_string("/etc/hostname")
        .unwrap_or_default()
        .trim()
        .hash(&mut hasher);
    std::process::id().hash(&mut hasher);
    hasher.finish() >> 16
}

async fn run(cli: Cli) -> Result<ExitCode> {
    if let Command::Plot {
        runs,
        output,
        x,
        width,
        height,
    } = &cli.command
    {
        plot::plot(runs, output, *x, (*width, *height))?;
        println!("wrote {}", output.display());
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Eval {
        run,
        policy,
        episodes,
        greedy,
        json,
        record,
        record_episodes,
    } = &cli.command
    {
        let options = eval::Options {
            run: run.clone(),
            config: load_config(&cli)?,
            policy: policy.clone(),
            episodes: *episodes,
            greedy: *greedy,
            record: record.clone(),
            record_episodes: *record_episodes,
            json: json.clone(),
        };
        // Candle's compute is synchronous: keep it off the async workers.
        let report = tokio::task::spawn_blocking(move || eval::eval(&options)).await??;
        print!("{report}");
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Export { run, format, output } = &cli.command {
        print!("{}", export::export(run, *format, output)?.usage());
        return Ok(ExitCode::SUCCESS);
    }
    let config = load_config(&cli)?;
    if let Command::Health { address, service } = &cli.command {
        // The config only for TLS: a server with TLS on answers health over TLS too.
        let tls = &config.tls.loaded;
        return match address {
            Some(address) => health::check(address, service, tls).await,
            None => health::check_local(cli.metrics_listen, service, tls).await,
        };
    }
    let (metrics_listen, exit_with_stdin) = (cli.metrics_listen, cli.exit_with_stdin);
    let verbosity = Verbosity::from_flags(cli.quiet, cli.verbose);
    match cli.command {
        Command::Bench {
            target:
                BenchTarget::Replay {
                    inserters,
                    samplers,
                    batch_size,
                    seconds,
                    workloads,
                    inserts_in_flight,
                    batches_in_flight,
                    closed_loop,
                    prefill,
                },
        } => {
            let pacing = if closed_loop {
                bench::replay::Pacing::ClosedLoop
            } else {
                bench::replay::Pacing::Pipelined {
                    inserts_in_flight,
                    batches_in_flight,
                }
            };
            let load = bench::replay::Load {
                inserters,
                samplers,
                batch_size,
                seconds,
                pacing,
                prefill,
                auth: config.auth,
                tls: config.tls,
                durability: config.replay.durability,
            };
            bench::replay::replay(load, &workloads).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            target: BenchTarget::Compression { reps },
        } => {
            bench::compression::compression(reps.max(1))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            target: BenchTarget::Learner { seconds, workloads, json },
        } => {
            // Candle's compute is synchronous: keep it off the async workers.
            tokio::task::spawn_blocking(move || bench::learner::learner(seconds, &workloads, json)).await??;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            target: BenchTarget::Env { seconds, json },
        } => {
            let runtime = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || bench::env::env(&config, runtime, seconds, json)).await??;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            target:
                BenchTarget::E2e {
                    seconds,
                    warmup,
                    actors,
                    cores,
                    time_to_target,
                    json,
                },
        } => {
            let options = bench::e2e::Options {
                seconds,
                warmup,
                actors,
                cores,
                json,
                time_to_target,
            };
            bench::e2e::e2e(&config, &options).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config => {
            print!("{}", config.to_toml()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { name, run_dir, resume, .. } => {
            let (target, hold_min_return) = (config.run.target_return, config.run.hold_min_return);
            let started = std::time::Instant::now();
            let (folder, resuming) = match resume {
                Some(path) => (RunFolder::open(&path)?, true),
                None => (RunFolder::create(&run_dir, name.as_deref(), std::time::SystemTime::now())?, false),
            };
            let outcome = launcher::run(config, folder, resuming, verbosity).await?;
            Ok(report(outcome, target, hold_min_return, started))
        }
        Command::Record {
            metrics, name, run_dir, ..
        } => {
            let (target, hold_min_return) = (config.run.target_return, config.run.hold_min_return);
            let started = std::time::Instant::now();
            launcher::check_metrics(&metrics).await?;
            let folder = RunFolder::create(&run_dir, name.as_deref(), std::time::SystemTime::now())?;
            let outcome = launcher::record(config, folder, metrics, verbosity).await?;
            Ok(report(outcome, target, hold_min_return, started))
        }
        Command::Health { .. } | Command::Plot { .. } | Command::Eval { .. } | Command::Export { .. } => unreachable!("handled above"),
        Command::Replay { listen, restore } => {
            let grpc = cli::bind(listen, "replay gRPC").await?;
            let shutdown = cli::shutdown_signal(exit_with_stdin)?;
            let metrics = cli::bind(metrics_listen, "metrics").await?;
            // Ready only once the tables are restored: a failed restore
            // must not be announced first.
            let ready = cli::ready_announcer("replay", Some(&grpc), &metrics)?;
            fleet::replay::run_announcing(config, restore, grpc, metrics, shutdown, ready).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Learner { listen, replay } => {
            let grpc = cli::bind(listen, "learner gRPC").await?;
            let shutdown = cli::shutdown_signal(exit_with_stdin)?;
            let metrics = cli::bind(metrics_listen, "metrics").await?;
            // Ready only once its checkpoint directory is known writable.
            let ready = cli::ready_announcer("learner", Some(&grpc), &metrics)?;
            fleet::learner::run_announcing(config, replay, grpc, metrics, shutdown, ready).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Actor { actor_id, replay, learner } => {
            let id = actor_id.unwrap_or_else(default_actor_id);
            let shutdown = cli::shutdown_signal(exit_with_stdin)?;
            let metrics = cli::bind(metrics_listen, "metrics").await?;
            cli::announce_ready("actor", None, &metrics)?;
            let peers = fleet::actor::Peers { replay, learner };
            fleet::actor::run(config, id, peers, metrics, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Says how a run (or a recording) ended; its exit code.
fn report(outcome: Outcome, target: f64, hold_min_return: f64, started: std::time::Instant) -> ExitCode {
    match outcome {
        Outcome::TargetReached {
            step_return,
            env_steps,
            lowest,
            ..
        } => {
            let held = lowest.map_or(String::new(), |lowest| format!(", held (lowest {lowest:.1})"));
            println!(
                "target reached: return {step_return:.1} ≥ {target} (step-weighted) after {env_steps} env steps in {:.0} s{held}",
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Outcome::Collapsed {
            reached_at,
            step_return,
            env_steps,
        } => {
            eprintln!(
                "error: the return fell to {step_return:.1} < {hold_min_return} after {env_steps} env steps, having reached {target} at {reached_at}"
            );
            ExitCode::from(1)
        }
        Outcome::BudgetExhausted { step_return, env_steps } => {
            eprintln!(
                "error: env step budget exhausted: {env_steps} steps without reaching return {target} (last: {})",
                step_return.map_or("n/a".into(), |r| format!("{r:.1}"))
            );
            ExitCode::from(1)
        }
        Outcome::Interrupted => ExitCode::from(130),
    }
}

/// The async runtime's worker threads: `FLEET_WORKER_THREADS` where set, else
/// tokio's default of one per core. Replay decodes, validates and compresses
/// on these threads, so a fixed count would cap it on a larger machine; the
/// actor's and learner's compute runs on blocking threads of its own. The
/// variable reaches `fleet run`'s children through their environment.
fn async_worker_threads() -> Result<Option<usize>> {
    let Some(value) = std::env::var_os("FLEET_WORKER_THREADS") else {
        return Ok(None);
    };
    let text = value.to_string_lossy();
    match text.trim().parse::<usize>() {
        Ok(threads) if threads > 0 => Ok(Some(threads)),
        _ => anyhow::bail!("FLEET_WORKER_THREADS={text:?}: expected a whole number of threads, at least 1"),
    }
}

/// Gives this process, and so its children, `RAYON_NUM_THREADS` where the
/// environment holds no count (`process::rayon_threads_to_set`): every role
/// then reads candle's matrix-product thread count from it, whether `fleet
/// run` started the role or an image or a pod did.
#[allow(unsafe_code)]
fn set_matrix_threads() {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    if let Some(threads) = process::rayon_threads_to_set(std::env::var_os(process::RAYON_THREADS).as_deref(), cores) {
        // SAFETY: called first in `main`, before any thread is started, so
        // no other thread reads or writes the environment meanwhile.
        unsafe { std::env::set_var(process::RAYON_THREADS, threads) };
    }
}

/// mimalloc's option that delays returning freed pages to the OS, in ms
/// (`mi_option_purge_delay` in mimalloc.h's `mi_option_e`; the sys crate
/// names no constant for it). The test below pins the index to its default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The environment variable through which mimalloc reads that option.
const PURGE_DELAY_VARIABLE: &str = "MIMALLOC_PURGE_DELAY";

/// Keeps the pages of freed blocks committed, where the environment does
/// not set the purge delay: for the learner, whose updates free and
/// allocate the same large buffers over and over. mimalloc returns a freed
/// block's pages to the OS once they have gone unused for a second, and the
/// next allocation of that size faults them in again, each page zeroed by
/// the kernel. A deep ResNet update frees and reallocates gigabytes every
/// 3-4 s: that zeroing took a fifth of its time, and the update ran 38%
/// faster without it. The learner's resident memory then stays at its peak,
/// which it reaches again on every update anyway. The other roles keep the
/// default: replay's peak (a burst of inserts) is not its steady state.
#[allow(unsafe_code)]
fn keep_freed_pages() {
    if std::env::var_os(PURGE_DELAY_VARIABLE).is_none() {
        // SAFETY: stores a number in mimalloc's option table; called from
        // `main` before the async runtime or any other thread starts.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

/// Whether `command` runs learner updates: the learner role, or its bench.
fn runs_learner_updates(command: &Command) -> bool {
    matches!(
        command,
        Command::Learner { .. }
            | Command::Bench {
                target: BenchTarget::Learner { .. }
            }
    )
}

fn main() -> ExitCode {
    set_matrix_threads();
    let cli = Cli::parse();
    if runs_learner_updates(&cli.command) {
        keep_freed_pages();
    }
    cli::init_logging(Verbosity::from_flags(cli.quiet, cli.verbose).log_filter());
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    match async_worker_threads() {
        Ok(Some(threads)) => {
            builder.worker_threads(threads);
        }
        Ok(None) => {}
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(2);
        }
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(run(cli));
    // Every role has finished its graceful work inside `run`. What may be left
    // is the blocking stdin read of --exit-with-stdin, which returns only when
    // the launcher goes; waiting for it would keep a failed child alive.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outside containers (no FLEET_METRICS_LISTEN), metrics and an actor's
    /// health listen on loopback only.
    #[test]
    fn metrics_bind_to_loopback_unless_asked() {
        if std::env::var_os("FLEET_METRICS_LISTEN").is_some() {
            println!("skipped: FLEET_METRICS_LISTEN is set, so the default is not in play");
            return;
        }
        let cli = Cli::try_parse_from(["fleet", "actor"]).unwrap();
        assert!(cli.metrics_listen.ip().is_loopback(), "{}", cli.metrics_listen);
        let cli = Cli::try_parse_from(["fleet", "--metrics-listen", "0.0.0.0:9100", "actor"]).unwrap();
        assert_eq!(cli.metrics_listen.to_string(), "0.0.0.0:9100");
    }

    /// Only the learner and its bench keep freed pages; replay's memory
    /// goes back to the OS after a burst.
    #[test]
    fn only_learner_updates_keep_freed_pages() {
        for (args, keeps) in [
            (&["fleet", "learner"][..], true),
            (&["fleet", "bench", "learner", "--workload", "mlp"][..], true),
            (&["fleet", "replay"][..], false),
            (&["fleet", "actor"][..], false),
            (&["fleet", "bench", "replay"][..], false),
            (&["fleet", "run"][..], false),
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            assert_eq!(runs_learner_updates(&cli.command), keeps, "{args:?}");
        }
    }

    /// The option index names the purge delay: it holds what the variable
    /// says, or mimalloc's default of 1000 ms, which no neighbouring option
    /// has. Nothing in the tests calls `keep_freed_pages`.
    #[test]
    #[allow(unsafe_code)]
    fn the_purge_delay_index_is_the_option_mimalloc_reads_from_its_variable() {
        // SAFETY: reads one number from mimalloc's option table.
        let delay = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        let expected = std::env::var(PURGE_DELAY_VARIABLE).map_or(1000, |text| text.trim().parse().unwrap());
        assert_eq!(delay, expected);
    }
}
