//! Calico's label selector language: parsing, evaluation and a canonical printed form.
//!
//! A selector is a boolean expression over an object's labels, for example
//! `role == 'db' && !has(legacy) || global()`. The grammar, loosest binding first:
//!
//! ```text
//! selector   = [ or ]                      empty means all()
//! or         = and { "||" and }
//! and        = unary { "&&" unary }        so && binds tighter than ||
//! unary      = "!" unary | "(" or ")" | term
//! term       = "all()" | "global()" | "has(" key ")"
//!            | key ( "==" | "!=" | "contains" | "starts with" | "ends with" ) string
//!            | key ( "in" | "not in" ) "{" [ string { "," string } ] "}"
//! string     = "'" any text without ' "'" | '"' any text without " '"'
//! key        = one or more of A-Z a-z 0-9 _ . / -
//! ```
//!
//! Values are always quoted and have no escape sequences, so a value can hold single
//! quotes or double quotes but not both. `!=` and `not in` match objects that lack the
//! label altogether, exactly like `!(key == ...)` and `!(key in {...})` do.

mod expr;
mod parse;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::hash::BuildHasher;
use std::str::FromStr;

use expr::Expr;

/// How deeply `(` and `!` may nest. Parsing, evaluating, printing and dropping a
/// selector all recurse once per level, so the bound keeps a hostile selector from
/// exhausting the stack; real selectors nest a handful of levels at most.
pub const MAX_NESTING: usize = 64;

/// A parsed selector. Two selectors are equal when they parse to the same expression,
/// so `a=='b'` and `a == "b"` are equal; printing gives the canonical form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Selector {
    expr: Expr,
}

/// Why a selector string could not be parsed: where, and what was expected there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("selector {input:?}: at position {position}: {message}")]
pub struct ParseError {
    /// The whole selector as it was given.
    pub input: String,
    /// Byte offset into `input` where parsing stopped.
    pub position: usize,
    /// What was expected at `position`, in words a person can act on.
    pub message: String,
}

/// Something a selector is evaluated against: its labels, and whether it lives outside
/// any namespace (which is all `global()` asks).
///
/// Label maps implement this as namespaced objects; wrap them in [`Scoped`] to say
/// otherwise.
pub trait Labeled {
    /// The value of label `key`, if the object has that label.
    fn label(&self, key: &str) -> Option<&str>;

    /// Whether the object is cluster-scoped (a host endpoint, a global network set, a
    /// node) rather than living in a namespace.
    fn is_global(&self) -> bool {
        false
    }
}

/// A label map together with an explicit scope, for matching cluster-scoped objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scoped<'a, L: ?Sized> {
    /// The object's labels.
    pub labels: &'a L,
    /// True when the object is not namespaced.
    pub global: bool,
}

impl Selector {
    /// Parses a selector such as `app == 'web' && has(tier)`. An empty or blank string
    /// is `all()`.
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        parse::parse(input).map(|expr| Self { expr })
    }

    /// The selector that matches everything, `all()`.
    pub fn all() -> Self {
        Self { expr: Expr::All }
    }

    /// Whether this selector is `all()` (or was written empty), so callers can skip
    /// evaluating it. Expressions that merely happen to match everything, such as
    /// `has(a) || !has(a)`, are not recognised.
    pub fn is_all(&self) -> bool {
        matches!(self.expr, Expr::All)
    }

    /// Evaluates the selector against an object. Does not allocate.
    pub fn matches<L: Labeled + ?Sized>(&self, target: &L) -> bool {
        self.expr.matches(target)
    }

    /// Every label key the selector looks at, in sorted order. An object whose labels
    /// change only outside this set cannot change whether it matches (though
    /// `global()` also depends on its scope).
    pub fn label_keys(&self) -> BTreeSet<&str> {
        let mut keys = BTreeSet::new();
        self.expr.collect_keys(&mut keys);
        keys
    }
}

impl Default for Selector {
    fn default() -> Self {
        Self::all()
    }
}

impl fmt::Display for Selector {
    /// The canonical form: single spaces around operators, double quotes unless the
    /// value holds one, set values sorted without duplicates, parentheses only where
    /// precedence needs them. Parsing it gives back an equal selector.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.expr, f)
    }
}

impl FromStr for Selector {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for Selector {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Selector {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for Selector {
    fn schema_name() -> Cow<'static, str> {
        "Selector".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string" })
    }
}

impl<'a, L: ?Sized> Scoped<'a, L> {
    /// Labels of a cluster-scoped object: `global()` matches it.
    pub fn global(labels: &'a L) -> Self {
        Self {
            labels,
            global: true,
        }
    }

    /// Labels of an object in a namespace: `global()` does not match it.
    pub fn namespaced(labels: &'a L) -> Self {
        Self {
            labels,
            global: false,
        }
    }
}

impl<L: Labeled + ?Sized> Labeled for Scoped<'_, L> {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels.label(key)
    }

    fn is_global(&self) -> bool {
        self.global
    }
}

impl<L: Labeled + ?Sized> Labeled for &L {
    fn label(&self, key: &str) -> Option<&str> {
        (**self).label(key)
    }

    fn is_global(&self) -> bool {
        (**self).is_global()
    }
}

impl Labeled for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl<S: BuildHasher> Labeled for HashMap<String, String, S> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl Labeled for [(&str, &str)] {
    fn label(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
}
