//! The few TensorBoard `Event` protobuf messages vssl writes, encoded by hand
//! (field numbers from tensorboard's `event.proto`, `summary.proto` and
//! `tensor.proto`), and a decoder of the same subset: the writer reads its own
//! files back to drop stale steps on resume, and tests read them to check values.
//!
//! ```text
//! Event   { 1: wall_time double, 2: step int64, 3: file_version string, 5: summary }
//! Summary { 1: repeated Value }
//! Value   { 1: tag, 2: simple_value float, 8: tensor, 9: metadata }
//! SummaryMetadata { 1: plugin_data { 1: plugin_name } }
//! TensorProto { 1: dtype (7 = DT_STRING), 2: tensor_shape {}, 8: repeated string_val }
//! ```

/// What one event carries.
#[derive(Debug, Clone, PartialEq)]
pub enum What {
    /// The first event of every file: `brain.Event:2`.
    FileVersion(String),
    /// A scalar (`simple_value`, which TensorBoard shows under Scalars).
    Scalar { tag: String, value: f32 },
    /// A text summary (the `text` plugin; markdown).
    Text { tag: String, text: String },
}

/// One event: when, at which step, what.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub wall_time: f64,
    pub step: i64,
    pub what: What,
}

impl Event {
    /// The tag of a summary event.
    pub fn tag(&self) -> Option<&str> {
        match &self.what {
            What::Scalar { tag, .. } | What::Text { tag, .. } => Some(tag),
            What::FileVersion(_) => None,
        }
    }

    /// The protobuf encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Vec::new();
        fixed64(&mut e, 1, self.wall_time.to_bits());
        if self.step != 0 {
            varint_field(&mut e, 2, self.step as u64);
        }
        match &self.what {
            What::FileVersion(v) => bytes_field(&mut e, 3, v.as_bytes()),
            What::Scalar { tag, value } => {
                let mut v = Vec::new();
                bytes_field(&mut v, 1, tag.as_bytes());
                v.push(2 << 3 | 5);
                v.extend_from_slice(&value.to_le_bytes());
                bytes_field(&mut e, 5, &summary(&v));
            }
            What::Text { tag, text } => {
                let mut plugin = Vec::new();
                bytes_field(&mut plugin, 1, b"text");
                let mut meta = Vec::new();
                bytes_field(&mut meta, 1, &plugin);
                let mut tensor = Vec::new();
                varint_field(&mut tensor, 1, 7); // DT_STRING
                bytes_field(&mut tensor, 2, &[]); // scalar shape
                bytes_field(&mut tensor, 8, text.as_bytes());
                let mut v = Vec::new();
                bytes_field(&mut v, 1, tag.as_bytes());
                bytes_field(&mut v, 8, &tensor);
                bytes_field(&mut v, 9, &meta);
                bytes_field(&mut e, 5, &summary(&v));
            }
        }
        e
    }

    /// Decodes an event of the subset above; None for anything else (another
    /// writer's events are kept as they are, never misread).
    pub fn decode(buf: &[u8]) -> Option<Event> {
        let (mut wall_time, mut step, mut what) = (0.0, 0i64, None);
        for (field, val) in fields(buf)? {
            match (field, val) {
                (1, Val::Fixed64(b)) => wall_time = f64::from_bits(b),
                (2, Val::Varint(s)) => step = s as i64,
                (3, Val::Bytes(v)) => {
                    what = Some(What::FileVersion(String::from_utf8(v.to_vec()).ok()?))
                }
                (5, Val::Bytes(s)) => what = Some(decode_summary(s)?),
                _ => {}
            }
        }
        Some(Event {
            wall_time,
            step,
            what: what?,
        })
    }
}

fn summary(value: &[u8]) -> Vec<u8> {
    let mut s = Vec::new();
    bytes_field(&mut s, 1, value);
    s
}

/// The one value of a summary vssl writes.
fn decode_summary(buf: &[u8]) -> Option<What> {
    let value = match fields(buf)?.as_slice() {
        [(1, Val::Bytes(v))] => *v,
        _ => return None,
    };
    let (mut tag, mut scalar, mut text) = (None, None, None);
    for (field, val) in fields(value)? {
        match (field, val) {
            (1, Val::Bytes(t)) => tag = Some(String::from_utf8(t.to_vec()).ok()?),
            (2, Val::Fixed32(b)) => scalar = Some(f32::from_bits(b)),
            (8, Val::Bytes(t)) => {
                for (f, v) in fields(t)? {
                    if let (8, Val::Bytes(s)) = (f, v) {
                        text = Some(String::from_utf8(s.to_vec()).ok()?);
                    }
                }
            }
            _ => {}
        }
    }
    let tag = tag?;
    match (scalar, text) {
        (Some(value), None) => Some(What::Scalar { tag, value }),
        (None, Some(text)) => Some(What::Text { tag, text }),
        _ => None,
    }
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_field(out: &mut Vec<u8>, field: u64, v: u64) {
    varint(out, field << 3);
    varint(out, v);
}

fn fixed64(out: &mut Vec<u8>, field: u64, v: u64) {
    varint(out, field << 3 | 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn bytes_field(out: &mut Vec<u8>, field: u64, v: &[u8]) {
    varint(out, field << 3 | 2);
    varint(out, v.len() as u64);
    out.extend_from_slice(v);
}

/// A decoded protobuf field value.
enum Val<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

fn read_varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at)?;
        *at += 1;
        v |= ((b & 0x7f) as u64) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

/// The (field number, value) pairs of a message; None if it is malformed.
fn fields(buf: &[u8]) -> Option<Vec<(u64, Val<'_>)>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let key = read_varint(buf, &mut at)?;
        let val = match key & 7 {
            0 => Val::Varint(read_varint(buf, &mut at)?),
            1 => {
                let b = buf.get(at..at + 8)?;
                at += 8;
                Val::Fixed64(u64::from_le_bytes(b.try_into().ok()?))
            }
            5 => {
                let b = buf.get(at..at + 4)?;
                at += 4;
                Val::Fixed32(u32::from_le_bytes(b.try_into().ok()?))
            }
            2 => {
                let n = read_varint(buf, &mut at)? as usize;
                let b = buf.get(at..at.checked_add(n)?)?;
                at += n;
                Val::Bytes(b)
            }
            _ => return None,
        };
        out.push((key >> 3, val));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_kind() {
        for what in [
            What::FileVersion("brain.Event:2".into()),
            What::Scalar {
                tag: "train/loss".into(),
                value: 1.25,
            },
            What::Text {
                tag: "hparams/recipe".into(),
                text: "```toml\n[train]\nlr = 0.1\n```".into(),
            },
        ] {
            let e = Event {
                wall_time: 1.5e9,
                step: 300,
                what,
            };
            assert_eq!(Event::decode(&e.encode()), Some(e));
        }
    }

    /// Whole framed records as TensorBoard's Python writer makes them
    /// (`tensorboard.summary.writer.record_writer.RecordWriter` over
    /// `event_pb2.Event(...).SerializeToString()`, wall_time 1.5e9; see
    /// `tools/check_tensorboard.py`): length, its masked CRC, payload, its masked CRC.
    #[test]
    fn records_match_tensorboards_own_writer_byte_for_byte() {
        use crate::telemetry::record::{frame, read_all};
        let at = |step, what| {
            frame(
                &Event {
                    wall_time: 1.5e9,
                    step,
                    what,
                }
                .encode(),
            )
        };
        let version: &[u8] = &[
            0x18, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xa3, 0x7f, 0x4b, 0x22, 0x09, 0x00,
            0x00, 0x00, 0xc0, 0x0b, 0x5a, 0xd6, 0x41, 0x1a, 0x0d, 0x62, 0x72, 0x61, 0x69, 0x6e,
            0x2e, 0x45, 0x76, 0x65, 0x6e, 0x74, 0x3a, 0x32, 0x4c, 0xa9, 0xa4, 0x64,
        ];
        let scalar: &[u8] = &[
            0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x29, 0xed, 0xa9, 0x50, 0x09, 0x00,
            0x00, 0x00, 0xc0, 0x0b, 0x5a, 0xd6, 0x41, 0x10, 0x07, 0x2a, 0x13, 0x0a, 0x11, 0x0a,
            0x0a, 0x74, 0x72, 0x61, 0x69, 0x6e, 0x2f, 0x6c, 0x6f, 0x73, 0x73, 0x15, 0x00, 0x00,
            0x00, 0x3f, 0x51, 0x9a, 0x65, 0x58,
        ];
        let text: &[u8] = &[
            0x37, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xe7, 0xe8, 0xca, 0x59, 0x09, 0x00,
            0x00, 0x00, 0xc0, 0x0b, 0x5a, 0xd6, 0x41, 0x2a, 0x2c, 0x0a, 0x2a, 0x0a, 0x0e, 0x68,
            0x70, 0x61, 0x72, 0x61, 0x6d, 0x73, 0x2f, 0x72, 0x65, 0x63, 0x69, 0x70, 0x65, 0x42,
            0x0e, 0x08, 0x07, 0x12, 0x00, 0x42, 0x08, 0x6c, 0x72, 0x20, 0x3d, 0x20, 0x30, 0x2e,
            0x31, 0x4a, 0x08, 0x0a, 0x06, 0x0a, 0x04, 0x74, 0x65, 0x78, 0x74, 0xaf, 0x5f, 0x74,
            0x75,
        ];
        assert_eq!(at(0, What::FileVersion("brain.Event:2".into())), version);
        let loss = What::Scalar {
            tag: "train/loss".into(),
            value: 0.5,
        };
        assert_eq!(at(7, loss.clone()), scalar);
        let recipe = What::Text {
            tag: "hparams/recipe".into(),
            text: "lr = 0.1".into(),
        };
        assert_eq!(at(0, recipe), text);
        // And the reader takes TensorBoard's bytes back.
        let file = [version, scalar].concat();
        let events: Vec<Event> = read_all(&file, std::path::Path::new("f"))
            .unwrap()
            .iter()
            .filter_map(|r| Event::decode(r))
            .collect();
        assert_eq!(events[1].step, 7);
        assert_eq!(events[1].what, loss);
    }

    #[test]
    fn foreign_or_malformed_events_decode_to_none() {
        assert_eq!(Event::decode(&[0x0f]), None); // wire type 7
        assert_eq!(Event::decode(&[0x1a, 0x05, b'a']), None); // truncated string
                                                              // A session-log event (field 6) is valid protobuf but not one of ours.
        assert_eq!(Event::decode(&[0x32, 0x02, 0x08, 0x01]), None);
    }
}
