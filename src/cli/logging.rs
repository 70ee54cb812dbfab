//! Logs on stderr, human or JSON, with every known secret removed.

use std::io::IsTerminal;

use super::args::LogFormat;

/// Writes log lines to stderr with every known key and `token=` value removed. The fmt layer
/// writes each event with one `write` call, so a secret is never split across two calls.
struct RedactingStderr;

impl std::io::Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = auditship::secret::redact_all(&String::from_utf8_lossy(buf));
        std::io::stderr().write_all(text.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Install the process's log subscriber: `level` (or `RUST_LOG`) filters, `format` shapes.
pub fn init(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // The HTTP and socket libraries are noisy below info and print request lines; our own
    // events say what matters. (The writer redacts secrets even if someone turns them on.)
    let filter = [
        "tungstenite=info",
        "tokio_tungstenite=info",
        "hyper=info",
        "hyper_util=info",
        "reqwest=info",
        "h2=info",
        "rustls=info",
    ]
    .iter()
    .filter_map(|d| d.parse().ok())
    .fold(filter, |f, d| f.add_directive(d));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| RedactingStderr)
        .with_target(false);
    match format {
        LogFormat::Human => builder
            .compact()
            .with_ansi(std::io::stderr().is_terminal())
            .init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
