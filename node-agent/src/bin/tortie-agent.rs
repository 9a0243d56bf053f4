#![forbid(unsafe_code)]

fn main() {
    eprintln!("tortie-agent {}", env!("CARGO_PKG_VERSION"));
}
