//! Integration tests: the pipeline, the binary and the client against the bundled simulator
//! over real TCP and real WebSockets, with real SQLite files. One test binary (ripgrep's
//! layout) so the workspace links once.

mod client;
mod config;
mod process;
mod shipping;
mod util;
