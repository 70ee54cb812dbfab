//! The list endpoint's filters.

/// Filters of the list endpoint. All optional; `None` leaves a parameter out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    /// Events of one resource (set for you by [`SandboxAudit`](crate::SandboxAudit)).
    pub resource_id: Option<String>,
    /// `sandbox` (set for you by [`SandboxAudit`](crate::SandboxAudit)).
    pub resource_type: Option<String>,
    /// Destination host.
    pub host: Option<String>,
    /// `allow`, `reject`, `stub`, `error`, `client_cancel`…
    pub action: Option<String>,
    /// Inclusive lower bound: an RFC 3339 time (or a relative string like `24h`, passed through).
    pub since: Option<String>,
    /// Upper bound, RFC 3339, inclusive: an event whose cursor time is exactly `until` is in the
    /// window. (The API's docs do not say; the bundled simulator and the shipper's backfill
    /// windows treat it so, and the client passes the bound through for the server to apply.)
    pub until: Option<String>,
    /// Page size (the API's maximum is 100). `None` sends none: the server's default (20 in
    /// the API reference) applies to [`SandboxAudit::list`](crate::SandboxAudit::list); `list_all`, `list_from` and tails
    /// ask for 100.
    pub limit: Option<u32>,
    /// A `next_cursor` from an earlier page.
    pub cursor: Option<String>,
    /// Caller-supplied user id.
    pub external_user_id: Option<String>,
    /// Caller-supplied workspace id.
    pub external_workspace_id: Option<String>,
}

impl Filters {
    pub(crate) fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        let fields: [(&'static str, &Option<String>); 9] = [
            ("resource_id", &self.resource_id),
            ("resource_type", &self.resource_type),
            ("host", &self.host),
            ("action", &self.action),
            ("since", &self.since),
            ("until", &self.until),
            ("cursor", &self.cursor),
            ("external_user_id", &self.external_user_id),
            ("external_workspace_id", &self.external_workspace_id),
        ];
        for (name, value) in fields {
            if let Some(v) = value {
                q.push((name, v.clone()));
            }
        }
        if let Some(limit) = self.limit {
            q.push(("limit", limit.to_string()));
        }
        q
    }
}
