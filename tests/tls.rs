//! TLS on real `fleet` processes, with certificates made at test time (a
//! CA, a certificate for `localhost` and 127.0.0.1 that every fleet
//! process uses, a client-only certificate, and a second CA that issued
//! none of them): a replay with TLS answers clients that trust its CA, over
//! TLS, health included, and no others (plain text, another CA, another
//! name); with mutual TLS, replay and the learner also refuse clients
//! without a certificate from the client CA; a bad TLS file stops a role
//! before it starts, naming the key; and `fleet run` with mutual TLS trains,
//! so every connection between its children is made over TLS.

use std::path::PathBuf;
use std::time::Duration;

use fleet_proto::pb::{self, parameters_client::ParametersClient, replay_client::ReplayClient};
use futures::StreamExt;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tokio::process::Command;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::support::{FLEET, Process, fleet_output, run_checking_lines, start};

/// PEM files in a temporary directory.
pub(crate) struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// `ca.pem`; `cert.pem`/`key.pem` for localhost and 127.0.0.1, issued
    /// by it; `client.pem`/`client-key.pem`, a client certificate it
    /// issued; `other-ca.pem` and `other-client.pem`/`other-client-key.pem`,
    /// a CA the others do not know and a client certificate it issued.
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
        };
        let leaf = |names: &[&str], issuer: &CertifiedIssuer<'_, KeyPair>, cert: &str, key: &str| {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let key_pair = KeyPair::generate().unwrap();
            let issued = CertificateParams::new(names).unwrap().signed_by(&key_pair, issuer).unwrap();
            write(cert, issued.pem());
            write(key, key_pair.serialize_pem());
        };
        let fleet_ca = ca("fleet test CA");
        write("ca.pem", fleet_ca.pem());
        leaf(&["localhost", "127.0.0.1"], &fleet_ca, "cert.pem", "key.pem");
        leaf(&["fleet-test-client"], &fleet_ca, "client.pem", "client-key.pem");
        let other_ca = ca("another CA");
        write("other-ca.pem", other_ca.pem());
        leaf(&["fleet-test-client"], &other_ca, "other-client.pem", "other-client-key.pem");
        Self { dir }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }

    /// `--set` flags for `[tls]` with this process's certificate, the CA
    /// and, for mutual TLS, the client CA.
    fn flags(&self, mutual: bool) -> Vec<String> {
        let mut keys = vec![("cert_file", "cert.pem"), ("key_file", "key.pem"), ("ca_file", "ca.pem")];
        if mutual {
            keys.push(("client_ca_file", "ca.pem"));
        }
        keys.into_iter()
            .flat_map(|(key, file)| ["--set".to_string(), format!("tls.{key}={}", self.path(file).display())])
            .collect()
    }

    /// A client that trusts the CA in `ca` and presents the certificate
    /// `identity` (cert, key) if given.
    fn client(&self, ca: &str, identity: Option<(&str, &str)>) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self.read(ca)));
        if let Some((cert, key)) = identity {
            config = config.identity(Identity::from_pem(self.read(cert), self.read(key)));
        }
        config
    }
}

/// Starts `fleet <args…> <flags…>`.
async fn start_with(args: &[&str], flags: &[String]) -> Process {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(flags.iter().map(String::as_str));
    start(&all).await
}

/// A connection to `role` over TLS with `tls`, or over plain text without.
/// Any failure, with its causes, as text.
async fn channel(role: &Process, tls: Option<ClientTlsConfig>) -> Result<Channel, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", role.grpc))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).unwrap();
    }
    endpoint.connect().await.map_err(|e| fleet_proto::connect::chain(&e))
}

/// Replay's `Info` over a connection made with `tls`.
async fn info(replay: &Process, tls: Option<ClientTlsConfig>) -> Result<pb::InfoResponse, String> {
    let mut client = ReplayClient::new(channel(replay, tls).await?);
    client
        .info(pb::InfoRequest {})
        .await
        .map(|response| response.into_inner())
        .map_err(|status| format!("{status:?}"))
}

/// The health of `service` on `role` over a connection made with `tls`.
async fn health(role: &Process, service: &str, tls: Option<ClientTlsConfig>) -> Result<i32, String> {
    let mut client = HealthClient::new(channel(role, tls).await?);
    client
        .check(HealthCheckRequest { service: service.into() })
        .await
        .map(|response| response.into_inner().status)
        .map_err(|status| format!("{status:?}"))
}

#[tokio::test]
async fn a_replay_with_tls_answers_only_clients_that_trust_its_ca() {
    let pki = Pki::new();
    let replay = start_with(&["replay", "--listen", "127.0.0.1:0"], &pki.flags(false)).await;

    let tables = info(&replay, Some(pki.client("ca.pem", None)))
        .await
        .expect("a client trusting the CA");
    assert!(tables.tables.iter().any(|t| t.name == "queue"), "{tables:?}");
    let status = health(&replay, "fleet.v1.Replay", Some(pki.client("ca.pem", None))).await;
    assert_eq!(status, Ok(ServingStatus::Serving as i32), "health over TLS");
    let by_name = pki.client("ca.pem", None).domain_name("localhost");
    assert!(info(&replay, Some(by_name)).await.is_ok(), "the certificate names localhost too");

    let plain = info(&replay, None).await;
    assert!(plain.is_err(), "a plain-text client is refused: {plain:?}");
    let plain_health = health(&replay, "", None).await;
    assert!(plain_health.is_err(), "health is behind TLS too: {plain_health:?}");
    let other_ca = info(&replay, Some(pki.client("other-ca.pem", None))).await.unwrap_err();
    assert!(
        other_ca.contains("certificate"),
        "a client trusting another CA is refused: {other_ca}"
    );
    let other_name = info(&replay, Some(pki.client("ca.pem", None).domain_name("replay.example")))
        .await
        .unwrap_err();
    assert!(
        other_name.contains("certificate"),
        "a client expecting another name is refused: {other_name}"
    );

    // `fleet health` takes its TLS settings from the config, like every role.
    let healthy = Command::new(FLEET)
        .args(["health", "--address", &replay.grpc])
        .args(pki.flags(false))
        .output()
        .await
        .unwrap();
    assert!(healthy.status.success(), "{}", String::from_utf8_lossy(&healthy.stderr));
    let plain = Command::new(FLEET)
        .args(["health", "--address", &replay.grpc])
        .output()
        .await
        .unwrap();
    assert!(!plain.status.success(), "`fleet health` without TLS fails");
}

/// With `client_ca_file`, replay and the learner (which itself reaches
/// replay over mutual TLS) refuse clients without a certificate issued by
/// that CA and answer those with one.
#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_from_the_client_ca() {
    let pki = Pki::new();
    let flags = pki.flags(true);
    let replay = start_with(&["replay", "--listen", "127.0.0.1:0"], &flags).await;

    let anonymous = info(&replay, Some(pki.client("ca.pem", None))).await;
    assert!(anonymous.is_err(), "a client without a certificate is refused: {anonymous:?}");
    let anonymous_health = health(&replay, "", Some(pki.client("ca.pem", None))).await;
    assert!(anonymous_health.is_err(), "health too: {anonymous_health:?}");
    let stranger = info(
        &replay,
        Some(pki.client("ca.pem", Some(("other-client.pem", "other-client-key.pem")))),
    )
    .await;
    assert!(stranger.is_err(), "a certificate from another CA is refused: {stranger:?}");
    let client = || pki.client("ca.pem", Some(("client.pem", "client-key.pem")));
    info(&replay, Some(client()))
        .await
        .expect("a client certificate from the client CA");
    assert_eq!(health(&replay, "", Some(client())).await, Ok(ServingStatus::Serving as i32));

    let learner = start_with(&["learner", "--listen", "127.0.0.1:0", "--replay", &replay.grpc], &flags).await;
    let anonymous = health(&learner, "fleet.v1.Parameters", Some(pki.client("ca.pem", None))).await;
    assert!(
        anonymous.is_err(),
        "the learner refuses a client without a certificate: {anonymous:?}"
    );
    let mut parameters = ParametersClient::new(channel(&learner, Some(client())).await.unwrap());
    let mut chunks = parameters
        .watch_weights(pb::WatchWeightsRequest {
            after_version: 0,
            single_version: false,
        })
        .await
        .expect("weights for a client with a certificate")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), chunks.next())
        .await
        .expect("weights within 10 s")
        .unwrap()
        .unwrap();
    assert!(first.total_bytes > 0, "{first:?}");
}

/// A TLS file that is missing, empty or not what its key says stops the
/// role with an error naming the key and the file, before it binds or
/// announces anything; so does `fleet run`, before it starts any child.
#[tokio::test]
async fn a_missing_or_bad_tls_file_stops_a_role_before_it_starts() {
    let pki = Pki::new();
    let missing = pki.path("no-such-cert.pem").display().to_string();
    let empty = pki.path("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let empty = empty.display().to_string();
    let key = pki.path("key.pem").display().to_string();
    for (args, bad_key, file) in [
        (vec!["replay", "--listen", "127.0.0.1:0"], "cert_file", &missing),
        (vec!["learner", "--listen", "127.0.0.1:0"], "key_file", &empty),
        (vec!["actor"], "ca_file", &key),
        (vec!["run", "--max-env-steps", "1000"], "cert_file", &missing),
    ] {
        let mut flags = pki.flags(false);
        flags.extend(["--set".to_string(), format!("tls.{bad_key}={file}")]);
        let metrics = ["--metrics-listen", "127.0.0.1:0"].map(String::from);
        let out = fleet_output(args.iter().map(|a| a.to_string()).chain(metrics).chain(flags.iter().cloned())).await;
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(2), "{args:?} {bad_key}={file}: {stderr}");
        assert!(
            stderr.contains(&format!("tls.{bad_key}: ")) && stderr.contains(file.as_str()),
            "{args:?}: the error names the key and the file: {stderr}"
        );
        assert!(stdout.is_empty(), "nothing started or announced: {stdout}");
    }
    let key_text = std::fs::read_to_string(&key).unwrap();
    let out = Command::new(FLEET)
        .arg("config")
        .args(pki.flags(false))
        .args(["--set", &format!("tls.cert_file={key}")])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        !stderr.contains(key_text.lines().nth(1).unwrap()),
        "the error never quotes a key: {stderr}"
    );
}

/// `fleet run` with mutual TLS: the children read the TLS files through
/// the effective config, so actors insert into replay, the learner samples
/// from it and actors fetch its weights, all over mutual TLS, and CartPole
/// learns (a random policy returns ≈ 20). A failed handshake is logged as
/// a warning, which fails the test at once (the run would otherwise stall).
#[tokio::test]
async fn fleet_run_with_mutual_tls_trains() {
    let pki = Pki::new();
    let args = ["--seed", "1", "--target-return", "100", "--max-env-steps", "400000"].map(String::from);
    let args = [args.to_vec(), pki.flags(true)].concat();
    let (solved, output) = run_checking_lines(&args, |line, output| {
        assert!(
            !line.contains("TLS handshake failed"),
            "a child's handshake failed:\n{output}{line}"
        );
    })
    .await;
    assert!(solved, "{output}");
}
