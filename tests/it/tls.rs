//! TLS to the API: the simulator serves HTTPS and WSS with a certificate of a private CA made
//! here. Certificates are checked unless a pipeline turns that off by name; `tls_ca_file` trusts
//! the private CA for both the REST calls and the sockets.

use std::time::Duration;

use auditship::sim::{SimConfig, SimTls, Simulator};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

use crate::util::{assert_exactly_once, finish, sim, sim_lines, stop_when_all_committed, Workspace};

/// A private CA (PEM) and a server certificate it signed for 127.0.0.1 and localhost.
fn private_ca() -> (String, SimTls) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "auditship test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let cert = server.signed_by(&key, &ca_cert, &ca_key).unwrap();
    (
        ca_cert.pem(),
        SimTls {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        },
    )
}

async fn tls_sim(ids: &[&str], tls: SimTls) -> Simulator {
    let sim = sim(
        ids,
        SimConfig {
            backlog_per_sandbox: 150,
            live_rate_per_sec: 100.0,
            live_events_per_sandbox: Some(150),
            tls: Some(tls),
            ..SimConfig::default()
        },
    )
    .await;
    assert!(sim.base_url().starts_with("https://"));
    sim
}

#[tokio::test(flavor = "multi_thread")]
async fn a_private_ca_in_tls_ca_file_is_trusted_over_https_and_wss() {
    let (ca_pem, tls) = private_ca();
    let ids = ["sb-tls-1", "sb-tls-2"];
    let sim = tls_sim(&ids, tls).await;
    let ws = Workspace::new(&sim, &ids, "tls_ca_file = \"CA_FILE\"", "");
    let ca_file = ws.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let text = std::fs::read_to_string(&ws.pipeline).unwrap();
    std::fs::write(
        &ws.pipeline,
        text.replace("CA_FILE", &ca_file.display().to_string()),
    )
    .unwrap();
    let key = sim.api_key().to_string();
    let child = ws.spawn(&key, &["run", "pipe.toml"]);
    let mut sockets = 0;
    for _ in 0..100 {
        sockets = sockets.max(sim.open_sockets());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = stop_when_all_committed(&ws, &sim, child).await;
    assert_exactly_once(&ws.archive_lines(), &sim_lines(&sim, &ids));
    assert_eq!(sockets, 2, "both sandboxes followed over wss://: {}", out.stderr);
    assert!(!out.stderr.contains("falling back to polling"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_certificate_stops_the_run_and_names_the_fix() {
    let (_, tls) = private_ca();
    let ids = ["sb-untrusted"];
    let sim = tls_sim(&ids, tls).await;
    let ws = Workspace::new(&sim, &ids, "", "");
    let key = sim.api_key().to_string();
    let out = finish(ws.spawn(&key, &["run", "pipe.toml"]), Duration::from_secs(60));
    assert_eq!(out.code, Some(1), "stderr: {}", out.stderr);
    let error = out
        .stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    assert!(
        error.contains("does not trust") && error.contains("tls_ca_file"),
        "{error}\n{}",
        out.stderr
    );
    assert!(ws.archive_lines().is_empty(), "nothing was shipped");
    assert!(!out.stderr.contains(&key));
    // A CA file that is not there: a configuration error naming the key and the fix.
    let ws = Workspace::new(&sim, &ids, "tls_ca_file = \"/nonexistent/ca.pem\"", "");
    let out = ws.run(&key, &["run", "pipe.toml"]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("pipe.toml")
            && out
                .stderr
                .contains("tls_ca_file \"/nonexistent/ca.pem\" is not a file"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn verification_is_off_only_when_a_pipeline_says_so_and_it_is_warned_about() {
    let (_, tls) = private_ca();
    let ids = ["sb-insecure"];
    let sim = tls_sim(&ids, tls).await;
    let ws = Workspace::new(&sim, &ids, "tls_insecure_skip_verify = true", "");
    let key = sim.api_key().to_string();
    let child = ws.spawn(&key, &["run", "pipe.toml"]);
    let out = stop_when_all_committed(&ws, &sim, child).await;
    assert_exactly_once(&ws.archive_lines(), &sim_lines(&sim, &ids));
    assert!(
        out.stderr.contains("TLS certificate verification is OFF"),
        "{}",
        out.stderr
    );
}
