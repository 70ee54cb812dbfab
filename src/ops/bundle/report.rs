//! A bundle's check, as text for a person.

use super::*;

impl BundleReport {
    /// The report for a person; `name` is the bundle as given.
    pub fn to_text(&self, name: &str) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "auditship verify-export {name}: {}",
            if self.clean {
                "CLEAN".to_string()
            } else {
                format!("NOT CLEAN ({} problems)", self.findings.len())
            }
        );
        if let Some(info) = &self.info {
            let sel = &info.selection;
            let time = |t: Option<i64>| t.map_or("-".to_string(), crate::client::format_time);
            let _ = writeln!(
                s,
                "  cut from {} at {}; selection: sandboxes {}, from {} until {}",
                info.source,
                info.created_at,
                if sel.sandboxes.is_empty() {
                    "all".to_string()
                } else {
                    sel.sandboxes.join(", ")
                },
                time(sel.since_us),
                time(sel.until_us)
            );
        }
        let _ = writeln!(
            s,
            "  key {}{}; read {} digests, {} manifest entries, {} stretches ({} events)",
            self.key,
            if self.key_from_bundle {
                " (from the bundle)"
            } else {
                ""
            },
            self.digests,
            self.entries,
            self.stretches,
            self.events_in_stretches
        );
        for (rid, e) in &self.selected {
            let _ = writeln!(
                s,
                "  sandbox {rid}: {} events proven, {} ({}) to {} ({})",
                e.events,
                e.first_id,
                e.first_time.as_deref().unwrap_or("-"),
                e.last_id,
                e.last_time.as_deref().unwrap_or("-")
            );
        }
        for f in &self.findings {
            let label = f.kind.label();
            let _ = match &f.object {
                Some(o) => writeln!(s, "  {label:<16} {o}: {}", f.detail),
                None => writeln!(s, "  {label:<16} {}", f.detail),
            };
        }
        for n in &self.notes {
            let _ = writeln!(s, "  note: {n}");
        }
        s
    }
}
