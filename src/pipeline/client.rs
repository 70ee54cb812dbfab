//! The Miosa API client a pipeline file describes.

use crate::client::Client;
use crate::config::PipelineConfig;
use crate::secret::ApiKey;

use super::PipelineError;

/// Build the API client of a pipeline.
pub fn client_for(p: &PipelineConfig) -> Result<Client, PipelineError> {
    let key: ApiKey = p.api_key.clone().ok_or_else(|| {
        PipelineError::Config(format!(
            "{}: no API key; set api_key = \"${{MIOSA_API_KEY}}\" in [source] and export the variable",
            p.file.display()
        ))
    })?;
    let mut b = Client::builder()
        .base_url(&p.base_url)
        .api_key(key)
        .requests_per_minute(p.requests_per_minute)
        .timeout(p.request_timeout)
        .connect_timeout(p.connect_timeout)
        .max_response_bytes(p.max_response_bytes)
        .observer(std::sync::Arc::new(crate::metrics::ClientMetrics));
    if let Some(t) = &p.tenant {
        b = b.tenant(t);
    }
    if let Some(ca) = &p.tls.ca_file {
        b = b.ca_file(ca);
    }
    // The builder refuses cleartext to another machine unless allowed; when it is allowed and
    // used, every start says so.
    let cleartext =
        url::Url::parse(&p.base_url).is_ok_and(|u| u.scheme() == "http" && !crate::client::is_loopback(&u));
    if p.allow_insecure_http && cleartext {
        tracing::warn!(
            pipeline = %p.name,
            base_url = %p.base_url,
            "the API key crosses the network in cleartext (http://, allow_insecure_http = true): anyone on the path can read it; use https://"
        );
    }
    b = b.allow_insecure_http(p.allow_insecure_http);
    if p.tls.insecure_skip_verify {
        tracing::warn!(
            pipeline = %p.name,
            "TLS certificate verification is OFF (tls_insecure_skip_verify = true): anyone between auditship and the API can read the key; use tls_ca_file instead"
        );
        b = b.danger_accept_invalid_certs(true);
    }
    Ok(b.build()?)
}
