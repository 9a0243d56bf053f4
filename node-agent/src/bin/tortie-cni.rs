//! The CNI plugin binary: the runtime's environment and stdio, handed to the library.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let env = std::env::vars().collect();
    let code = tortie_node_agent::cni::run(&env, &mut std::io::stdin(), &mut std::io::stdout());
    ExitCode::from(code)
}
