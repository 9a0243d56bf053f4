//! Every case of this crate's kinds in the shared `validation.json` gets the verdict it
//! states.

mod common;

use serde_json::Value;
use tortie_crds::cases::validate_value;

#[test]
fn shared_validation_cases_get_their_verdicts() {
    let path = common::cases_dir().join("validation.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read the shared cases at {}: {e}; set TORTIE_CASES_DIR to the directory \
             holding validation.json",
            path.display()
        )
    });
    let cases: Vec<Value> = serde_json::from_str(&text).expect("validation.json is a JSON array");

    let mut checked = 0;
    let mut wrong = Vec::new();
    for case in &cases {
        let kind = case["kind"].as_str().expect("every case has a kind");
        let Some(result) = validate_value(kind, &case["spec"]) else {
            continue;
        };
        checked += 1;
        let want_valid = case["valid"]
            .as_bool()
            .expect("every case says valid or not");
        let result = common::verdict(result);
        match (&result, want_valid) {
            (Ok(()), true) => {}
            (Err(errors), false) => {
                assert!(
                    errors
                        .0
                        .iter()
                        .all(|e| e.field.as_str().starts_with("spec")),
                    "errors must name a field of the spec: {errors}"
                );
            }
            _ => wrong.push(format!(
                "{kind} {} (why: {}): expected {}, got {result:?}",
                case["spec"],
                case["why"],
                if want_valid { "valid" } else { "invalid" }
            )),
        }
    }
    assert!(
        checked >= 18,
        "only {checked} cases were of this crate's kinds"
    );
    assert!(
        wrong.is_empty(),
        "{} wrong verdicts:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
