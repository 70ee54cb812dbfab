//! `auditship sim`: the bundled simulator, standalone.

use anyhow::Context as _;
use auditship::sim::{ListShape, SimConfig, Simulator};

use super::demo::DEMO_SANDBOXES;
use super::exit::{Code, CommandResult};
use super::shutdown_signal;

/// `auditship sim`'s flags: the simulator's knobs.
#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Number of sandboxes (sb-1 … sb-N). Default: the five of pipelines/demo.toml.
    #[arg(long)]
    sandboxes: Option<usize>,
    /// Explicit sandbox ids (repeatable; replaces --sandboxes).
    #[arg(long = "sandbox")]
    ids: Vec<String>,
    /// Past events per sandbox.
    #[arg(long, default_value_t = 1000)]
    backlog: usize,
    /// Live events per second per sandbox.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Stop live events after this many per sandbox.
    #[arg(long)]
    live_events: Option<u64>,
    /// Sandboxes whose socket answers 404 (repeatable).
    #[arg(long)]
    no_socket: Vec<String>,
    /// Close sockets after this many frames.
    #[arg(long)]
    drop_every: Option<u64>,
    /// Share of requests answered 429.
    #[arg(long, default_value_t = 0.0)]
    ratio_429: f64,
    /// Share of requests answered 5xx.
    #[arg(long, default_value_t = 0.0)]
    ratio_5xx: f64,
    /// Share of socket frames preceded by garbage.
    #[arg(long, default_value_t = 0.0)]
    garbage: f64,
    /// Precede every Nth frame sent with one over the 1 MiB cap.
    #[arg(long)]
    oversize_every: Option<u64>,
    /// Refuse every Nth socket handshake with a 503.
    #[arg(long)]
    refuse_every_handshakes: Option<u64>,
    /// Answer every list and get request this many milliseconds late.
    #[arg(long, default_value_t = 0)]
    slow_response_ms: u64,
    /// Every Nth list response sends half its body, then hangs.
    #[arg(long)]
    hang_every_lists: Option<u64>,
    /// Events per shared timestamp.
    #[arg(long, default_value_t = 1)]
    ties: usize,
    /// List response shape.
    #[arg(long, value_enum, default_value_t = ListShape::Mixed)]
    list_shape: ListShape,
    /// Every Nth event carries a bearer key in metadata.authorization and a token= in its path
    /// (to try redaction).
    #[arg(long)]
    secret_every: Option<u64>,
    /// API key clients must send (default: msk_sim_demo_key).
    #[arg(long, env = "MIOSA_SIM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Fast mode (benchmarks): render the --live-events of every sandbox up front and push them
    /// to its socket as fast as it reads (one socket per sandbox; --rate is ignored).
    #[arg(long, requires = "live_events")]
    fast: bool,
    /// Send every frame as a plain text event (default: every frame style in turn).
    #[arg(long)]
    plain_frames: bool,
}

/// `auditship sim`: serve until SIGTERM or Ctrl-C.
pub async fn sim(args: SimArgs) -> CommandResult {
    let sandboxes = match (args.ids.is_empty(), args.sandboxes) {
        (false, _) => args.ids,
        (true, Some(n)) => (1..=n).map(|i| format!("sb-{i}")).collect(),
        (true, None) => DEMO_SANDBOXES.iter().map(|s| s.to_string()).collect(),
    };
    let mut config = SimConfig {
        port: args.port,
        sandboxes,
        backlog_per_sandbox: args.backlog,
        live_rate_per_sec: args.rate,
        live_events_per_sandbox: args.live_events,
        no_socket: args.no_socket,
        drop_every_frames: args.drop_every,
        ratio_429: args.ratio_429,
        ratio_5xx: args.ratio_5xx,
        garbage_ratio: args.garbage,
        oversize_every_frames: args.oversize_every,
        refuse_every_handshakes: args.refuse_every_handshakes,
        slow_response_ms: args.slow_response_ms,
        hang_every_lists: args.hang_every_lists,
        ties: args.ties.max(1),
        list_shape: args.list_shape,
        secret_every_events: args.secret_every,
        burst: args.fast,
        mixed_frames: !args.plain_frames,
        ..SimConfig::default()
    };
    if let Some(k) = args.api_key {
        config.api_key = k;
    }
    let sim = Simulator::start(config.clone())
        .await
        .with_context(|| format!("starting the simulator on 127.0.0.1:{}", args.port))?;
    println!("Miosa simulator serving {} sandbox(es)", config.sandboxes.len());
    println!("  base_url = \"{}\"", sim.base_url());
    println!("  sandboxes = {:?}", config.sandboxes);
    println!("  key: the simulator accepts the key in MIOSA_SIM_API_KEY (default msk_sim_demo_key)");
    println!("Ctrl-C stops it.");
    shutdown_signal().cancelled().await;
    sim.stop();
    Ok(Code::Ok)
}
