//! The selector language from the outside: the shared case file, then the project's own
//! cases for every operator, quoting, precedence, negation, absent labels and the
//! positions parse errors report.

mod common;

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use tortie_crds::selector::{Labeled, MAX_NESTING, ParseError, Scoped, Selector};

/// One entry of `selectors.json`: either labels with the expected verdict, or a string
/// that must be refused.
#[derive(Debug, Deserialize)]
struct Case {
    selector: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    matches: Option<bool>,
    #[serde(default)]
    parse_error: bool,
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn parse(input: &str) -> Selector {
    Selector::parse(input).unwrap_or_else(|e| panic!("{input:?} should parse: {e}"))
}

fn parse_error(input: &str) -> ParseError {
    match Selector::parse(input) {
        Ok(selector) => panic!("{input:?} should be refused, parsed as {selector}"),
        Err(error) => error,
    }
}

/// A selector, the labels to match it against, and the expected verdict.
type MatchRow<'a> = (&'a str, &'a [(&'a str, &'a str)], bool);

/// Checks each row, and that the printed form of the selector agrees.
fn check_matches(rows: &[MatchRow]) {
    for (input, pairs, expected) in rows {
        let selector = parse(input);
        let labels = labels(pairs);
        assert_eq!(
            selector.matches(&labels),
            *expected,
            "{input:?} against {labels:?}"
        );
        let reprinted = parse(&selector.to_string());
        assert_eq!(
            reprinted.matches(&labels),
            *expected,
            "printed form {reprinted} of {input:?} against {labels:?}"
        );
    }
}

#[test]
fn shared_cases() {
    let path = common::cases_dir().join("selectors.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let cases: Vec<Case> = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not a list of cases: {e}", path.display()));
    assert!(!cases.is_empty(), "{} holds no cases", path.display());

    for case in &cases {
        if case.parse_error {
            let error = parse_error(&case.selector);
            assert!(error.position <= case.selector.len());
            assert!(!error.message.is_empty());
            continue;
        }
        let expected = case
            .matches
            .unwrap_or_else(|| panic!("case {case:?} has neither matches nor parse_error"));
        let selector = parse(&case.selector);
        assert_eq!(
            selector.matches(&case.labels),
            expected,
            "{:?} against {:?}",
            case.selector,
            case.labels
        );
        assert_eq!(parse(&selector.to_string()), selector);
    }
}

#[test]
fn equality_and_inequality() {
    check_matches(&[
        ("a == 'x'", &[("a", "x")], true),
        ("a == 'x'", &[("a", "X")], false),
        ("a == 'x'", &[("a", "x ")], false),
        ("a == 'x'", &[("b", "x")], false),
        ("a == ''", &[("a", "")], true),
        ("a == ''", &[], false),
        ("a != 'x'", &[("a", "x")], false),
        ("a != 'x'", &[("a", "y")], true),
        // Absent labels are "not equal".
        ("a != 'x'", &[], true),
        ("a != ''", &[], true),
        ("a != ''", &[("a", "")], false),
    ]);
}

#[test]
fn set_membership() {
    check_matches(&[
        ("a in {'x', 'y'}", &[("a", "y")], true),
        ("a in {'x', 'y'}", &[("a", "z")], false),
        ("a in {'x', 'y'}", &[], false),
        ("a in {}", &[("a", "x")], false),
        ("a in {}", &[], false),
        ("a in {'x','x','x'}", &[("a", "x")], true),
        ("a not in {'x', 'y'}", &[("a", "y")], false),
        ("a not in {'x', 'y'}", &[("a", "z")], true),
        // Absent labels are "not in" every set.
        ("a not in {'x', 'y'}", &[], true),
        ("a not in {}", &[], true),
        ("a not in {}", &[("a", "x")], true),
        ("a notin {'x'}", &[("a", "x")], false),
        ("a in{'x'}", &[("a", "x")], true),
    ]);
}

#[test]
fn string_operators() {
    check_matches(&[
        ("a contains 'bc'", &[("a", "abcd")], true),
        ("a contains 'bc'", &[("a", "acbd")], false),
        ("a contains ''", &[("a", "")], true),
        ("a contains ''", &[], false),
        ("a starts with 'ab'", &[("a", "abc")], true),
        ("a starts with 'ab'", &[("a", "cab")], false),
        ("a starts with ''", &[], false),
        ("a ends with 'bc'", &[("a", "abc")], true),
        ("a ends with 'bc'", &[("a", "bca")], false),
        ("a ends with 'bc'", &[("b", "abc")], false),
        ("a startswith 'ab'", &[("a", "abc")], true),
        ("a   ends\twith   'c'", &[("a", "abc")], true),
        ("a contains 'é'", &[("a", "café")], true),
    ]);
}

#[test]
fn has_all_and_global() {
    check_matches(&[
        ("has(a)", &[("a", "")], true),
        ("has(a)", &[("ab", "x")], false),
        ("has( a )", &[("a", "x")], true),
        ("!has(a)", &[], true),
        ("all()", &[], true),
        ("all( )", &[("a", "x")], true),
        ("", &[], true),
        (" \t\n ", &[("a", "x")], true),
        ("!all()", &[], false),
    ]);

    let namespaced = labels(&[("a", "x")]);
    let global = parse("global()");
    assert!(
        !global.matches(&namespaced),
        "label maps count as namespaced"
    );
    assert!(global.matches(&Scoped::global(&namespaced)));
    assert!(!global.matches(&Scoped::namespaced(&namespaced)));

    let hosts_with_a = parse("global() && a == 'x'");
    assert!(hosts_with_a.matches(&Scoped::global(&namespaced)));
    assert!(!hosts_with_a.matches(&Scoped::global(&labels(&[]))));
    assert!(parse("!global()").matches(&namespaced));

    let hash: HashMap<String, String> = namespaced.clone().into_iter().collect();
    assert!(parse("a == 'x'").matches(&hash));
    assert!(!hash.is_global());
}

#[test]
fn keys_named_like_keywords_are_keys() {
    check_matches(&[
        ("all == 'x'", &[("all", "x")], true),
        ("has == 'x'", &[("has", "x")], true),
        ("global in {'x'}", &[("global", "x")], true),
        ("in == 'x'", &[("in", "x")], true),
        ("not != 'x'", &[("not", "y")], true),
        ("has(has)", &[("has", "")], true),
        (
            "has(all) && has(global)",
            &[("all", ""), ("global", "")],
            true,
        ),
    ]);
}

#[test]
fn label_keys_with_prefixes_and_punctuation() {
    check_matches(&[
        (
            "calico/k8s_NS-.1/role == 'db'",
            &[("calico/k8s_NS-.1/role", "db")],
            true,
        ),
        (
            "projectcalico.org/namespace == 'default'",
            &[("projectcalico.org/namespace", "default")],
            true,
        ),
        (
            "has(kubernetes.io/metadata.name)",
            &[("kubernetes.io/metadata.name", "x")],
            true,
        ),
        ("has(calico/k8s_ns/role)", &[("calico/k8s_ns", "x")], false),
        ("1a == 'x'", &[("1a", "x")], true),
        ("a.b-c_d == 'x'", &[("a.b-c_d", "x")], true),
    ]);
}

#[test]
fn quoting() {
    check_matches(&[
        ("a == \"x\"", &[("a", "x")], true),
        ("a == 'it\"s'", &[("a", "it\"s")], true),
        ("a == \"it's\"", &[("a", "it's")], true),
        ("a == 'x && y'", &[("a", "x && y")], true),
        ("a == ')'", &[("a", ")")], true),
        ("a in {\"'\", '\"'}", &[("a", "\"")], true),
        ("a == '  spaced  '", &[("a", "  spaced  ")], true),
        ("a == \"\\\"", &[("a", "\\")], true),
    ]);
    assert_eq!(parse("a == 'x'"), parse("a == \"x\""));
}

#[test]
fn and_binds_tighter_than_or() {
    let rows: &[MatchRow] = &[
        // a || (b && c)
        ("has(a) || has(b) && has(c)", &[("a", "")], true),
        ("has(a) || has(b) && has(c)", &[("b", "")], false),
        ("has(a) || has(b) && has(c)", &[("b", ""), ("c", "")], true),
        // (a && b) || c
        ("has(a) && has(b) || has(c)", &[("c", "")], true),
        ("has(a) && has(b) || has(c)", &[("a", "")], false),
        // Parentheses override.
        ("(has(a) || has(b)) && has(c)", &[("a", "")], false),
        (
            "(has(a) || has(b)) && has(c)",
            &[("a", ""), ("c", "")],
            true,
        ),
        (
            "has(a) && (has(b) || has(c))",
            &[("a", ""), ("c", "")],
            true,
        ),
        ("((((has(a)))))", &[("a", "")], true),
    ];
    check_matches(rows);
    assert_eq!(
        parse("has(a) || has(b) && has(c)"),
        parse("has(a) || (has(b) && has(c))")
    );
    assert_ne!(
        parse("has(a) || has(b) && has(c)"),
        parse("(has(a) || has(b)) && has(c)")
    );
}

#[test]
fn negation_applies_to_the_next_term() {
    check_matches(&[
        ("!a == 'x'", &[("a", "x")], false),
        ("!a == 'x'", &[], true),
        ("!a == 'x' && has(b)", &[("b", "")], true),
        ("!a == 'x' && has(b)", &[], false),
        ("!(has(a) || has(b))", &[("b", "")], false),
        ("!(has(a) || has(b))", &[], true),
        ("!has(a) || has(b)", &[("a", ""), ("b", "")], true),
        ("!!has(a)", &[("a", "")], true),
        ("! ! ! has(a)", &[("a", "")], false),
        ("!a in {'x'}", &[("a", "y")], true),
        ("!a not in {'x'}", &[], false),
        ("!a != 'x'", &[], false),
        ("!a contains 'x'", &[], true),
    ]);
    assert_eq!(parse("!a == 'x'"), parse("!(a == 'x')"));
}

#[test]
fn whitespace_is_optional_between_tokens() {
    let spaced = parse("( a == 'x' ) && ( b in { 'y' , 'z' } ) || ! has( c )");
    let tight = parse("(a=='x')&&(b in{'y','z'})||!has(c)");
    let newlines = parse("\n(a\t==\n'x')\r\n&&\n(b in {'z','y'})\n||\n!has(c)\n");
    assert_eq!(spaced, tight);
    assert_eq!(spaced, newlines);
}

#[test]
fn canonical_form() {
    let rows = [
        ("", "all()"),
        ("all()", "all()"),
        ("global( )", "global()"),
        ("a=='x'", "a == \"x\""),
        ("a == 'say \"hi\"'", "a == 'say \"hi\"'"),
        ("a!='x'", "a != \"x\""),
        ("a  in  {'y','x','y'}", "a in {\"x\", \"y\"}"),
        ("a not   in {}", "a not in {}"),
        ("a startswith 'x'", "a starts with \"x\""),
        ("a ends   with 'x'", "a ends with \"x\""),
        ("a contains 'x'", "a contains \"x\""),
        ("has( a )", "has(a)"),
        ("!has(a)", "!has(a)"),
        ("!a=='x'", "!(a == \"x\")"),
        (
            "((has(a) && has(b)) && has(c))",
            "has(a) && has(b) && has(c)",
        ),
        ("has(a) || (has(b) && has(c))", "has(a) || has(b) && has(c)"),
        (
            "(has(a) || has(b)) && has(c)",
            "(has(a) || has(b)) && has(c)",
        ),
        ("!(has(a) && has(b))", "!(has(a) && has(b))"),
        (
            "(has(a) || has(b)) || (has(c))",
            "has(a) || has(b) || has(c)",
        ),
    ];
    for (input, canonical) in rows {
        let printed = parse(input).to_string();
        assert_eq!(printed, canonical, "canonical form of {input:?}");
        assert_eq!(
            parse(&printed).to_string(),
            printed,
            "{printed:?} is a fixpoint"
        );
    }
}

#[test]
fn is_all_and_label_keys() {
    assert!(parse("").is_all());
    assert!(parse("  all()  ").is_all());
    assert!(parse("(all())").is_all());
    assert!(Selector::default().is_all());
    assert!(!parse("!all()").is_all());
    assert!(!parse("global()").is_all());
    assert!(!parse("all() && has(a)").is_all());

    let selector = parse("a == 'x' || !has(b/c) && (d in {'1'} || a not in {}) && global()");
    let keys: Vec<&str> = selector.label_keys().into_iter().collect();
    assert_eq!(keys, ["a", "b/c", "d"]);
    assert!(parse("all() || global()").label_keys().is_empty());
}

#[test]
fn serde_uses_the_printed_form() {
    let selector: Selector = serde_json::from_str("\"a=='x'\"").expect("a valid selector");
    assert_eq!(selector, parse("a == 'x'"));
    assert_eq!(
        serde_json::to_string(&selector).expect("selectors serialise"),
        "\"a == \\\"x\\\"\""
    );
    let error = serde_json::from_str::<Selector>("\"a = 'x'\"").expect_err("invalid");
    assert!(error.to_string().contains("at position 2"), "{error}");
    assert_eq!("has(a)".parse::<Selector>(), Ok(parse("has(a)")));
}

#[test]
fn errors_say_where_and_what() {
    // (input, byte position, part of the message)
    let rows = [
        ("has(", 4, "expected a label key after 'has('"),
        ("has()", 4, "expected a label key after 'has('"),
        ("has(a", 5, "expected ')' after the label key in 'has(a'"),
        ("has(a b)", 6, "expected ')'"),
        ("a == 'x", 5, "unterminated string"),
        ("a in {\"x\", \"y}", 11, "unterminated string"),
        ("'FOO", 0, "label keys are written without quotes"),
        ("a == 'x' && %", 12, "expected a label key, '!', '('"),
        ("has(foo) &&", 11, "found end of selector"),
        (
            "foo == \"bar\" |",
            13,
            "expected '&&', '||' or end of selector",
        ),
        (
            "has(a) & has(b)",
            7,
            "expected '&&', '||' or end of selector",
        ),
        ("has(a) has(b)", 7, "expected '&&', '||' or end of selector"),
        (")", 0, "expected a label key"),
        ("()", 1, "expected a label key"),
        ("(has(a)", 7, "')' to close the '(' at position 0"),
        (
            "(has(a) || (has(b)",
            18,
            "')' to close the '(' at position 11",
        ),
        ("a b", 2, "expected an operator after label key 'a'"),
        ("a", 1, "expected an operator after label key 'a'"),
        ("a = 'x'", 2, "equality is written '=='"),
        ("a 'x'", 2, "put an operator between the key and the value"),
        ("b == b", 5, "expected a quoted string after '=='"),
        (
            "b ends with b",
            12,
            "expected a quoted string after 'ends with'",
        ),
        (
            "b contains",
            10,
            "expected a quoted string after 'contains'",
        ),
        (
            "foo in \"\"",
            7,
            "expected '{' to start the set of values after 'in'",
        ),
        ("foo not in ('x')", 11, "after 'not in'"),
        ("a not 'x'", 6, "expected 'in' after 'not'"),
        ("a starts 'x'", 9, "expected 'with' after 'starts'"),
        ("a ends 'x'", 7, "expected 'with' after 'ends'"),
        ("a inside {'x'}", 2, "expected an operator"),
        ("a in {'x' 'y'}", 10, "expected ',' or '}'"),
        ("a in {'x',}", 10, "expected a quoted string"),
        ("a in {'x'", 9, "expected ',' or '}'"),
        ("all", 3, "expected an operator after label key 'all'"),
        ("all(x)", 4, "all() takes no arguments"),
        ("global(", 7, "global() takes no arguments"),
        ("any()", 0, "unknown function 'any('"),
        ("!", 1, "found end of selector"),
        ("a == 'x' && !", 13, "found end of selector"),
        ("é == 'x'", 0, "found 'é'"),
        ("a == 'x' || é", 12, "found 'é'"),
        ("a == 'x' ||| has(b)", 11, "expected a label key"),
    ];
    for (input, position, message) in rows {
        let error = parse_error(input);
        assert_eq!(error.position, position, "position for {input:?}: {error}");
        assert!(
            error.message.contains(message),
            "message for {input:?} should mention {message:?}: {error}"
        );
        assert_eq!(error.input, input);
    }
}

#[test]
fn error_display_names_the_selector_and_position() {
    let error = parse_error("a == b");
    assert_eq!(
        error.to_string(),
        "selector \"a == b\": at position 5: expected a quoted string after '==', found \
         'b'; values are written in single or double quotes"
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    for input in [
        "(".repeat(100_000),
        "!".repeat(100_000),
        "(!".repeat(50_000),
        format!("{}has(a){}", "(".repeat(10_000), ")".repeat(10_000)),
    ] {
        let error = parse_error(&input);
        assert!(
            error.message.contains("levels deep"),
            "unexpected error: {}",
            error.message
        );
        assert_eq!(error.position, MAX_NESTING);
    }
}

#[test]
fn long_flat_selectors_parse_and_match() {
    let terms: Vec<String> = (0..20_000).map(|i| format!("k{i} != 'x'")).collect();
    let long_and = parse(&terms.join(" && "));
    assert!(long_and.matches(&labels(&[("k5", "y")])));
    assert!(!long_and.matches(&labels(&[("k19999", "x")])));
    assert_eq!(long_and.label_keys().len(), 20_000);

    let long_or = parse(&terms.join(" || "));
    assert!(long_or.matches(&labels(&[])));
    assert_eq!(parse(&long_or.to_string()), long_or);
}
