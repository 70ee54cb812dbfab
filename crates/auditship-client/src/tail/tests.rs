//! The tail's parts in unit tests.

use super::*;

fn event(id: &str, inserted_at: Option<&str>, timestamp: Option<&str>) -> AuditEvent {
    let mut json = format!(r#"{{"id":"{id}","resource_id":"sb-1""#);
    if let Some(t) = inserted_at {
        json += &format!(r#","inserted_at":"{t}""#);
    }
    if let Some(t) = timestamp {
        json += &format!(r#","timestamp":"{t}""#);
    }
    json += "}";
    AuditEvent::from_json(json).unwrap()
}

fn at(second: u32) -> String {
    format!("2026-11-26T10:00:{second:02}Z")
}

#[test]
fn repeats_are_caught_whether_their_first_copy_was_logged_or_hashed() {
    let mut seen = Seen::new(&StartAt::Earliest, Duration::from_secs(300));
    // An in-order stream: all logged, none hashed.
    for s in 0..10 {
        assert!(seen.insert(&event(&format!("e{s}"), Some(&at(s)), None)));
    }
    assert_eq!((seen.log.len(), seen.ids.len()), (10, 0));
    assert_eq!(seen.since().as_deref(), Some(at(9).as_str()));
    // A repeat (at its own, older cursor time) is found in the log, which stays a log.
    assert!(!seen.insert(&event("e3", Some(&at(3)), None)));
    assert_eq!((seen.log.len(), seen.ids.len()), (10, 0));
    // So are the oldest and the newest logged; a new id at a logged time is new, once.
    assert!(!seen.insert(&event("e0", Some(&at(0)), None)));
    assert!(!seen.insert(&event("e9", Some(&at(9)), None)));
    assert!(seen.insert(&event("e3b", Some(&at(3)), None)));
    assert!(!seen.insert(&event("e3b", Some(&at(3)), None)));
    assert_eq!((seen.log.len(), seen.ids.len()), (10, 1));
    // A repeat of the newest (same cursor time) too, and a new id at that time is new.
    assert!(seen.insert(&event("e10", Some(&at(10)), None)));
    assert!(!seen.insert(&event("e10", Some(&at(10)), None)));
    assert!(seen.insert(&event("e10b", Some(&at(10)), None)));
    assert!(!seen.insert(&event("e10b", Some(&at(10)), None)));
    // An older event never seen is new, once.
    assert!(seen.insert(&event("late", Some(&at(1)), None)));
    assert!(!seen.insert(&event("late", Some(&at(1)), None)));
}

#[test]
fn an_event_seen_under_two_cursor_times_is_still_one_event() {
    let mut seen = Seen::new(&StartAt::Earliest, Duration::from_secs(300));
    // A frame without `inserted_at` (cursor: its `timestamp`), then its list copy with an
    // `inserted_at` later than anything seen: newer, yet a repeat.
    assert!(seen.insert(&event("e1", None, Some(&at(1)))));
    assert!(seen.insert(&event("e2", Some(&at(2)), Some(&at(2)))));
    assert!(!seen.insert(&event("e1", Some(&at(5)), Some(&at(1)))));
}

#[test]
fn the_log_is_pruned_to_the_window() {
    let mut seen = Seen::new(&StartAt::Earliest, Duration::from_secs(60));
    let t0 = parse_time("2026-11-26T10:00:00Z").unwrap();
    for i in 0..10_000i64 {
        let t = format_time(t0 + i * 1_000_000);
        assert!(seen.insert(&event(&format!("e{i}"), Some(&t), None)));
    }
    // 10,000 seconds of events; a prune ran at least every 4,096 inserts, so at most the
    // last window plus 4,096 remain, and the newest are among them.
    assert!(seen.log.len() <= 61 + 4096, "{}", seen.log.len());
    let newest = format_time(t0 + 9_999 * 1_000_000);
    assert!(!seen.insert(&event("e9999", Some(&newest), None)));
}
