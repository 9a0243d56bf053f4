//! The IPAM plugin binary, for main plugins other than tortie-cni to chain: the
//! runtime's environment and stdio, handed to the library.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let env = std::env::vars().collect();
    let code =
        tortie_node_agent::cni::run_ipam(&env, &mut std::io::stdin(), &mut std::io::stdout());
    ExitCode::from(code)
}
