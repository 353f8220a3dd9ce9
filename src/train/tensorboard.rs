//! TensorBoard's event files, written live beside `metrics.jsonl` (`--log-format jsonl,tensorboard`):
//! `tensorboard --logdir OUT` plots every numeric field of every metrics event as a scalar named
//! `<event>/<field>` (`train/loss`, `valid/loss/model1`, ...) against the event's step.
//!
//! The format is TensorFlow's record file of `Event` protocol buffers: each record is its length
//! (u64, little-endian), the masked CRC-32C of those 8 bytes, the bytes, their masked CRC-32C. The
//! few fields written are encoded by hand (`Event { wall_time = 1, step = 2, file_version = 3,
//! summary = 5 }`, `Summary { value = 1 }`, `Summary.Value { tag = 1, simple_value = 2 }`), which
//! spares a protobuf code generator for four fields.

use crate::{Error, Result};
use serde_json::Value;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// An open event file.
pub struct EventWriter {
    file: File,
    path: PathBuf,
}

/// CRC-32C of `data`, masked as TensorFlow's record format masks it.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field (wire type 2).
fn bytes_field(field: u64, data: &[u8], out: &mut Vec<u8>) {
    varint(field << 3 | 2, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

/// One `Event`: its wall time, step, and either a file version or one scalar.
fn event_bytes(wall_time: f64, step: i64, file_version: Option<&str>, scalar: Option<(&str, f32)>) -> Vec<u8> {
    let mut e = Vec::new();
    e.push(1 << 3 | 1); // wall_time: double
    e.extend_from_slice(&wall_time.to_le_bytes());
    varint(2 << 3, &mut e); // step: int64
    varint(step as u64, &mut e);
    if let Some(v) = file_version {
        bytes_field(3, v.as_bytes(), &mut e);
    }
    if let Some((tag, value)) = scalar {
        let mut val = Vec::new();
        bytes_field(1, tag.as_bytes(), &mut val);
        val.push(2 << 3 | 5); // simple_value: float
        val.extend_from_slice(&value.to_le_bytes());
        let mut summary = Vec::new();
        bytes_field(1, &val, &mut summary);
        bytes_field(5, &summary, &mut e);
    }
    e
}

/// One record of the file: the framed bytes.
fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut r = Vec::with_capacity(data.len() + 16);
    r.extend_from_slice(&len);
    r.extend_from_slice(&masked_crc(&len).to_le_bytes());
    r.extend_from_slice(data);
    r.extend_from_slice(&masked_crc(data).to_le_bytes());
    r
}

impl EventWriter {
    /// A new event file in `dir` (`events.out.tfevents.<seconds>.codistill.<pid>`; a resumed run
    /// starts another, and TensorBoard reads them together), with its version record.
    pub fn create(dir: &Path) -> Result<Self> {
        let now = super::report::unix_time();
        let path = dir.join(format!("events.out.tfevents.{}.codistill.{}", now as u64, std::process::id()));
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut w = EventWriter { file, path };
        w.put(&event_bytes(now, 0, Some("brain.Event:2"), None))?;
        Ok(w)
    }

    fn put(&mut self, event: &[u8]) -> Result<()> {
        self.file.write_all(&record(event)).map_err(|e| Error::io(&self.path, e))
    }

    /// One scalar.
    pub fn scalar(&mut self, tag: &str, step: i64, value: f32, wall_time: f64) -> Result<()> {
        self.put(&event_bytes(wall_time, step, None, Some((tag, value))))
    }

    /// Every finite numeric field of a metrics event with a step, as `<event>/<field>` (with
    /// `/model<k>` when the event names a model). Bookkeeping fields (step, time, model, teacher,
    /// rank, world) are not plotted.
    pub fn metrics_event(&mut self, event: &Value, wall_time: f64) -> Result<()> {
        let Value::Object(m) = event else { return Ok(()) };
        let Some(step) = m.get("step").and_then(Value::as_i64) else { return Ok(()) };
        let kind = m.get("event").and_then(Value::as_str).unwrap_or("event");
        let model = m.get("model").and_then(Value::as_u64).map(|k| format!("/model{k}")).unwrap_or_default();
        for (key, v) in m {
            if matches!(key.as_str(), "step" | "time" | "model" | "teacher" | "rank" | "world") {
                continue;
            }
            if let Some(x) = v.as_f64().filter(|x| x.is_finite()) {
                self.scalar(&format!("{kind}/{key}{model}"), step, x as f32, wall_time)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CRC-32C's standard check value, and the record framing of TensorFlow's documentation.
    #[test]
    fn checksums_and_framing_are_tensorflows() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        let r = record(b"abc");
        assert_eq!(&r[..8], &3u64.to_le_bytes());
        assert_eq!(u32::from_le_bytes(r[8..12].try_into().unwrap()), masked_crc(&3u64.to_le_bytes()));
        assert_eq!(&r[12..15], b"abc");
        assert_eq!(r.len(), 19);
    }

    /// A scalar event's bytes, assembled by hand from the protobuf wire format.
    #[test]
    fn a_scalar_event_has_the_wire_bytes_of_its_fields() {
        let got = event_bytes(1.5, 300, None, Some(("train/loss", 0.25)));
        let mut want = vec![0x09];
        want.extend_from_slice(&1.5f64.to_le_bytes());
        want.extend_from_slice(&[0x10, 0xac, 0x02]); // step 300 as a varint
                                                     // summary (field 5) { value (field 1) { tag (1) = "train/loss", simple_value (2) = 0.25 } }
        let mut value = vec![0x0a, 10];
        value.extend_from_slice(b"train/loss");
        value.push(0x15);
        value.extend_from_slice(&0.25f32.to_le_bytes());
        want.extend_from_slice(&[0x2a, value.len() as u8 + 2, 0x0a, value.len() as u8]);
        want.extend_from_slice(&value);
        assert_eq!(got, want);
    }

    #[test]
    fn metrics_events_become_one_scalar_per_numeric_field() {
        let dir = crate::testdir::Scratch::new("tensorboard", "events");
        let mut w = EventWriter::create(&dir.join("")).unwrap();
        w.metrics_event(&serde_json::json!({"event": "valid", "step": 7, "model": 1, "loss": 1.25, "note": "x", "time": 3.0}), 2.0).unwrap();
        w.metrics_event(&serde_json::json!({"event": "start", "note": "no step"}), 2.0).unwrap();
        let bytes = std::fs::read(&w.path).unwrap();
        let want =
            [record(&event_bytes(0.0, 0, Some("brain.Event:2"), None)).len(), record(&event_bytes(2.0, 7, None, Some(("valid/loss/model1", 1.25)))).len()];
        assert_eq!(bytes.len(), want.iter().sum::<usize>(), "one version record and one scalar");
        assert!(bytes.ends_with(&record(&event_bytes(2.0, 7, None, Some(("valid/loss/model1", 1.25))))));
    }
}
