//! TensorBoard event files: a run's progress rows as scalar summaries, so
//! `tensorboard --logdir runs/` shows fleet's curves beside everything else
//! a user trains. The file is TensorBoard's own format: TFRecord frames
//! (length, masked CRC-32C of the length, an `Event` protobuf, its masked
//! CRC-32C), the first event naming the format version.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use prost::Message as _;

use crate::runs::ProgressRow;

/// The folder of a run that holds its event files.
pub const DIR: &str = "tensorboard";

/// The `file_version` of the first event, as TensorBoard writes it.
const FILE_VERSION: &str = "brain.Event:2";

/// `tensorflow.Event`, the fields a scalar log needs.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(oneof = "What", tags = "3, 5")]
    pub what: Option<What>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum What {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value` with a `simple_value` (in a oneof, so that a
/// scalar of 0 is still written).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(oneof = "Scalar", tags = "2")]
    pub value: Option<Scalar>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Scalar {
    #[prost(float, tag = "2")]
    SimpleValue(f32),
}

/// Appends events to one new event file.
#[derive(Debug)]
pub struct EventWriter {
    file: File,
    path: PathBuf,
}

impl EventWriter {
    /// Creates `dir` if need be and a new event file in it (each start of a
    /// run, resumes included, writes its own; TensorBoard reads them all).
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty() && !h.contains('/'))
            .unwrap_or_else(|| "localhost".into());
        let path = dir.join(format!("events.out.tfevents.{}.{host}.{}.fleet", now.as_secs(), std::process::id()));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let mut writer = Self { file, path };
        writer.write(&Event {
            wall_time: now.as_secs_f64(),
            step: 0,
            what: Some(What::FileVersion(FILE_VERSION.into())),
        })?;
        Ok(writer)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One event holding every known value of `row` as a scalar, at step
    /// `row.env_steps`; written through at once.
    pub fn append(&mut self, row: &ProgressRow) -> Result<()> {
        let wall_time = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let value = scalars(row)
            .into_iter()
            .filter_map(|(tag, value)| {
                value.map(|v| SummaryValue {
                    tag: tag.into(),
                    value: Some(Scalar::SimpleValue(v as f32)),
                })
            })
            .collect();
        self.write(&Event {
            wall_time,
            step: i64::try_from(row.env_steps).unwrap_or(i64::MAX),
            what: Some(What::Summary(Summary { value })),
        })
    }

    fn write(&mut self, event: &Event) -> Result<()> {
        let frame = frame(&event.encode_to_vec());
        self.file
            .write_all(&frame)
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

/// The tags of a progress row and their values (`None`: not known yet).
pub fn scalars(row: &ProgressRow) -> [(&'static str, Option<f64>); 14] {
    [
        ("return/step_weighted", row.return_step_weighted),
        ("return/mean_100_episodes", row.return_mean),
        ("return/median_100_episodes", row.return_median),
        ("return/min_100_episodes", row.return_min),
        ("return/max_100_episodes", row.return_max),
        ("throughput/env_steps_per_second", Some(row.env_steps_per_second)),
        ("progress/episodes", Some(row.episodes as f64)),
        ("progress/learner_updates", Some(row.learner_updates as f64)),
        ("progress/wall_seconds", Some(row.wall_seconds)),
        ("loss/policy", row.loss_policy),
        ("loss/baseline", row.loss_baseline),
        ("loss/entropy", row.loss_entropy),
        ("loss/total", row.loss_total),
        ("learner/policy_lag", row.policy_lag),
    ]
}

/// TensorBoard's masking of a CRC stored next to the data it covers.
fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord frame around `data`.
fn frame(data: &[u8]) -> Vec<u8> {
    let length = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&length);
    out.extend_from_slice(&masked_crc(&length).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// The events of a file written by [`EventWriter`], each frame's CRCs
/// checked; an error names the file and the byte where it went wrong.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut events = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let bad = |what: &str| anyhow::anyhow!("{}: byte {at}: {what}", path.display());
        let header = bytes.get(at..at + 12).ok_or_else(|| bad("a frame header cut short"))?;
        let (length, length_crc) = header.split_at(8);
        if masked_crc(length).to_le_bytes() != length_crc {
            return Err(bad("the length's CRC does not match"));
        }
        let length = usize::try_from(u64::from_le_bytes(length.try_into()?))?;
        let data = bytes.get(at + 12..at + 12 + length).ok_or_else(|| bad("a frame cut short"))?;
        let crc = bytes
            .get(at + 12 + length..at + 16 + length)
            .ok_or_else(|| bad("a frame's CRC cut short"))?;
        if masked_crc(data).to_le_bytes() != crc {
            return Err(bad("the data's CRC does not match"));
        }
        events.push(Event::decode(data).map_err(|e| bad(&format!("not an Event: {e}")))?);
        at += 16 + length;
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crc_is_castagnolis_masked_as_tensorboard_masks_it() {
        // The CRC-32C check value, then TFRecord's mask of it.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        // (crc >> 15 | crc << 17) + 0xa282ead8, worked by hand.
        assert_eq!(masked_crc(b"123456789"), 0xc78a_b0e5);
    }

    #[test]
    fn rows_come_back_as_scalars_at_their_env_step() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = EventWriter::create(dir.path()).unwrap();
        let row = ProgressRow {
            env_steps: 12_345,
            env_steps_per_second: 900.0,
            return_step_weighted: Some(487.5),
            return_min: Some(0.0),
            policy_lag: None,
            ..ProgressRow::default()
        };
        writer.append(&row).unwrap();
        let events = read_events(writer.path()).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].what, Some(What::FileVersion(FILE_VERSION.into())));
        assert_eq!(events[1].step, 12_345);
        let Some(What::Summary(summary)) = &events[1].what else {
            panic!("no summary: {:?}", events[1]);
        };
        let value = |tag: &str| summary.value.iter().find(|v| v.tag == tag).map(|v| v.value.clone());
        assert_eq!(value("return/step_weighted"), Some(Some(Scalar::SimpleValue(487.5))));
        // A zero is still a value; an unknown one is left out.
        assert_eq!(value("return/min_100_episodes"), Some(Some(Scalar::SimpleValue(0.0))));
        assert_eq!(value("learner/policy_lag"), None);
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let writer = EventWriter::create(dir.path()).unwrap();
        let mut bytes = std::fs::read(writer.path()).unwrap();
        let last = bytes.len() - 5;
        bytes[last] ^= 1;
        std::fs::write(writer.path(), &bytes).unwrap();
        let error = read_events(writer.path()).unwrap_err().to_string();
        assert!(error.contains(&writer.path().display().to_string()), "{error}");
        assert!(error.contains("CRC"), "{error}");
    }
}
