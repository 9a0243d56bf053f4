#![forbid(unsafe_code)]

fn main() {
    eprintln!("tortie-operator {}", env!("CARGO_PKG_VERSION"));
}
