//! Logging to a file: stdout belongs to the CNI protocol.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Mutex;

use tracing::Level;

use super::config::{DEFAULT_LOG_FILE, NetworkConfig};

/// Sends this process's logs to the configured file (stderr if it cannot be opened).
pub fn init(config: &NetworkConfig) {
    let level = config
        .log_level
        .as_deref()
        .and_then(|level| level.parse::<Level>().ok())
        .unwrap_or(Level::INFO);
    let path = config
        .log_file
        .as_deref()
        .unwrap_or(Path::new(DEFAULT_LOG_FILE));

    let file = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| OpenOptions::new().create(true).append(true).open(path));

    let builder = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(level)
        .with_target(false);
    let installed = match file {
        Ok(file) => builder.with_writer(Mutex::new(file)).try_init(),
        Err(error) => {
            eprintln!(
                "tortie-cni: cannot open log file {}: {error}; logging to stderr",
                path.display()
            );
            builder.with_writer(std::io::stderr).try_init()
        }
    };
    // A subscriber is already set only when the library runs twice in one process
    // (tests); the first one keeps logging.
    drop(installed);
}
