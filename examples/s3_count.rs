//! Count (and check) what a bucket holds: `s3_count ENDPOINT BUCKET`.
//!
//! Lists and reads every object (path-style, credentials from the AWS chain), decompresses it,
//! and prints the number of objects, events and distinct event ids, and how many objects carry a
//! SHA-256 checksum that matches their body. Used by `benches/s3.sh`.

use std::collections::HashSet;

#[tokio::main]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(endpoint), Some(bucket)) = (args.get(1), args.get(2)) else {
        return Err("usage: s3_count ENDPOINT BUCKET".into());
    };
    let client = auditship_sink_s3::testing::client(endpoint).await;
    let objects = auditship_sink_s3::testing::read_all(&client, bucket).await?;
    let mut events = 0usize;
    let mut ids = HashSet::new();
    let mut checked = 0usize;
    for o in &objects {
        for line in auditship_sink_s3::testing::lines(&o.key, &o.body)? {
            events += 1;
            let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| e.to_string())?;
            ids.insert(v["id"].as_str().unwrap_or_default().to_string());
        }
        if o.checksum_sha256.as_deref() == Some(auditship_sink_s3::sha256_base64(&o.body).as_str()) {
            checked += 1;
        }
    }
    println!(
        "{} objects, {events} events, {} distinct event ids, {checked} objects with a matching SHA-256",
        objects.len(),
        ids.len()
    );
    Ok(())
}
