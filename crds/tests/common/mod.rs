//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use serde_json::Value;

/// Where the shared cases live (see [`tortie_crds::cases::shared_cases_dir`]).
pub fn cases_dir() -> PathBuf {
    tortie_crds::cases::shared_cases_dir().unwrap_or_else(|e| panic!("{e}"))
}

/// The shared case file `name` as a JSON array.
pub fn load_cases(name: &str) -> Vec<Value> {
    let value = tortie_crds::cases::load_shared_cases(name).unwrap_or_else(|e| panic!("{e}"));
    match value {
        Value::Array(cases) => cases,
        other => panic!("{name} is not a JSON array of cases: {other}"),
    }
}
