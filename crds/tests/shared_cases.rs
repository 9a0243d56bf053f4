//! Every case in the shared `validation.json`, of every kind, gets the verdict it states
//! from Tortie's Rust validation, and every rejection names a field of the spec.

mod common;

use tortie_crds::cases::validate_value;

#[test]
fn shared_validation_cases_get_their_verdicts() {
    let cases = common::load_cases("validation.json");

    let mut wrong = Vec::new();
    for case in &cases {
        let kind = case["kind"].as_str().expect("every case has a kind");
        let want_valid = case["valid"]
            .as_bool()
            .expect("every case says valid or not");
        let Some(result) = validate_value(kind, &case["spec"]) else {
            wrong.push(format!("{kind}: a kind Tortie cannot check"));
            continue;
        };
        match (&result, want_valid) {
            (Ok(()), true) => {}
            (Err(errors), false) => {
                // A bare value (a protocol) is its own field; anything with fields names one.
                let bare = !case["spec"].is_object();
                let named = bare || errors.0.iter().all(|e| !e.field.as_str().is_empty());
                assert!(
                    named,
                    "{kind} {}: an error names no field: {errors}",
                    case["spec"]
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
    assert!(!cases.is_empty(), "validation.json holds no cases");
    assert!(
        wrong.is_empty(),
        "{} of {} cases got the wrong verdict:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}
