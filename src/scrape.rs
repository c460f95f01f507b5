//! Reading a fleet process's `/metrics`: one HTTP/1.0 GET over a plain TCP
//! stream (no HTTP client dependency), and the Prometheus text format parsed
//! into samples that can be looked up by name or by series. Used by the
//! launcher's progress line, `fleet health` for actors, and the tests. It
//! knows nothing of which metrics exist; the names live in each crate's
//! `metrics.rs`.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long to wait for a connection, and then for the whole response.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// One answer to `GET /metrics`.
#[derive(Debug, Clone)]
pub struct Response {
    /// The HTTP status line, e.g. `HTTP/1.1 200 OK`.
    pub status: String,
    pub body: String,
}

impl Response {
    pub fn is_ok(&self) -> bool {
        self.status.split_whitespace().nth(1) == Some("200")
    }
}

/// One `GET /metrics` of `address` (host:port), whatever its status.
pub async fn get(address: &str) -> Result<Response> {
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
        .await
        .map_err(|_| anyhow!("no connection to {address} within {} s", CONNECT_TIMEOUT.as_secs()))?
        .with_context(|| format!("connecting to {address}"))?;
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .await
        .with_context(|| format!("sending a request to {address}"))?;
    let mut response = String::new();
    tokio::time::timeout(RESPONSE_TIMEOUT, stream.read_to_string(&mut response))
        .await
        .map_err(|_| anyhow!("no answer from http://{address}/metrics within {} s", RESPONSE_TIMEOUT.as_secs()))?
        .with_context(|| format!("reading the answer from {address}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP response from {address}"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/") {
        bail!("{address} answered no HTTP status line");
    }
    Ok(Response {
        status: status.to_string(),
        body: body.to_string(),
    })
}

/// The text of `address`'s `/metrics`; an error unless it answers 200.
pub async fn scrape(address: &str) -> Result<String> {
    let response = get(address).await?;
    if !response.is_ok() {
        bail!("{address}/metrics answered `{}`", response.status);
    }
    Ok(response.body)
}

/// One sample line of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// The label pairs as written between the braces (`kind="policy"`),
    /// empty when there are none.
    pub labels: String,
    pub value: f64,
}

/// Every sample line of a Prometheus text exposition; comments, blank lines
/// and lines that do not parse are skipped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Samples(pub Vec<Sample>);

impl Samples {
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let series = series.trim();
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => (name, rest.strip_suffix('}')?),
                    None => (series, ""),
                };
                Some(Sample {
                    name: name.to_string(),
                    labels: labels.to_string(),
                    value: value.trim().parse().ok()?,
                })
            })
            .collect();
        Self(samples)
    }

    /// The sum over every series of metric `name` (all label values).
    pub fn sum(&self, name: &str) -> f64 {
        self.0.iter().filter(|s| s.name == name).map(|s| s.value).sum()
    }

    /// The first sample of `series`: a bare name matches any labels,
    /// `name{a="x"}` only samples whose labels begin with the pair `a="x"`.
    pub fn value(&self, series: &str) -> Option<f64> {
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.strip_suffix('}').unwrap_or(rest)),
            None => (series, ""),
        };
        self.0
            .iter()
            .find(|s| {
                s.name == name
                    && (labels.is_empty() || s.labels == labels || s.labels.strip_prefix(labels).is_some_and(|rest| rest.starts_with(',')))
            })
            .map(|s| s.value)
    }
}

/// The value of `series` (see [`Samples::value`]) in the exposition `text`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    Samples::parse(text).value(series)
}

/// The series text `name{k1="v1",k2="v2"}` of one label set, as the exporter writes it.
pub fn series(name: &str, labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return name.to_string();
    }
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", pairs.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP x\n# TYPE x counter\nfleet_a_total 12\nfleet_b{kind=\"policy\"} -0.5\nfleet_b{kind=\"total\"} 2\nfleet_c_bucket{le=\"+Inf\"} 3\n\n";

    #[test]
    fn parses_samples_with_and_without_labels() {
        let sample = |name: &str, labels: &str, value| Sample {
            name: name.into(),
            labels: labels.into(),
            value,
        };
        assert_eq!(
            Samples::parse(TEXT).0,
            vec![
                sample("fleet_a_total", "", 12.0),
                sample("fleet_b", "kind=\"policy\"", -0.5),
                sample("fleet_b", "kind=\"total\"", 2.0),
                sample("fleet_c_bucket", "le=\"+Inf\"", 3.0),
            ]
        );
    }

    #[test]
    fn looks_up_by_name_or_series_and_sums_label_sets() {
        let samples = Samples::parse(TEXT);
        assert_eq!(samples.value("fleet_a_total"), Some(12.0));
        assert_eq!(samples.value("fleet_b"), Some(-0.5), "a bare name takes the first series");
        assert_eq!(samples.value(&series("fleet_b", &[("kind", "total")])), Some(2.0));
        assert_eq!(samples.value("fleet_b{kind=\"entropy\"}"), None);
        assert_eq!(samples.value("fleet_a"), None, "names match whole, not by prefix");
        assert_eq!(samples.sum("fleet_b"), 1.5);
        assert_eq!(samples.sum("fleet_missing"), 0.0);
        assert_eq!(metric(TEXT, "fleet_c_bucket"), Some(3.0));
    }

    #[test]
    fn writes_series_as_the_exporter_does() {
        assert_eq!(series("fleet_x", &[]), "fleet_x");
        assert_eq!(
            series("fleet_x", &[("table", "queue"), ("le", "1")]),
            "fleet_x{table=\"queue\",le=\"1\"}"
        );
    }
}
