//! Pre-flight checks of a `.pth` file before candle's pickle reader sees it. That
//! reader trusts the lengths and shapes it reads: a length-prefixed string claiming
//! 4 GB makes it allocate 4 GB before it notices the file ends, and so does a tensor
//! whose shape is larger than its storage (found by the `pth` fuzz target). A file a
//! user downloads must not do that, so every length in the pickle is checked against
//! the bytes left, and every tensor against the size of its storage entry, first.
//!
//! The scan walks the pickle opcodes only (no objects are built); an opcode it does
//! not know ends the scan and is left to candle's reader to accept or refuse.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// Checks every `data.pkl` of the zip at `path`; returns the size of each entry (the
/// tensors' storages), for [`check_tensor`]. Errors say what is wrong, for the caller
/// to wrap with the file name.
pub fn scan(path: &Path) -> Result<HashMap<String, u64>, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let file_len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| e.to_string())?;
    let mut sizes = HashMap::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| e.to_string())?;
        let name = entry.name().map_err(|e| e.to_string())?.into_owned();
        if entry.size() > file_len {
            return Err(format!(
                "zip entry `{name}` claims {} bytes, more than the whole file ({file_len})",
                entry.size()
            ));
        }
        if name.ends_with("data.pkl") {
            let mut pickle = Vec::with_capacity(entry.size() as usize);
            entry
                .read_to_end(&mut pickle)
                .map_err(|e| format!("cannot read `{name}`: {e}"))?;
            scan_pickle(&pickle).map_err(|e| format!("`{name}`: {e}"))?;
        }
        sizes.insert(name, entry.size());
    }
    Ok(sizes)
}

/// A tensor must fit in its storage entry: `(offset + elements) * dtype size` bytes.
pub fn check_tensor(
    sizes: &HashMap<String, u64>,
    info: &candle_core::pickle::TensorInfo,
) -> Result<(), String> {
    let have = sizes.get(&info.path).ok_or_else(|| {
        format!(
            "tensor `{}`: no storage `{}` in the file",
            info.name, info.path
        )
    })?;
    let l = &info.layout;
    let elems = l
        .dims()
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
        .and_then(|n| n.checked_add(l.start_offset() as u64))
        .and_then(|n| n.checked_mul(info.dtype.size_in_bytes() as u64));
    match elems {
        Some(need) if need <= *have => Ok(()),
        _ => Err(format!(
            "tensor `{}`: shape {:?} needs more than the {have} bytes of its storage `{}`",
            info.name,
            l.dims(),
            info.path
        )),
    }
}

/// Walks pickle opcodes, checking that each argument fits in what is left.
fn scan_pickle(b: &[u8]) -> Result<(), String> {
    let mut at = 0usize;
    // Takes `n` argument bytes after the opcode, or says the pickle is cut short.
    let take = |at: &mut usize, n: u64| -> Result<usize, String> {
        let start = *at;
        let end = (start as u64)
            .checked_add(n)
            .filter(|&e| e <= b.len() as u64)
            .ok_or_else(|| {
                format!(
                    "an argument at byte {start} claims {n} bytes, only {} are left",
                    b.len() - start
                )
            })?;
        *at = end as usize;
        Ok(start)
    };
    let le = |s: &[u8]| s.iter().rev().fold(0u64, |v, &x| (v << 8) | x as u64);
    while at < b.len() {
        let op = b[at];
        at += 1;
        match op {
            b'.' => return Ok(()), // STOP
            // Fixed-size arguments.
            b'K' | b'h' | b'q' | 0x80 | 0x82 => {
                take(&mut at, 1)?;
            }
            b'M' | 0x83 => {
                take(&mut at, 2)?;
            }
            b'J' | b'j' | b'r' | 0x84 => {
                take(&mut at, 4)?;
            }
            b'G' => {
                take(&mut at, 8)?;
            }
            // Length-prefixed arguments: 1, 4 or 8 length bytes.
            b'U' | b'C' | 0x8c | 0x8a => {
                let s = take(&mut at, 1)?;
                take(&mut at, b[s] as u64)?;
            }
            b'T' | b'X' | b'B' | 0x8b => {
                let s = take(&mut at, 4)?;
                let n = le(&b[s..s + 4]);
                if op == b'T' || op == 0x8b {
                    // Signed lengths: a negative one is corrupt.
                    if n > i32::MAX as u64 {
                        return Err(format!("a negative length at byte {s}"));
                    }
                }
                take(&mut at, n)?;
            }
            0x8d | 0x8e | 0x96 => {
                let s = take(&mut at, 8)?;
                take(&mut at, le(&b[s..s + 8]))?;
            }
            // FRAME: an 8-byte frame length; the frame's opcodes follow inline.
            0x95 => {
                let s = take(&mut at, 8)?;
                let n = le(&b[s..s + 8]);
                if n > (b.len() - at) as u64 {
                    return Err(format!("a frame at byte {s} is longer than the pickle"));
                }
            }
            // Newline-terminated arguments (GLOBAL and INST have two).
            b'c' | b'i' | b'I' | b'L' | b'S' | b'V' | b'F' | b'g' | b'p' | b'P' => {
                let lines = if op == b'c' || op == b'i' { 2 } else { 1 };
                for _ in 0..lines {
                    let nl = b[at..]
                        .iter()
                        .position(|&x| x == b'\n')
                        .ok_or_else(|| format!("an unterminated argument at byte {at}"))?;
                    at += nl + 1;
                }
            }
            // Opcodes without arguments.
            b'(' | b')' | b']' | b'}' | b'0' | b'1' | b'2' | b'a' | b'b' | b'd' | b'e' | b'l'
            | b'N' | b'o' | b'R' | b's' | b't' | b'u' | b'Q' | 0x81 | 0x85 | 0x86 | 0x87 | 0x88
            | 0x89 | 0x8f | 0x90 | 0x91 | 0x92 | 0x93 | 0x94 | 0x97 | 0x98 => {}
            // Anything else is candle's reader's to refuse.
            _ => return Ok(()),
        }
    }
    Err("the pickle has no STOP opcode (truncated)".into())
}

#[cfg(test)]
mod tests {
    use super::scan_pickle;

    #[test]
    fn lengths_past_the_end_are_refused() {
        // PROTO 2, BINUNICODE of 3 bytes "abc", STOP.
        let ok = [0x80, 2, b'X', 3, 0, 0, 0, b'a', b'b', b'c', b'.'];
        assert_eq!(scan_pickle(&ok), Ok(()));
        // The same string claiming 2.3 GB.
        let mut huge = ok;
        huge[3..7].copy_from_slice(&2_300_000_000u32.to_le_bytes());
        let err = scan_pickle(&huge).unwrap_err();
        assert!(
            err.contains("claims 2300000000 bytes, only 4 are left"),
            "{err}"
        );
        // Cut before STOP, or inside a fixed-size argument.
        assert!(scan_pickle(&ok[..10]).unwrap_err().contains("no STOP"));
        assert!(scan_pickle(&[b'J', 1, 2])
            .unwrap_err()
            .contains("claims 4 bytes"));
        // GLOBAL needs two lines.
        assert!(scan_pickle(b"cmodule\n")
            .unwrap_err()
            .contains("unterminated"));
        assert_eq!(scan_pickle(b"cmodule\nName\n."), Ok(()));
        // BINBYTES8 with a length that overflows.
        let mut b8 = vec![0x8e];
        b8.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(scan_pickle(&b8).unwrap_err().contains("claims"));
    }
}
