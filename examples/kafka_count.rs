//! Count (and check) what a topic holds: `kafka_count BROKERS TOPIC [EXPECTED]`.
//!
//! Reads every partition from the beginning with `assign()` and prints the number of messages,
//! distinct `event_id` headers, and whether every sandbox's messages sit in one partition. Used by
//! `benches/kafka.sh` to check that a measured run delivered everything.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(brokers), Some(topic)) = (args.get(1), args.get(2)) else {
        return Err("usage: kafka_count BROKERS TOPIC [EXPECTED]".into());
    };
    let want: usize = args.get(3).and_then(|n| n.parse().ok()).unwrap_or(usize::MAX);
    let records = auditship_sink_kafka::testing::read_topic(brokers, topic, want, Duration::from_secs(5))?;
    let ids: HashSet<String> = records.iter().filter_map(|r| r.header("event_id")).collect();
    let mut partitions: HashMap<String, HashSet<i32>> = HashMap::new();
    for r in &records {
        if let Some(rid) = r.header("resource_id") {
            partitions.entry(rid).or_default().insert(r.partition);
        }
    }
    let split = partitions.values().filter(|p| p.len() > 1).count();
    println!(
        "{} messages, {} distinct event ids, {} sandboxes, {} split across partitions",
        records.len(),
        ids.len(),
        partitions.len(),
        split
    );
    Ok(())
}
