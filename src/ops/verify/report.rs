//! A report as text, and compared with the API (`--against-api`).

use super::*;

impl Report {
    /// Compare the archive's events per sandbox and hour with what the list endpoint returns
    /// for the same span, after the pipeline's transforms and `sink`'s route, and name the hours
    /// that differ. A sandbox's span runs from its first archived cursor time to its last, or
    /// to `shipped_until` (the checkpoint's newest cursor time) when that is later, so events
    /// removed from the end show too.
    pub async fn compare_with_api(
        &mut self,
        p: &crate::config::PipelineConfig,
        sink: Option<&str>,
        shipped_until: &BTreeMap<String, i64>,
    ) -> Result<(), crate::pipeline::PipelineError> {
        for (rid, (_, to)) in self.spans_us.iter_mut() {
            if let Some(t) = shipped_until.get(rid) {
                *to = (*to).max(*t);
            }
        }
        let client = crate::pipeline::client_for(p)?;
        let route = sink.and_then(|s| p.routes.get(s)).cloned().unwrap_or_default();
        let mut pipeline_transformer = p.transforms.start();
        let mut sink_transformer = route.transforms.start();
        let mut api: BTreeMap<(String, i64), u64> = BTreeMap::new();
        for (rid, (from, to)) in &self.spans_us {
            let listed = crate::source::list_window(&client, rid, *from, *to, p.page_limit)
                .await
                .map_err(|source| crate::pipeline::PipelineError::Source {
                    resource_id: rid.clone(),
                    source,
                })?;
            for event in listed {
                let Some(cursor) = event.cursor_us.filter(|c| (*from..=*to).contains(c)) else {
                    continue;
                };
                let first = route
                    .pipeline_transforms
                    .then(|| pipeline_transformer.apply(&event));
                let outcome =
                    crate::transform::route::for_sink(&event, first.as_ref(), &mut sink_transformer);
                if !matches!(outcome, (_, crate::transform::Outcome::Keep(_))) {
                    continue;
                }
                *api.entry((rid.clone(), crate::store::hour_of(cursor)))
                    .or_default() += 1;
            }
        }
        let mut keys: std::collections::BTreeSet<&(String, i64)> = api.keys().collect();
        keys.extend(self.hour_counts.keys());
        let mut diffs = Vec::new();
        for key in &keys {
            let (a, h) = (
                api.get(*key).copied().unwrap_or(0),
                self.hour_counts.get(*key).copied().unwrap_or(0),
            );
            if a != h {
                diffs.push(Finding {
                    kind: Kind::ApiMismatch,
                    object: None,
                    detail: format!(
                        "sandbox {:?}, hour {}: the API holds {a} events, the archive {h}",
                        key.0,
                        crate::client::format_time(key.1)
                    ),
                });
            }
        }
        self.api_hours_compared = Some(keys.len());
        if !diffs.is_empty() {
            self.clean = false;
            self.findings.extend(diffs);
        }
        Ok(())
    }

    /// The report for a person.
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let problems = self.findings.len() as u64 + self.findings_not_shown.values().sum::<u64>();
        let _ = writeln!(
            s,
            "auditship verify {}: {}",
            self.root,
            if self.clean {
                "CLEAN".to_string()
            } else {
                format!(
                    "NOT CLEAN ({problems} problem{})",
                    if problems == 1 { "" } else { "s" }
                )
            }
        );
        let _ = writeln!(
            s,
            "  read {} manifest{}, {} entries, {} units, {} events, {} bytes",
            self.manifests,
            if self.manifests == 1 { "" } else { "s" },
            self.entries,
            self.units,
            self.events,
            self.bytes
        );
        for c in &self.chains {
            let _ = writeln!(
                s,
                "  chain {}/{}: {} entries (seq {}–{}){}",
                c.pipeline,
                c.sink,
                c.entries,
                c.first_seq,
                c.last_seq,
                if c.signed { ", signed" } else { ", unsigned" }
            );
        }
        for d in &self.digest_chains {
            let _ = writeln!(
                s,
                "  digests {}/{}: {} signed (seq 1–{}), entries through {}, through {}{}",
                d.pipeline,
                d.sink,
                d.digests,
                d.last_seq,
                d.entries_through,
                d.through,
                if d.stopped {
                    " (the pipeline stopped there)"
                } else {
                    ""
                }
            );
        }
        if let Some(n) = self.api_hours_compared {
            let _ = writeln!(s, "  compared {n} sandbox-hours with the API");
        }
        for x in &self.findings {
            let _ = match &x.object {
                Some(o) => writeln!(s, "  {:<16} {o}: {}", x.kind.label(), x.detail),
                None => writeln!(s, "  {:<16} {}", x.kind.label(), x.detail),
            };
        }
        for (kind, n) in &self.findings_not_shown {
            let _ = writeln!(s, "  … and {n} more of kind {kind}");
        }
        for n in &self.notes {
            let _ = writeln!(s, "  note: {n}");
        }
        s
    }
}
