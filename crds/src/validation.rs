//! Validation that needs more than a type: the rules the CRD schemas state as OpenAPI
//! constraints and CEL, written once more in Rust so the operator, the agent and the
//! tests can check an object without an API server. A test applies the same cases to
//! the real API server and to these functions and expects the same verdict.

use std::fmt;

/// Where in an object a rule was broken, in the dotted form `kubectl explain` uses:
/// `spec.ingress[0].destination.ports[1]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(String);

impl FieldPath {
    /// The path of the object itself.
    pub fn root() -> Self {
        Self(String::new())
    }

    /// A path that starts at `name`, for checking part of an object on its own.
    pub fn new(name: &str) -> Self {
        Self(name.to_owned())
    }

    /// The path of a field below this one.
    pub fn child(&self, name: &str) -> Self {
        if self.0.is_empty() {
            Self(name.to_owned())
        } else {
            Self(format!("{}.{}", self.0, name))
        }
    }

    /// The path of an element of the list at this path.
    pub fn index(&self, i: usize) -> Self {
        Self(format!("{}[{}]", self.0, i))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("<object>")
        } else {
            f.write_str(&self.0)
        }
    }
}

/// One broken rule: which field, and what the rule is, in words a person acts on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: FieldPath,
    pub message: String,
}

/// Every rule an object breaks, so a person can fix them all in one go.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ValidationErrors {
    /// Records that the field at `field` breaks the rule described by `message`.
    pub fn push(&mut self, field: &FieldPath, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.clone(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok` when no rule was broken.
    pub fn into_result(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }
}

/// A type whose values can be checked against the rules its CRD schema states.
pub trait Validate {
    /// Adds every rule this value breaks to `errors`, with fields named below `path`.
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors);

    /// Checks the value on its own; fields are named from its root.
    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        self.validate_at(&FieldPath::root(), &mut errors);
        errors.into_result()
    }
}
