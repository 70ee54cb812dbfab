//! `auditship keygen`: a key pair for signing digests. The private key is written 0600 and
//! printed nowhere; the public key is what an auditor is handed.

use std::path::Path;

use auditship::manifest::write_key_pair;

use super::exit::{fail, Code, CommandResult};

/// Write `PREFIX.key` and `PREFIX.pub`, and say what to do with each.
pub fn keygen(prefix: &Path) -> CommandResult {
    let (private, public, fingerprint) = write_key_pair(prefix).map_err(|e| fail(Code::Fix, e))?;
    println!(
        "wrote the private key {} (mode 0600: keep it on the pipeline's host only)\n\
         wrote the public key  {} (hand it to whoever checks the archive)\n\
         fingerprint: {fingerprint}",
        private.display(),
        public.display()
    );
    Ok(Code::Ok)
}
