//! `auditship keygen`: a key pair on disk, the private half readable by its owner only and
//! printed nowhere, and never overwritten.

use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;

#[test]
fn keygen_writes_a_private_key_only_its_owner_reads_and_prints_only_the_public_side() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("audit");
    let keygen = || {
        Command::new(env!("CARGO_BIN_EXE_auditship"))
            .arg("keygen")
            .arg("--out")
            .arg(&prefix)
            .output()
            .unwrap()
    };
    let out = keygen();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    let private = dir.path().join("audit.key");
    let public = dir.path().join("audit.pub");
    assert_eq!(
        std::fs::metadata(&private).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let key = auditship::manifest::DigestSigningKey::from_file(&private).unwrap();
    let public_key = auditship::manifest::DigestPublicKey::from_file(&public).unwrap();
    assert!(
        stdout.contains(&format!("fingerprint: {}", public_key.fingerprint())),
        "{stdout}"
    );
    assert_eq!(key.fingerprint(), public_key.fingerprint());
    // The private key's body is in no output.
    let text = std::fs::read_to_string(&private).unwrap();
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!body.is_empty());
    assert!(!stdout.contains(&body) && !stderr.contains(&body));

    // A second run never replaces the pair: exit 1, the file named.
    let again = keygen();
    assert_eq!(again.status.code(), Some(1));
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(
        said.contains("audit.key") && said.contains("never overwritten"),
        "{said}"
    );
    assert_eq!(std::fs::read_to_string(&private).unwrap(), text);
}
