//! A port in a rule: a number, a range, or the name of a port a pod declares.

use std::{borrow::Cow, fmt};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::validation::{FieldPath, Validate, ValidationErrors};

/// Longest port name; Kubernetes container port names follow the IANA service name rules.
pub const MAX_PORT_NAME_LEN: usize = 15;

/// The shapes a port can take on the wire when it is a string: a number, a range or a name.
pub const PORT_STRING_PATTERN: &str =
    r"^([0-9]{1,5}(:[0-9]{1,5})?|[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?)$";
/// CEL: a port written as a string is a number or an ordered range within 0..65535, or a
/// name with at least one letter. The pattern has already fixed the shape, so this only
/// compares numbers.
pub const PORT_STRING_RULE: &str = "type(self) != string || \
     (self.matches('^[0-9:]+$') ? \
     (int(self.find('[0-9]+$')) <= 65535 && int(self.find('^[0-9]+')) <= int(self.find('[0-9]+$'))) \
     : self.matches('[a-z]'))";

const NUMBER_MESSAGE: &str = "port number must be from 0 to 65535";
const RANGE_MESSAGE: &str =
    "port range must be \"min:max\" with both ends from 0 to 65535 and min <= max";
const STRING_MESSAGE: &str = "port must be a number from 0 to 65535, a range \"min:max\" \
     with min <= max <= 65535, or a port name with at least one letter";
const NAME_MESSAGE: &str = "port name must be 1 to 15 lowercase letters, digits and '-', \
     with at least one letter, starting and ending with a letter or digit";

/// A port or ports a rule matches.
///
/// On the wire a single port is a number (`80`), a range is a string (`"8000:8080"`), and
/// any other string is the name of a port declared on the selected pods (`"http"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Port {
    /// One port.
    Number(u16),
    /// Every port from `min` to `max`, both included. Parsing keeps an inverted range so
    /// validation can name it.
    Range {
        /// The first port of the range.
        min: u16,
        /// The last port of the range.
        max: u16,
    },
    /// A port the selected pods declare under this name.
    Named(String),
}

impl Port {
    fn from_text(s: &str) -> Result<Self, String> {
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        let number = |t: &str| {
            t.parse::<u16>()
                .map_err(|_| format!("port {s:?}: {NUMBER_MESSAGE}"))
        };

        if digits(s) {
            return number(s).map(Self::Number);
        }
        if let Some((min, max)) = s.split_once(':')
            && digits(min)
            && digits(max)
        {
            return Ok(Self::Range {
                min: number(min)?,
                max: number(max)?,
            });
        }
        Ok(Self::Named(s.to_owned()))
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::Range { min, max } => write!(f, "{min}:{max}"),
            Self::Named(name) => f.write_str(name),
        }
    }
}

impl Serialize for Port {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Number(n) => serializer.serialize_u16(*n),
            other => serializer.collect_str(other),
        }
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PortVisitor)
    }
}

struct PortVisitor;

impl de::Visitor<'_> for PortVisitor {
    type Value = Port;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a port number, a range \"min:max\" or a port name")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Port, E> {
        u16::try_from(v)
            .map(Port::Number)
            .map_err(|_| E::custom(format!("port {v}: {NUMBER_MESSAGE}")))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Port, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::custom(format!("port {v}: {NUMBER_MESSAGE}"))),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Port, E> {
        Port::from_text(v).map_err(E::custom)
    }
}

impl JsonSchema for Port {
    fn schema_name() -> Cow<'static, str> {
        "Port".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A port number (0-65535), a range \"min:max\" (both ends included), \
                or the name of a port declared on the selected pods.",
            "x-kubernetes-int-or-string": true,
            "minimum": 0,
            "maximum": 65535,
            "maxLength": MAX_PORT_NAME_LEN,
            "pattern": PORT_STRING_PATTERN,
            "x-kubernetes-validations": [
                { "rule": PORT_STRING_RULE, "message": STRING_MESSAGE }
            ]
        })
    }
}

/// Whether `name` can name a port: what Kubernetes allows for container port names.
pub fn is_port_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let end_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());

    !name.is_empty()
        && name.len() <= MAX_PORT_NAME_LEN
        && bytes.iter().all(allowed)
        && bytes.iter().any(u8::is_ascii_lowercase)
        && end_ok(bytes.first())
        && end_ok(bytes.last())
}

impl Validate for Port {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        match self {
            Self::Number(_) => {}
            Self::Range { min, max } => {
                if min > max {
                    errors.push(
                        path,
                        format!("{RANGE_MESSAGE}; {min}:{max} is inverted, write {max}:{min}"),
                    );
                }
            }
            Self::Named(name) => {
                if !is_port_name(name) {
                    errors.push(path, format!("{name:?}: {NAME_MESSAGE}"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(json: &str) -> Port {
        serde_json::from_str(json).expect("test input is a port")
    }

    #[test]
    fn reads_every_form() {
        assert_eq!(port("80"), Port::Number(80));
        assert_eq!(port(r#""80""#), Port::Number(80));
        assert_eq!(port(r#""1:2""#), Port::Range { min: 1, max: 2 });
        assert_eq!(port(r#""http""#), Port::Named("http".into()));
        assert!(serde_json::from_str::<Port>("65536").is_err());
        assert!(serde_json::from_str::<Port>(r#""1:70000""#).is_err());
        assert!(serde_json::from_str::<Port>("-1").is_err());
    }

    #[test]
    fn writes_numbers_as_numbers_and_the_rest_as_strings() {
        assert_eq!(
            serde_json::to_string(&Port::Number(53)).ok(),
            Some("53".into())
        );
        let range = Port::Range { min: 1, max: 9 };
        assert_eq!(serde_json::to_string(&range).ok(), Some(r#""1:9""#.into()));
    }

    #[test]
    fn checks_ranges_and_names() {
        assert!(port(r#""200:100""#).validate().is_err());
        assert!(port(r#""100:100""#).validate().is_ok());
        assert!(port(r#""web-8080""#).validate().is_ok());
        for bad in [
            "1:2:3",
            "Http",
            "-web",
            "web-",
            "1234",
            "a_b",
            "averyveryverylongname",
        ] {
            assert!(
                Port::Named(bad.into()).validate().is_err(),
                "{bad:?} must not be a port name"
            );
        }
    }
}
