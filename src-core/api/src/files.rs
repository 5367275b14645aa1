//! Files read at start (the pools file, the gossip key, provider credentials next):
//! regular files only, and bounded in size, so `/dev/zero` or a FIFO gives a clear error
//! instead of filling memory or hanging. Errors name the path, never the contents.

use std::io::Read;
use std::path::Path;

use crate::{ApiError, ErrorCode};

/// Reads `path` whole if it is a regular file of at most `max` bytes; `what` names it in
/// errors ("pools file", "gossip key file").
pub fn read_bounded(path: &Path, max: u64, what: &str) -> Result<Vec<u8>, ApiError> {
    let shown = path.display();
    let unreadable = |m: String| ApiError::new(ErrorCode::Unreadable, m);
    let meta = std::fs::metadata(path).map_err(|e| unreadable(format!("cannot read {what} {shown}: {e}")))?;
    if !meta.is_file() {
        return Err(unreadable(format!(
            "cannot read {what} {shown}: not a regular file (a FIFO, device or directory)"
        )));
    }
    if meta.len() > max {
        return Err(unreadable(format!("{what} {shown} has {} bytes; expected at most {max}", meta.len())));
    }
    let f = std::fs::File::open(path).map_err(|e| unreadable(format!("cannot read {what} {shown}: {e}")))?;
    let mut buf = Vec::with_capacity(meta.len() as usize);
    // The file may grow between the check and the read: never read more than max + 1.
    f.take(max + 1).read_to_end(&mut buf).map_err(|e| unreadable(format!("cannot read {what} {shown}: {e}")))?;
    if buf.len() as u64 > max {
        return Err(unreadable(format!("{what} {shown} has more than {max} bytes; expected at most {max}")));
    }
    Ok(buf)
}

/// [`read_bounded`] for text (UTF-8).
pub fn read_text(path: &Path, max: u64, what: &str) -> Result<String, ApiError> {
    String::from_utf8(read_bounded(path, max, what)?).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidValue,
            format!(
                "{what} {} is not UTF-8 text (invalid byte at offset {})",
                path.display(),
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_fifos_and_big_files_are_refused_by_name() {
        let e = read_bounded(Path::new("/dev/zero"), 1024, "gossip key file").unwrap_err();
        assert!(e.message.contains("/dev/zero") && e.message.contains("not a regular file"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let e = read_bounded(&fifo, 1024, "pools file").unwrap_err();
        assert!(e.message.contains("not a regular file"), "a FIFO is refused without blocking: {e}");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 2048]).unwrap();
        let e = read_bounded(&big, 1024, "pools file").unwrap_err();
        assert!(e.message.contains("2048 bytes") && e.message.contains("at most 1024"), "{e}");
        std::fs::write(&big, b"secret-token\xff").unwrap();
        let e = read_text(&big, 1024, "pools file").unwrap_err();
        assert!(!e.message.contains("secret-token"), "errors never quote the contents: {e}");
        assert_eq!(read_text(&big.with_file_name("ok"), 10, "x").unwrap_err().code, ErrorCode::Unreadable);
    }
}
