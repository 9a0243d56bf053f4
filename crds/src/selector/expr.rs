//! The parsed form of a selector, how it is evaluated and how it is printed.

use std::collections::BTreeSet;
use std::fmt;

use super::Labeled;

/// One node of a selector.
///
/// Invariants the parser keeps and printing relies on: `And` and `Or` have at least two
/// children and never hold a child of their own kind (nested groups are flattened, as
/// they mean the same); `In` values are sorted and distinct; no value holds both kinds
/// of quote; nesting is at most [`super::MAX_NESTING`] deep.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Expr {
    /// `all()`: every object.
    All,
    /// `global()`: objects that are not namespaced.
    Global,
    /// `has(key)`: objects with the label, whatever its value.
    Has(String),
    /// `key <op> "value"`.
    Compare {
        key: String,
        op: CompareOp,
        value: String,
    },
    /// `key in {...}`, or `key not in {...}` when `negated`.
    In {
        key: String,
        values: Vec<String>,
        negated: bool,
    },
    /// `!expr`.
    Not(Box<Expr>),
    /// `a && b && ...`.
    And(Vec<Expr>),
    /// `a || b || ...`.
    Or(Vec<Expr>),
}

/// The operators that compare a label's value with one string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum CompareOp {
    Equal,
    NotEqual,
    Contains,
    StartsWith,
    EndsWith,
}

impl Expr {
    /// Joins terms with `&&`, flattening nested conjunctions so that equal meanings get
    /// equal trees. A single term stands for itself.
    pub(super) fn and(terms: Vec<Expr>) -> Expr {
        Self::join(terms, Expr::And, |e| match e {
            Expr::And(inner) => Ok(inner),
            other => Err(other),
        })
    }

    /// Joins terms with `||`, flattening like [`Expr::and`].
    pub(super) fn or(terms: Vec<Expr>) -> Expr {
        Self::join(terms, Expr::Or, |e| match e {
            Expr::Or(inner) => Ok(inner),
            other => Err(other),
        })
    }

    fn join(
        terms: Vec<Expr>,
        build: fn(Vec<Expr>) -> Expr,
        split: fn(Expr) -> Result<Vec<Expr>, Expr>,
    ) -> Expr {
        let mut flat = Vec::with_capacity(terms.len());
        for term in terms {
            match split(term) {
                Ok(inner) => flat.extend(inner),
                Err(single) => flat.push(single),
            }
        }
        if flat.len() == 1 {
            flat.pop().expect("length was just checked to be one")
        } else {
            build(flat)
        }
    }

    pub(super) fn matches<L: Labeled + ?Sized>(&self, target: &L) -> bool {
        match self {
            Expr::All => true,
            Expr::Global => target.is_global(),
            Expr::Has(key) => target.label(key).is_some(),
            Expr::Compare { key, op, value } => {
                let actual = target.label(key);
                match op {
                    CompareOp::Equal => actual == Some(value.as_str()),
                    CompareOp::NotEqual => actual != Some(value.as_str()),
                    CompareOp::Contains => actual.is_some_and(|a| a.contains(value.as_str())),
                    CompareOp::StartsWith => actual.is_some_and(|a| a.starts_with(value.as_str())),
                    CompareOp::EndsWith => actual.is_some_and(|a| a.ends_with(value.as_str())),
                }
            }
            Expr::In {
                key,
                values,
                negated,
            } => {
                let found = target.label(key).is_some_and(|actual| {
                    values.binary_search_by(|v| v.as_str().cmp(actual)).is_ok()
                });
                found != *negated
            }
            Expr::Not(inner) => !inner.matches(target),
            Expr::And(terms) => terms.iter().all(|t| t.matches(target)),
            Expr::Or(terms) => terms.iter().any(|t| t.matches(target)),
        }
    }

    pub(super) fn collect_keys<'a>(&'a self, keys: &mut BTreeSet<&'a str>) {
        match self {
            Expr::All | Expr::Global => {}
            Expr::Has(key) | Expr::Compare { key, .. } | Expr::In { key, .. } => {
                keys.insert(key);
            }
            Expr::Not(inner) => inner.collect_keys(keys),
            Expr::And(terms) | Expr::Or(terms) => {
                for term in terms {
                    term.collect_keys(keys);
                }
            }
        }
    }

    /// Prints `self` as an operand of `!`, `&&` or `||`, adding parentheses when the
    /// operand binds more loosely than `parent` would require, or when it is a
    /// comparison under `!` (where `!a == "b"` would read ambiguously to a person).
    fn fmt_operand(&self, parent: &Expr, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let needs_parens = matches!(
            (parent, self),
            (Expr::Not(_), Expr::Compare { .. } | Expr::In { .. })
                | (Expr::Not(_) | Expr::And(_), Expr::And(_) | Expr::Or(_))
                | (Expr::Or(_), Expr::Or(_))
        );
        if needs_parens {
            write!(f, "({self})")
        } else {
            write!(f, "{self}")
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::All => f.write_str("all()"),
            Expr::Global => f.write_str("global()"),
            Expr::Has(key) => write!(f, "has({key})"),
            Expr::Compare { key, op, value } => {
                write!(f, "{key} {op} {}", Quoted(value))
            }
            Expr::In {
                key,
                values,
                negated,
            } => {
                let op = if *negated { "not in" } else { "in" };
                write!(f, "{key} {op} {{")?;
                for (i, value) in values.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}", Quoted(value))?;
                }
                f.write_str("}")
            }
            Expr::Not(inner) => {
                f.write_str("!")?;
                inner.fmt_operand(self, f)
            }
            Expr::And(terms) | Expr::Or(terms) => {
                let separator = if matches!(self, Expr::And(_)) {
                    " && "
                } else {
                    " || "
                };
                for (i, term) in terms.iter().enumerate() {
                    if i > 0 {
                        f.write_str(separator)?;
                    }
                    term.fmt_operand(self, f)?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for CompareOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CompareOp::Equal => "==",
            CompareOp::NotEqual => "!=",
            CompareOp::Contains => "contains",
            CompareOp::StartsWith => "starts with",
            CompareOp::EndsWith => "ends with",
        })
    }
}

/// A value in quotes: double quotes, or single quotes when the value holds a double
/// quote. Values never hold both (there is no escape syntax to write one).
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quote = if self.0.contains('"') { '\'' } else { '"' };
        write!(f, "{quote}{}{quote}", self.0)
    }
}
