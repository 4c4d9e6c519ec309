//! Black-box tests: each starts the real `neko` binary with real plugin processes and speaks to
//! it over HTTP (and, for the forged-frame test, raw ZeroMQ).

mod helper;

mod bad_input;
mod chaos;
mod config;
mod gateway;
mod limits;
mod logs;
mod message_plane;
mod metrics;
mod plugin_calls;
mod plugins;
mod python;
mod run_features;
mod runs;
mod supervision;
mod websockets;
