//! Property tests that need the expression tree: printing any tree and parsing it back
//! gives the same tree, and no input makes the parser panic.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::expr::{CompareOp, Expr};
use super::{Labeled, MAX_NESTING, Scoped, Selector};

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("has".to_owned()),
        Just("all".to_owned()),
        Just("global".to_owned()),
        Just("in".to_owned()),
        Just("not".to_owned()),
        Just("projectcalico.org/namespace".to_owned()),
        "[a-zA-Z0-9_./-]{1,16}",
    ]
}

/// Any text a quoted value can hold: anything but both kinds of quote at once.
fn value() -> impl Strategy<Value = String> {
    prop_oneof!["[a-c'\" ]{0,6}", any::<String>(),]
        .prop_filter("a value cannot hold both quotes", |v| {
            !(v.contains('"') && v.contains('\''))
        })
}

fn compare_op() -> impl Strategy<Value = CompareOp> {
    prop_oneof![
        Just(CompareOp::Equal),
        Just(CompareOp::NotEqual),
        Just(CompareOp::Contains),
        Just(CompareOp::StartsWith),
        Just(CompareOp::EndsWith),
    ]
}

/// Trees that keep the invariants the parser keeps (see [`Expr`]).
fn expr() -> impl Strategy<Value = Expr> {
    let leaf = prop_oneof![
        Just(Expr::All),
        Just(Expr::Global),
        key().prop_map(Expr::Has),
        (key(), compare_op(), value()).prop_map(|(key, op, value)| Expr::Compare {
            key,
            op,
            value
        }),
        (
            key(),
            prop::collection::btree_set(value(), 0..4),
            any::<bool>()
        )
            .prop_map(|(key, values, negated)| Expr::In {
                key,
                values: values.into_iter().collect(),
                negated,
            }),
    ];
    leaf.prop_recursive(6, 48, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
            prop::collection::vec(inner.clone(), 2..5).prop_map(Expr::and),
            prop::collection::vec(inner, 2..5).prop_map(Expr::or),
        ]
    })
}

/// Fragments of selector syntax, right and wrong, so that random strings reach deep
/// into the parser instead of failing on their first byte.
fn token_soup() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("a"),
        Just("b/c"),
        Just("=="),
        Just("!="),
        Just("!"),
        Just("="),
        Just("in"),
        Just("not"),
        Just("not in"),
        Just("contains"),
        Just("starts with"),
        Just("ends"),
        Just("with"),
        Just("{"),
        Just("}"),
        Just(","),
        Just("("),
        Just(")"),
        Just("has("),
        Just("all()"),
        Just("global()"),
        Just("&&"),
        Just("||"),
        Just("&"),
        Just("'x'"),
        Just("\"y\""),
        Just("'"),
        Just("\""),
        Just("é"),
    ];
    let gap = prop_oneof![Just(""), Just(" "), Just("\t\n")];
    prop::collection::vec((token, gap), 0..16).prop_map(|parts| {
        parts
            .into_iter()
            .flat_map(|(token, gap)| [token, gap])
            .collect()
    })
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(
        prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just("c".to_owned())
        ],
        prop_oneof![
            Just("x".to_owned()),
            Just("y".to_owned()),
            Just("xy".to_owned())
        ],
        0..3,
    )
}

/// Checks that a parsed selector prints to something that parses back to itself and
/// prints identically.
fn assert_print_fixpoint(selector: &Selector) {
    let printed = selector.to_string();
    let reparsed = Selector::parse(&printed)
        .unwrap_or_else(|e| panic!("printed form {printed:?} does not parse: {e}"));
    assert_eq!(&reparsed, selector, "printed form {printed:?}");
    assert_eq!(reparsed.to_string(), printed);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_tree_prints_and_parses_back(expr in expr()) {
        let selector = Selector { expr };
        let printed = selector.to_string();
        let reparsed = Selector::parse(&printed);
        prop_assert_eq!(reparsed.as_ref(), Ok(&selector), "printed form {:?}", printed);
    }

    #[test]
    fn arbitrary_text_never_panics(input in any::<String>()) {
        match Selector::parse(&input) {
            Ok(selector) => assert_print_fixpoint(&selector),
            Err(error) => {
                prop_assert!(error.position <= input.len());
                prop_assert!(input.is_char_boundary(error.position));
                prop_assert_eq!(error.input, input);
            }
        }
    }

    #[test]
    fn token_soup_never_panics(input in token_soup()) {
        match Selector::parse(&input) {
            Ok(selector) => assert_print_fixpoint(&selector),
            Err(error) => {
                prop_assert!(error.position <= input.len());
                prop_assert!(!error.message.is_empty());
            }
        }
    }

    #[test]
    fn printing_keeps_the_meaning(expr in expr(), labels in labels(), global in any::<bool>()) {
        let selector = Selector { expr };
        let reparsed = Selector::parse(&selector.to_string()).expect("checked by the round trip test");
        let target = Scoped { labels: &labels, global };
        prop_assert_eq!(selector.matches(&target), reparsed.matches(&target));
    }

    #[test]
    fn negation_and_de_morgan_hold(left in expr(), right in expr(), labels in labels()) {
        let (left, right) = (Selector { expr: left }, Selector { expr: right });
        let parse = |text: String| Selector::parse(&text).expect("built from printed selectors");
        let both = parse(format!("({left}) && ({right})"));
        let neither = parse(format!("!({left}) || !({right})"));
        let either = parse(format!("({left}) || ({right})"));
        prop_assert_eq!(both.matches(&labels), left.matches(&labels) && right.matches(&labels));
        prop_assert_eq!(neither.matches(&labels), !both.matches(&labels));
        prop_assert_eq!(either.matches(&labels), left.matches(&labels) || right.matches(&labels));
    }

    #[test]
    fn not_equal_and_not_in_are_negations(
        key in prop_oneof![Just("a"), Just("b")],
        value in prop_oneof![Just("x"), Just("y")],
        labels in labels(),
    ) {
        let not_equal = Selector::parse(&format!("{key} != '{value}'")).expect("valid");
        let negated_equal = Selector::parse(&format!("!{key} == '{value}'")).expect("valid");
        let not_in = Selector::parse(&format!("{key} not in {{'{value}', 'z'}}")).expect("valid");
        let negated_in = Selector::parse(&format!("!({key} in {{'z', '{value}'}})")).expect("valid");
        prop_assert_eq!(not_equal.matches(&labels), negated_equal.matches(&labels));
        prop_assert_eq!(not_in.matches(&labels), negated_in.matches(&labels));
    }

    #[test]
    fn label_keys_are_the_keys_that_matter(expr in expr(), labels in labels()) {
        // Dropping every label the selector does not name must not change the verdict.
        let selector = Selector { expr };
        let keys: BTreeSet<&str> = selector.label_keys();
        let relevant: BTreeMap<String, String> = labels
            .iter()
            .filter(|(k, _)| keys.contains(k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        prop_assert_eq!(selector.matches(&labels), selector.matches(&relevant));
    }
}

#[test]
fn nested_groups_flatten_to_one_tree() {
    let flat = Selector::parse("a == 'x' && b == 'y' && c == 'z'").expect("valid");
    let grouped = Selector::parse("(a == 'x' && (b == 'y')) && ((c == 'z'))").expect("valid");
    assert_eq!(flat, grouped);
    assert!(matches!(&flat.expr, Expr::And(terms) if terms.len() == 3));
}

#[test]
fn precedence_builds_or_of_ands() {
    let selector = Selector::parse("has(a) && has(b) || has(c) && has(d)").expect("valid");
    let Expr::Or(terms) = &selector.expr else {
        panic!("expected || at the top, got {:?}", selector.expr);
    };
    assert_eq!(terms.len(), 2);
    assert!(terms.iter().all(|t| matches!(t, Expr::And(_))));
}

#[test]
fn nesting_at_the_bound_is_accepted() {
    let input = format!(
        "{}has(a){}",
        "(".repeat(MAX_NESTING),
        ")".repeat(MAX_NESTING)
    );
    assert!(Selector::parse(&input).is_ok());
    let input = format!("{}has(a)", "!".repeat(MAX_NESTING));
    assert!(Selector::parse(&input).is_ok());
    let input = format!("{}has(a)", "!".repeat(MAX_NESTING + 1));
    let error = Selector::parse(&input).expect_err("one level too deep");
    assert_eq!(error.position, MAX_NESTING);
}

#[test]
fn slices_of_pairs_can_be_matched() {
    let labels: &[(&str, &str)] = &[("app", "web"), ("tier", "front")];
    assert_eq!(labels.label("tier"), Some("front"));
    assert!(!labels.is_global());
    let selector = Selector::parse("app == 'web' && tier in {'front'}").expect("valid");
    assert!(selector.matches(labels));
}
