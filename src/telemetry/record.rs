//! TFRecord framing, the container of TensorBoard event files: each record is its
//! length (u64, little endian), the masked CRC-32C of those 8 bytes, the payload,
//! and the masked CRC-32C of the payload. Written here (a table-driven CRC-32C and
//! two functions) rather than through a crate: see [`super`] for why.

use std::path::Path;

use crate::{Error, Result};

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) lookup table.
const TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |c, &b| {
        TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8)
    })
}

/// The masked CRC TFRecord stores: rotate right by 15, add a constant (so a CRC
/// of data that itself holds CRCs stays well distributed).
pub fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One framed record holding `payload`.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(payload.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&masked_crc(payload).to_le_bytes());
    out
}

/// The payloads of a file of records, in order. A torn last record (a process
/// killed mid-write) ends the list; a CRC mismatch elsewhere is an error naming
/// the file and the byte offset.
pub fn read_all(bytes: &[u8], path: &Path) -> Result<Vec<Vec<u8>>> {
    let bad =
        |at: usize, what: &str| Error::BadInput(format!("{}: byte {at}: {what}", path.display()));
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let Some(head) = bytes.get(at..at + 12) else {
            break; // torn header
        };
        let (len, crc) = head.split_at(8);
        if masked_crc(len) != u32::from_le_bytes(crc.try_into().unwrap_or_default()) {
            return Err(bad(at, "record length CRC mismatch"));
        }
        let n = u64::from_le_bytes(len.try_into().unwrap_or_default()) as usize;
        let body = at + 12;
        let Some(rest) = bytes.get(body..body.saturating_add(n).saturating_add(4)) else {
            break; // torn payload
        };
        let (payload, crc) = rest.split_at(n);
        if masked_crc(payload) != u32::from_le_bytes(crc.try_into().unwrap_or_default()) {
            return Err(bad(at, "record payload CRC mismatch"));
        }
        out.push(payload.to_vec());
        at = body + n + 4;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_values() {
        // The standard check value of CRC-32C, and RFC 3720's 32 zero bytes.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn frames_and_reads_back_and_rejects_corruption() {
        let p = Path::new("x.tfevents");
        let mut bytes = frame(b"abc");
        bytes.extend(frame(b""));
        assert_eq!(read_all(&bytes, p).unwrap(), vec![b"abc".to_vec(), vec![]]);
        // A torn tail is dropped, not an error.
        let mut torn = bytes.clone();
        torn.extend(&frame(b"hello")[..10]);
        assert_eq!(read_all(&torn, p).unwrap().len(), 2);
        bytes[13] ^= 1; // flip a payload bit of the first record
        let err = read_all(&bytes, p).unwrap_err().to_string();
        assert!(
            err.contains("x.tfevents: byte 0: record payload CRC"),
            "{err}"
        );
    }
}
