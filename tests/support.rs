//! What the tests add to the library's process and scrape helpers: the path
//! of the `fleet` binary under test, and starting a role of it with a
//! loopback metrics port and quiet logs.

use tokio::process::Command;

pub use fleet::process::Process;
pub use fleet::scrape::{metric, scrape, series};

pub const FLEET: &str = env!("CARGO_BIN_EXE_fleet");

/// Starts `fleet <args…>` with a loopback metrics listener and waits for its
/// ready line; the process is killed when the returned guard drops.
pub async fn start(args: &[&str]) -> Process {
    let mut command = Command::new(FLEET);
    command.args(args).args(["--metrics-listen", "127.0.0.1:0"]).env("RUST_LOG", "warn");
    let name = args.first().copied().unwrap_or("fleet");
    Process::spawn(name, command).await.expect("fleet role ready")
}

/// A gRPC codec that writes each message's bytes as they are and reads
/// responses as bytes: for sending what no generated client would.
#[derive(Clone, Copy)]
pub struct Raw;

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        prost::bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}
impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut bytes = vec![0; prost::bytes::Buf::remaining(src)];
        prost::bytes::Buf::copy_to_slice(src, &mut bytes);
        Ok(Some(bytes))
    }
}
impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

/// Runs `fleet run` with `args` (plus progress lines every second and warn
/// logs) to its end, within 7 minutes, and returns whether it reached its
/// target and its output. Every line is shown to `check` (with the output
/// before it) as it arrives, so a test can fail at the first bad line of a
/// run that would otherwise stall.
pub async fn run_checking_lines(args: &[String], check: impl Fn(&str, &str)) -> (bool, String) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = Command::new(FLEET)
        .arg("run")
        .args(args)
        .args(["--set", "run.progress_interval_secs=1"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut output = String::new();
    let status = tokio::time::timeout(std::time::Duration::from_secs(420), async {
        let (mut stdout_open, mut stderr_open) = (true, true);
        while stdout_open || stderr_open {
            let line = tokio::select! {
                line = stdout.next_line(), if stdout_open => line.unwrap().or_else(|| { stdout_open = false; None }),
                line = stderr.next_line(), if stderr_open => line.unwrap().or_else(|| { stderr_open = false; None }),
            };
            if let Some(line) = line {
                check(&line, &output);
                output.push_str(&line);
                output.push('\n');
            }
        }
        child.wait().await.unwrap()
    })
    .await
    .unwrap_or_else(|_| panic!("fleet run finished within 7 minutes:\n{output}"));
    (status.success() && output.contains("target reached"), output)
}

/// What the `fleet` binary printed given `args`, for a command that exits
/// at once (within a minute).
pub async fn fleet_output<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> std::process::Output {
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        Command::new(FLEET).args(args).kill_on_drop(true).output(),
    )
    .await
    .expect("exits at once")
    .unwrap()
}

/// A valid CartPole sequence (observations [T, 4] f32, two actions).
pub fn sequence(steps: usize, seed: f32) -> fleet_proto::pb::Sequence {
    use fleet_proto::pb;
    let obs: Vec<f32> = (0..steps * 4).map(|i| seed + i as f32 * 0.01).collect();
    pb::Sequence {
        observations: Some(pb::Tensor::from_f32(&[steps, 4], &obs)),
        actions: Some(pb::Tensor::from_i64(&[steps], &vec![1; steps])),
        rewards: vec![1.0; steps],
        is_first: (0..steps).map(|t| t == 0).collect(),
        terminated: vec![false; steps],
        truncated: vec![false; steps],
        behaviour_logits: Some(pb::Tensor::from_f32(&[steps, 2], &vec![0.0; steps * 2])),
        behaviour_versions: vec![1; steps],
        initial_state: None,
        actor_id: seed as u64,
        priority: 0.0,
        run_id: 0,
    }
}

/// Checks a role's `/metrics` text as Prometheus would take it: every
/// `fleet_*` metric has help text, `_total` names are counters and only
/// counters, and `promtool check metrics` accepts the whole scrape (when
/// promtool is installed; `FLEET_REQUIRE_PROMETHEUS=1` demands it).
pub async fn check_metrics_text(role: &str, body: &str) {
    let mut types = std::collections::HashMap::new();
    let mut helped = std::collections::HashSet::new();
    for line in body.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some("#"), Some("TYPE"), Some(name), Some(kind)) => {
                types.insert(name.to_owned(), kind.to_owned());
            }
            (Some("#"), Some("HELP"), Some(name), Some(_)) => {
                helped.insert(name.to_owned());
            }
            _ => {}
        }
    }
    assert!(types.keys().any(|n| n.starts_with("fleet_")), "{role}: no fleet metric in\n{body}");
    for (name, kind) in types.iter().filter(|(n, _)| n.starts_with("fleet_")) {
        assert!(helped.contains(name), "{role}: {name} has no help text:\n{body}");
        assert_eq!(name.ends_with("_total"), kind == "counter", "{role}: {name} is a {kind}");
    }

    let promtool = std::process::Command::new("promtool").arg("--version").output();
    if !promtool.is_ok_and(|o| o.status.success()) {
        let reason = "promtool is not installed (Debian package `prometheus`)";
        if std::env::var("FLEET_REQUIRE_PROMETHEUS").is_ok_and(|v| v == "1") {
            panic!("{reason}, and FLEET_REQUIRE_PROMETHEUS=1 requires this check to run");
        }
        eprintln!("skipped promtool check metrics of {role}: {reason} (set FLEET_REQUIRE_PROMETHEUS=1 to make this a failure)");
        return;
    }
    let mut check = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = check.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, body.as_bytes()).await.unwrap();
    drop(stdin);
    let output = check.wait_with_output().await.unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics of {role}: {}\n{}{}\n{body}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `FLEET_PYTHON` (default `python3`) if it can import `modules`; `None`
/// with a printed skip if not, or a failure when `FLEET_REQUIRE_PYTHON=1`
/// (CI). `install` says how to get the modules.
pub fn python_with(modules: &str, install: &str) -> Option<String> {
    python_from("FLEET_PYTHON", "FLEET_REQUIRE_PYTHON", modules, install)
}

/// The Python named by the environment variable `python_var` (default
/// `python3`) if it can import `modules`; `None` with a printed skip if
/// not, or a failure when `require_var` is `1`.
pub fn python_from(python_var: &str, require_var: &str, modules: &str, install: &str) -> Option<String> {
    let python = std::env::var(python_var).unwrap_or_else(|_| "python3".into());
    let probe = std::process::Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .output();
    if probe.as_ref().is_ok_and(|o| o.status.success()) {
        return Some(python);
    }
    let reason = format!("{python} cannot import {modules} ({install})");
    if std::env::var(require_var).is_ok_and(|v| v == "1") {
        panic!("{reason}, and {require_var}=1 requires this test to run");
    }
    eprintln!("skipped: {reason} (set {python_var} to one that can, or {require_var}=1 to make this a failure)");
    None
}
