//! The deployment files in `deploy/`: Prometheus' config and alert rules
//! pass promtool, and the compose cluster comes up with scaled actors that
//! Prometheus discovers on its own, with every Grafana panel's query
//! answering, every container healthy, more actors on `--scale`, and a
//! restarted learner resuming from its checkpoint and a restarted replay
//! restoring its tables; and with the env bridge's image, an actor stepping
//! Atari Pong in its container trains the learner, with settings that are
//! `config/atari.toml`'s.
//!
//! The promtool and cluster tests need promtool and Docker; without them
//! they say why and pass, unless `FLEET_REQUIRE_PROMETHEUS=1` /
//! `FLEET_REQUIRE_DOCKER=1` (CI) demand them.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::FLEET;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const COMPOSE_FILE: &str = "deploy/docker-compose.yml";
/// Layered over it: actors stepping Atari Pong through the env bridge.
const ENVBRIDGE_COMPOSE_FILE: &str = "deploy/docker-compose.envbridge.yml";
const DASHBOARD: &str = "deploy/grafana/dashboards/fleet.json";
/// Built by `scripts/ci-images.sh`.
const FLEET_IMAGE: &str = "fleet:ci";
const ENVBRIDGE_IMAGE: &str = "fleet-envbridge:ci";
const PROMETHEUS_IMAGE: &str = "fleet-prometheus:ci";
const ACTORS: usize = 3;
/// What the dashboard's `$__rate_interval` stands for here: a few 5 s scrapes.
const RATE_INTERVAL: &str = "1m";

/// Keeps the test cluster from starving the tests that run beside it.
const TEST_OVERRIDE: &str = r#"
services:
  replay:
    cpus: 0.25
  learner:
    cpus: 0.5
  actor:
    cpus: 0.2
    environment:
      FLEET_ACTOR__NUM_ENVS: "4"
"#;

/// The same for the bridged Atari cluster: one actor of 4 Pong
/// environments on one bridge server, and small batches for the learner.
const ENVBRIDGE_TEST_OVERRIDE: &str = r#"
services:
  replay:
    cpus: 0.25
  learner:
    cpus: 0.5
    environment:
      FLEET_LEARNER__BATCH_SIZE: "4"
  actor:
    cpus: 1.0
    environment:
      FLEET_ACTOR__NUM_ENVS: "4"
      FLEET_ENV__BRIDGE_STREAMS: "1"
"#;

/// Returns normally after printing why the test cannot run here, or panics
/// when `require_var=1` says it must.
fn skip(require_var: &str, reason: &str) {
    if std::env::var(require_var).is_ok_and(|v| v == "1") {
        panic!("{reason}, and {require_var}=1 requires this test to run");
    }
    eprintln!("skipped: {reason} (set {require_var}=1 to make this a failure)");
}

fn describe(output: &Output) -> String {
    format!(
        "{}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program).args(args).output().is_ok_and(|o| o.status.success())
}

#[test]
fn prometheus_config_and_rules_pass_promtool() {
    if !succeeds("promtool", &["--version"]) {
        return skip(
            "FLEET_REQUIRE_PROMETHEUS",
            "promtool is not installed (Debian package `prometheus`)",
        );
    }
    for args in [
        ["check", "config", "deploy/prometheus/prometheus.yml"],
        ["check", "rules", "deploy/prometheus/alerts.yml"],
        ["test", "rules", "deploy/prometheus/alerts_test.yml"],
    ] {
        let output = Command::new("promtool").args(args).current_dir(ROOT).output().unwrap();
        assert!(output.status.success(), "promtool {}: {}", args.join(" "), describe(&output));
    }
}

/// A compose project, taken down with its volumes when dropped.
struct Cluster {
    /// `docker compose` or, where only v1 is installed, `docker-compose`.
    compose: Vec<&'static str>,
    /// Compose files in layering order, before the test's override.
    files: Vec<&'static str>,
    project: String,
    override_file: tempfile::NamedTempFile,
    /// Every compose command run and its output, for failure messages.
    transcript: String,
    /// Unix seconds at which the last `restart` began.
    restarted_at: f64,
}

impl Cluster {
    fn new(compose: Vec<&'static str>, files: Vec<&'static str>, test_override: &str) -> Cluster {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let override_file = tempfile::Builder::new().suffix(".yml").tempfile().unwrap();
        std::fs::write(override_file.path(), test_override).unwrap();
        Cluster {
            compose,
            files,
            project: format!("fleettest{}x{nanos}", std::process::id()),
            override_file,
            transcript: String::new(),
            restarted_at: 0.0,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(self.compose[0]);
        command.args(&self.compose[1..]).args(["-p", &self.project]);
        for file in &self.files {
            command.args(["-f", file]);
        }
        command
            .arg("-f")
            .arg(self.override_file.path())
            .args(args)
            .current_dir(ROOT)
            .env("FLEET_IMAGE", FLEET_IMAGE)
            .env("FLEET_ENVBRIDGE_IMAGE", ENVBRIDGE_IMAGE)
            .env("PROMETHEUS_IMAGE", PROMETHEUS_IMAGE)
            // Empty: Docker picks free host ports, so runs never collide.
            .env("PROMETHEUS_PORT", "")
            .env("GRAFANA_PORT", "");
        command
    }

    fn run(&mut self, args: &[&str]) -> Output {
        let output = self.command(args).output().expect("run docker compose");
        let _ = writeln!(self.transcript, "$ compose {}\n{}", args.join(" "), describe(&output));
        output
    }

    /// Starts replay, the learner, `actors` actors and Prometheus; returns
    /// Prometheus' address on the host.
    fn up(&mut self, actors: usize) -> String {
        let scale = format!("actor={actors}");
        let up = self.run(&["up", "-d", "--scale", &scale, "replay", "learner", "actor", "prometheus"]);
        assert!(up.status.success(), "compose up failed:\n{}", self.report());
        let port = self.run(&["port", "prometheus", "9090"]);
        let published = String::from_utf8_lossy(&port.stdout).trim().to_string();
        match published.rsplit_once(':') {
            Some((_, port)) if port.parse::<u16>().is_ok() => format!("127.0.0.1:{port}"),
            _ => panic!("no published Prometheus port:\n{}", self.report()),
        }
    }

    /// `name: status` of each container of `services` whose health check
    /// does not (yet) report healthy.
    fn unhealthy(&mut self, services: &[&str]) -> Vec<String> {
        let mut args = vec!["ps", "-q"];
        args.extend_from_slice(services);
        let ids = self.run(&args);
        let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout).split_whitespace().map(str::to_owned).collect();
        if ids.is_empty() {
            return vec!["no containers".into()];
        }
        let output = Command::new("docker")
            .args([
                "inspect",
                "--format",
                "{{.Name}}: {{if .State.Health}}{{.State.Health.Status}}{{else}}no health check{{end}}",
            ])
            .args(&ids)
            .output()
            .expect("run docker inspect");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| !line.ends_with(": healthy"))
            .map(str::to_owned)
            .collect()
    }

    /// Waits until replay, the learner and every actor report healthy;
    /// panics naming those that do not within `within`.
    async fn assert_healthy_within(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        let unhealthy = loop {
            let unhealthy = self.unhealthy(&["replay", "learner", "actor"]);
            if unhealthy.is_empty() || Instant::now() >= deadline {
                break unhealthy;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        };
        assert!(
            unhealthy.is_empty(),
            "not healthy within {within:?}: {unhealthy:?}\n{}",
            self.report()
        );
    }

    /// The compose transcript plus the state and recent logs of every container.
    fn report(&mut self) -> String {
        self.run(&["ps"]);
        self.run(&["logs", "--no-color", "--tail", "30"]);
        self.transcript.clone()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // No panics here: this may run while a failed test unwinds.
        match self.command(&["down", "--volumes", "--remove-orphans", "--timeout", "5"]).output() {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!("taking compose project {} down failed: {}", self.project, describe(&output)),
            Err(error) => eprintln!("taking compose project {} down failed: {error}", self.project),
        }
    }
}

/// `docker compose` (or `docker-compose`), or `None` after saying why the
/// compose tests cannot run here (a failure where `FLEET_REQUIRE_DOCKER=1`).
fn docker_compose_or_skip() -> Option<Vec<&'static str>> {
    const REQUIRE: &str = "FLEET_REQUIRE_DOCKER";
    if !succeeds("docker", &["info"]) {
        skip(REQUIRE, "`docker info` fails: no usable Docker engine");
        return None;
    }
    let Some(compose) = compose_command() else {
        skip(REQUIRE, "neither `docker compose` nor `docker-compose` is installed");
        return None;
    };
    if !succeeds("docker", &["image", "inspect", "debian:bookworm-slim"]) && !succeeds("mmdebstrap", &["--version"]) {
        skip(
            REQUIRE,
            "no debian:bookworm-slim image, and no mmdebstrap to build one (Debian package `mmdebstrap`)",
        );
        return None;
    }
    Some(compose)
}

/// The CI images around this build's `fleet` (scripts/ci-images.sh).
fn build_images() {
    let images = Command::new(Path::new(ROOT).join("scripts/ci-images.sh"))
        .arg(FLEET)
        .current_dir(ROOT)
        .output()
        .expect("run scripts/ci-images.sh");
    assert!(images.status.success(), "scripts/ci-images.sh: {}", describe(&images));
}

fn compose_command() -> Option<Vec<&'static str>> {
    if succeeds("docker", &["compose", "version"]) {
        Some(vec!["docker", "compose"])
    } else if succeeds("docker-compose", &["version"]) {
        Some(vec!["docker-compose"])
    } else {
        None
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Evaluates an instant query; returns the value of each series in the
/// result (NaN where Prometheus says NaN or ±Inf).
async fn query(prometheus: &str, promql: &str) -> Result<Vec<f64>, String> {
    tokio::time::timeout(Duration::from_secs(10), query_once(prometheus, promql))
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
}

async fn query_once(prometheus: &str, promql: &str) -> Result<Vec<f64>, String> {
    let mut stream = TcpStream::connect(prometheus).await.map_err(|e| e.to_string())?;
    let request = format!(
        "GET /api/v1/query?query={} HTTP/1.0\r\nHost: prometheus\r\n\r\n",
        percent_encode(promql)
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.map_err(|e| e.to_string())?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    if !compact.contains(r#""status":"success""#) || !compact.contains(r#""resultType":"vector""#) {
        return Err(format!("unexpected answer: {body}"));
    }
    // Each series is {"metric":{…},"value":[<time>,"<value>"]}.
    Ok(compact
        .split(r#""value":["#)
        .skip(1)
        .map(|rest| {
            let value = rest.split_once(",\"").map_or("", |(_, v)| v.split('"').next().unwrap_or(""));
            value.parse().unwrap_or(f64::NAN)
        })
        .collect())
}

/// Reads the JSON string literal at the start of `text` (after optional
/// whitespace), undoing escapes.
fn json_string(text: &str) -> Option<String> {
    let mut chars = text.trim_start().strip_prefix('"')?.chars();
    let mut out = String::new();
    loop {
        match chars.next()? {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
}

/// Every `targets[].expr` in the dashboard, in panel order.
fn dashboard_expressions() -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(ROOT).join(DASHBOARD)).unwrap();
    text.split(r#""expr""#)
        .skip(1)
        .map(|rest| {
            let value = rest.trim_start().strip_prefix(':').expect("`\"expr\":` in the dashboard");
            json_string(value).expect("a string after `\"expr\":`")
        })
        .collect()
}

#[test]
fn every_dashboard_panel_has_a_query_on_the_provisioned_datasource() {
    let text = std::fs::read_to_string(Path::new(ROOT).join(DASHBOARD)).unwrap();
    let datasource = std::fs::read_to_string(Path::new(ROOT).join("deploy/grafana/provisioning/datasources/prometheus.yml")).unwrap();
    assert!(
        datasource.contains("uid: prometheus"),
        "the datasource's uid is the one the dashboard names"
    );
    let panels = text.matches(r#""type": "timeseries""#).count();
    let expressions = dashboard_expressions();
    assert!(
        panels >= 10 && expressions.len() >= panels,
        "{panels} panels, {} queries",
        expressions.len()
    );
    for expr in &expressions {
        // fleet's own metrics, or the standard process metrics of its processes.
        assert!(
            expr.contains("fleet_") || expr.contains(r#"{job="fleet"}"#),
            "query `{expr}` reads no fleet metric"
        );
    }
    // Every panel and every target names the provisioned datasource.
    let references = text.matches(r#""uid": "prometheus""#).count();
    assert_eq!(references, panels + expressions.len(), "datasource references");
}

/// The compose cluster's Atari actors train config/atari.toml's run: the
/// two effective configs differ only in what the cluster adds, the
/// environment's spec (here Pong's) and the learner's device.
#[test]
fn the_compose_atari_config_is_the_atari_config_with_the_spec_given() {
    let load = |file: &str| {
        fleet::config::Config::load(&fleet::config::ConfigSources {
            file: Some(Path::new(ROOT).join(file)),
            env: Vec::new(),
            overrides: Vec::new(),
        })
        .unwrap_or_else(|e| panic!("{file}: {e:#}"))
    };
    let atari = load("config/atari.toml");
    let mut compose = load("deploy/fleet-atari.toml");
    let spec = compose.env.spec.take().expect("deploy/fleet-atari.toml gives env.spec");
    atari.check_network_fits(&spec).expect("the spec fits the network");
    assert_eq!(spec.action, fleet_agent::ActionSpec::Discrete { num_actions: 6 }, "Pong's actions");
    assert_eq!(compose.learner.device, "cpu", "the image has no CUDA");
    compose.learner.device.clone_from(&atari.learner.device);
    assert_eq!(
        compose.to_toml().unwrap(),
        atari.to_toml().unwrap(),
        "deploy/fleet-atari.toml has drifted from config/atari.toml"
    );
}

#[tokio::test]
async fn compose_cluster_scales_actors_and_prometheus_sees_them() {
    let Some(compose) = docker_compose_or_skip() else { return };
    let started = Instant::now();
    build_images();
    let images_built = started.elapsed();

    let mut cluster = Cluster::new(compose, vec![COMPOSE_FILE], TEST_OVERRIDE);
    let prometheus = cluster.up(ACTORS);

    let mut unmet = vec![
        "increase(fleet_learner_updates_total[1m]) > 0".to_string(),
        "fleet_learner_weights_version > 1".to_string(),
        format!(r#"count(up{{role="actor"}} == 1) == {ACTORS}"#),
        format!("count(fleet_actor_policy_lag_versions_count > 0) == {ACTORS}"),
    ];
    unmet = wait_for_all(&prometheus, unmet, Duration::from_secs(180)).await;
    assert!(
        unmet.is_empty(),
        "within 180 s Prometheus never saw: {unmet:?}\n{}",
        cluster.report()
    );
    let cluster_ready = started.elapsed();

    // Rates need a window of samples; allow the panels a little longer.
    let expressions = dashboard_expressions();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut empty: Vec<(String, String)> = Vec::new();
    loop {
        empty.clear();
        for expr in &expressions {
            let promql = expr.replace("$__rate_interval", RATE_INTERVAL);
            match query(&prometheus, &promql).await {
                Ok(values) if !values.is_empty() => {}
                Ok(_) => empty.push((expr.clone(), "empty result".into())),
                Err(error) => empty.push((expr.clone(), error)),
            }
        }
        if empty.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    assert!(empty.is_empty(), "dashboard queries without data: {empty:#?}\n{}", cluster.report());
    let panels_answered = started.elapsed();

    // The image's HEALTHCHECK (`fleet health`) passes for every role.
    cluster.assert_healthy_within(Duration::from_secs(60)).await;

    // Scaling up adds actors that Prometheus finds with no other change.
    const SCALED: usize = ACTORS + 2;
    let scale = format!("actor={SCALED}");
    let up = cluster.run(&["up", "-d", "--no-recreate", "--scale", &scale, "actor"]);
    assert!(up.status.success(), "compose up --scale failed:\n{}", cluster.report());
    let condition = format!(r#"count(up{{role="actor"}} == 1) == {SCALED}"#);
    let found = wait_for(&prometheus, &condition, Duration::from_secs(90)).await;
    assert!(found.is_some(), "Prometheus never saw {SCALED} actors up:\n{}", cluster.report());

    // A restarted learner resumes from its checkpoint: the new process's
    // first scraped version is at least the old one's last, and rises.
    let versions = "max(fleet_learner_weights_version{role=\"learner\"})";
    let (before, first) = restart_and_compare(&mut cluster, &prometheus, "learner", versions, "resumed from checkpoint").await;
    let rising = format!("{} > {first}", from_new_process(versions, "learner", first_scrape_after(&cluster)));
    assert!(
        wait_for(&prometheus, &rising, Duration::from_secs(90)).await.is_some(),
        "the restarted learner's version never rose past {first}:\n{}",
        cluster.report()
    );

    // A restarted replay restores its tables: its insert count goes on from
    // the checkpoint it wrote at shutdown, and training continues.
    let inserts = "sum(fleet_replay_inserts_total{role=\"replay\"})";
    let (inserts_before, restored) = restart_and_compare(
        &mut cluster,
        &prometheus,
        "replay",
        inserts,
        "replay tables restored from checkpoint",
    )
    .await;
    let updates_after = r#"increase(fleet_learner_updates_total[30s]) > 0
        and on() (time() - max(process_start_time_seconds{role="replay"}) > 20)"#;
    assert!(
        wait_for(&prometheus, updates_after, Duration::from_secs(120)).await.is_some(),
        "the learner stopped learning after replay restarted:\n{}",
        cluster.report()
    );
    eprintln!(
        "compose test: images {:.0?}, cluster training and scraped {:.0?}, all {} panel queries answered {:.0?}, \
         scaled to {SCALED} actors, resumed the learner at version {first} (was {before}) and replay at {restored} inserts \
         (was {inserts_before}) {:.0?} (after start)",
        images_built,
        cluster_ready,
        expressions.len(),
        panels_answered,
        started.elapsed()
    );
}

#[tokio::test]
async fn compose_cluster_trains_with_actors_stepping_atari_through_the_env_bridge() {
    let Some(compose) = docker_compose_or_skip() else { return };
    let started = Instant::now();
    build_images();

    let mut cluster = Cluster::new(compose, vec![COMPOSE_FILE, ENVBRIDGE_COMPOSE_FILE], ENVBRIDGE_TEST_OVERRIDE);
    let prometheus = cluster.up(1);
    // Pong frames reach replay and the learner learns from them: the
    // learner's spec comes from fleet-atari.toml, the actor's from the
    // bridge it started inside its container, and a mismatch would stop it.
    let unmet = vec![
        r#"sum(fleet_actor_env_steps_total{role="actor"}) > 200"#.to_string(),
        r#"sum(fleet_actor_sequences_acked_total{role="actor"}) > 10"#.to_string(),
        "increase(fleet_learner_updates_total[1m]) > 0".to_string(),
        "fleet_learner_weights_version > 1".to_string(),
        r#"count(up{role="actor"} == 1) == 1"#.to_string(),
    ];
    let unmet = wait_for_all(&prometheus, unmet, Duration::from_secs(240)).await;
    assert!(
        unmet.is_empty(),
        "within 240 s Prometheus never saw: {unmet:?}\n{}",
        cluster.report()
    );
    let logs = cluster.run(&["logs", "--no-color", "actor"]);
    let logs = String::from_utf8_lossy(&logs.stdout).into_owned();
    assert!(
        logs.contains("env bridge opened") && logs.contains("ALE/Pong-v5"),
        "the actor's log does not show the bridge serving ALE/Pong-v5:\n{}",
        cluster.report()
    );
    cluster.assert_healthy_within(Duration::from_secs(60)).await;
    eprintln!(
        "envbridge compose test: Pong actor training and scraped {:.0?} after start",
        started.elapsed()
    );
}

/// `promql` restricted to the `role` process that started after `after`
/// (Unix seconds).
fn from_new_process(promql: &str, role: &str, after: f64) -> String {
    format!(r#"{promql} and on() (process_start_time_seconds{{role="{role}"}} > {after:.0})"#)
}

/// A start time only the restarted process can have: `process_start_time_seconds`
/// is whole seconds and may read a second early, and a replay restarts within
/// one, so the bound sits 10 s before the restart; the old process started
/// minutes before it.
fn first_scrape_after(cluster: &Cluster) -> f64 {
    cluster.restarted_at - 10.0
}

/// Restarts `service`, then returns `promql` just before the restart and its
/// first value scraped from the new process, asserting that it did not go
/// back and that the service's log contains `log_line`.
async fn restart_and_compare(cluster: &mut Cluster, prometheus: &str, service: &str, promql: &str, log_line: &str) -> (f64, f64) {
    let before = query(prometheus, promql).await.unwrap_or_default();
    let before = *before
        .first()
        .unwrap_or_else(|| panic!("no value of {promql}:\n{}", cluster.report()));
    cluster.restarted_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let restart = cluster.run(&["restart", service]);
    assert!(restart.status.success(), "compose restart {service} failed:\n{}", cluster.report());
    let new_process = from_new_process(promql, service, first_scrape_after(cluster));
    let Some(first) = wait_for(prometheus, &new_process, Duration::from_secs(90)).await else {
        panic!("the restarted {service} was never scraped:\n{}", cluster.report());
    };
    assert!(
        first >= before,
        "the restarted {service} started with {promql} = {first}, below {before} before the restart:\n{}",
        cluster.report()
    );
    let logs = cluster.run(&["logs", "--no-color", service]);
    assert!(
        String::from_utf8_lossy(&logs.stdout).contains(log_line),
        "{service}'s log does not say `{log_line}`:\n{}",
        cluster.report()
    );
    (before, first)
}

/// Polls each instant query until it returns a series; returns those that
/// never did within `within`.
async fn wait_for_all(prometheus: &str, mut unmet: Vec<String>, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    while !unmet.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for condition in unmet {
            if !query(prometheus, &condition).await.is_ok_and(|values| !values.is_empty()) {
                still.push(condition);
            }
        }
        unmet = still;
        if !unmet.is_empty() {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    unmet
}

/// Polls an instant query until it returns a series; returns the first
/// series' value, or `None` after `within`.
async fn wait_for(prometheus: &str, promql: &str, within: Duration) -> Option<f64> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(values) = query(prometheus, promql).await
            && let Some(value) = values.first()
        {
            return Some(*value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
