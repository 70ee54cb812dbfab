//! Tail one sandbox's egress-audit events and print them as NDJSON, using auditship as a library.
//!
//! ```sh
//! # Against the real API:
//! MIOSA_API_KEY=msk_... cargo run --example tail_sandbox -- sb-123 https://api.miosa.ai/api/v1
//! # Without a key: against the bundled simulator (its socket drops every 50 frames, to show
//! # the stream reconnecting without a gap), for 300 events:
//! cargo run --example tail_sandbox
//! ```

use std::time::Duration;

use auditship_client::secret::ApiKey;
use auditship_client::{Client, Error, StartAt, TailOptions};
use auditship_sim::{SimConfig, Simulator};
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let sandbox = args.next().unwrap_or_else(|| "sb-1".to_string());
    let (client, limit, _sim) = match std::env::var("MIOSA_API_KEY") {
        Ok(key) => {
            let base = args
                .next()
                .unwrap_or_else(|| auditship_client::DEFAULT_BASE_URL.to_string());
            let client = Client::builder()
                .base_url(base)
                .api_key(ApiKey::new(key))
                .build()?;
            (client, None, None)
        }
        Err(_) => {
            let sim = Simulator::start(SimConfig {
                sandboxes: vec![sandbox.clone()],
                backlog_per_sandbox: 100,
                live_rate_per_sec: 100.0,
                drop_every_frames: Some(50),
                ..SimConfig::default()
            })
            .await?;
            eprintln!(
                "no MIOSA_API_KEY: tailing {sandbox} on the bundled simulator at {}",
                sim.base_url()
            );
            let client = Client::builder()
                .base_url(sim.base_url())
                .api_key(ApiKey::new(sim.api_key()))
                .build()?;
            (client, Some(300), Some(sim))
        }
    };

    let mut tail = client.sandbox(sandbox.as_str()).audit().tail(TailOptions {
        start: StartAt::Earliest,
        poll_interval: Duration::from_secs(2),
        ..TailOptions::default()
    });
    let mut count = 0usize;
    while let Some(item) = tail.next().await {
        match item {
            Ok(event) => {
                println!("{}", event.json());
                count += 1;
                if limit.is_some_and(|l| count >= l) {
                    break;
                }
            }
            // A frame that is not an event: report it, the stream goes on.
            Err(e @ Error::Decode { .. }) => eprintln!("skipped: {e}"),
            Err(e) => return Err(e.into()),
        }
    }
    eprintln!(
        "{count} events, each once; last transport: {:?}",
        tail.transport()
    );
    Ok(())
}
