//! Building an object: its body compressed, staged to a local file (fsync'd) before upload, and
//! the checksums S3 verifies.

use super::*;

pub(crate) fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

/// The base64 SHA-256 of `bytes`, as S3's `ChecksumSHA256` spells it.
pub fn sha256_base64(bytes: &[u8]) -> String {
    sha256_b64(bytes)
}

pub(crate) fn sha256_b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(bytes))
}

/// The object body: every line and a newline, compressed.
pub(crate) fn compress(c: Compression, lines: &[bytes::Bytes], size: u64) -> std::io::Result<bytes::Bytes> {
    fn put(out: &mut impl std::io::Write, lines: &[bytes::Bytes]) -> std::io::Result<()> {
        for l in lines {
            out.write_all(l)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    }
    let out = match c {
        Compression::None => {
            let mut out = Vec::with_capacity(size as usize);
            put(&mut out, lines)?;
            out
        }
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(size as usize / 4),
                flate2::Compression::new(6),
            );
            put(&mut enc, lines)?;
            enc.finish()?
        }
        Compression::Zstd => {
            let mut enc = zstd::stream::Encoder::new(Vec::with_capacity(size as usize / 4), 3)?;
            put(&mut enc, lines)?;
            enc.finish()?
        }
    };
    Ok(bytes::Bytes::from(out))
}

/// Write `body` to `path` durably (file and directory fsync'd).
pub(crate) fn stage(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
