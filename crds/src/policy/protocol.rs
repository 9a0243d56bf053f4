//! The IP protocol a rule or host endpoint port matches: a name Calico knows or a number.

use std::{borrow::Cow, fmt, str::FromStr};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::validation::{FieldPath, Validate, ValidationErrors};

/// The CEL rule the schema puts on every protocol field. It restates [`Protocol::from_str`]:
/// a known name, case-sensitive, or a number from 1 to 255, also written as a string.
pub const PROTOCOL_RULE: &str = "type(self) == int ? (self >= 1 && self <= 255) : \
     (self in ['TCP', 'UDP', 'ICMP', 'ICMPv6', 'SCTP', 'UDPLite'] || \
     (self.matches('^[0-9]{1,3}$') && int(self) >= 1 && int(self) <= 255))";

/// The message the API server shows when [`PROTOCOL_RULE`] fails.
pub const PROTOCOL_MESSAGE: &str = "protocol must be one of TCP, UDP, ICMP, ICMPv6, SCTP, \
     UDPLite (names are case-sensitive) or a protocol number from 1 to 255";

/// A protocol Calico knows by name. Names are case-sensitive on the wire, as in Calico v3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolName {
    /// `TCP` (6).
    Tcp,
    /// `UDP` (17).
    Udp,
    /// `ICMP` (1), ICMP for IPv4.
    Icmp,
    /// `ICMPv6` (58).
    IcmpV6,
    /// `SCTP` (132).
    Sctp,
    /// `UDPLite` (136).
    UdpLite,
}

impl ProtocolName {
    /// Every name, in the order error messages list them.
    pub const ALL: [ProtocolName; 6] = [
        Self::Tcp,
        Self::Udp,
        Self::Icmp,
        Self::IcmpV6,
        Self::Sctp,
        Self::UdpLite,
    ];

    /// The name as it is written in a manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Icmp => "ICMP",
            Self::IcmpV6 => "ICMPv6",
            Self::Sctp => "SCTP",
            Self::UdpLite => "UDPLite",
        }
    }

    /// The IANA protocol number the name stands for.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Icmp => 1,
            Self::IcmpV6 => 58,
            Self::Sctp => 132,
            Self::UdpLite => 136,
        }
    }
}

/// An IP protocol: `TCP`, `UDP`, `ICMP`, `ICMPv6`, `SCTP`, `UDPLite`, or a number 1..255.
///
/// A number written as a string (`"17"`) is read as that number and written back as one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// A protocol written by name.
    Named(ProtocolName),
    /// A protocol written by number (1..255).
    Number(u8),
}

/// Why a string is not a protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a protocol: {PROTOCOL_MESSAGE}")]
pub struct ProtocolParseError {
    /// The text that is not a protocol.
    pub input: String,
}

impl Protocol {
    /// The IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Named(name) => name.number(),
            Self::Number(n) => n,
        }
    }

    /// Whether the protocol has ports, so that `ports` and `notPorts` mean something:
    /// TCP, UDP, SCTP and UDPLite, by name or number.
    pub fn supports_ports(self) -> bool {
        matches!(self.number(), 6 | 17 | 132 | 136)
    }

    /// ICMP for IPv4 (`ICMP` or 1).
    pub fn is_icmp_v4(self) -> bool {
        self.number() == 1
    }

    /// ICMP for IPv6 (`ICMPv6` or 58).
    pub fn is_icmp_v6(self) -> bool {
        self.number() == 58
    }
}

impl FromStr for Protocol {
    type Err = ProtocolParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(name) = ProtocolName::ALL.into_iter().find(|n| n.as_str() == s) {
            return Ok(Self::Named(name));
        }

        let all_digits = !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit());
        match s.parse::<u8>() {
            Ok(n) if all_digits && n != 0 => Ok(Self::Number(n)),
            _ => Err(ProtocolParseError {
                input: s.to_owned(),
            }),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Named(name) => f.write_str(name.as_str()),
            Self::Number(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Named(name) => serializer.serialize_str(name.as_str()),
            Self::Number(n) => serializer.serialize_u8(*n),
        }
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ProtocolVisitor)
    }
}

struct ProtocolVisitor;

impl de::Visitor<'_> for ProtocolVisitor {
    type Value = Protocol;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a protocol name (TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite) or a number 1..255")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Protocol, E> {
        match u8::try_from(v) {
            Ok(n) if n != 0 => Ok(Protocol::Number(n)),
            _ => Err(E::custom(format!(
                "{v} is not a protocol: {PROTOCOL_MESSAGE}"
            ))),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Protocol, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::custom(format!(
                "{v} is not a protocol: {PROTOCOL_MESSAGE}"
            ))),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Protocol, E> {
        v.parse().map_err(E::custom)
    }
}

impl JsonSchema for Protocol {
    fn schema_name() -> Cow<'static, str> {
        "Protocol".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An IP protocol: TCP, UDP, ICMP, ICMPv6, SCTP or UDPLite \
                (case-sensitive), or a protocol number from 1 to 255.",
            "x-kubernetes-int-or-string": true,
            "maxLength": 7,
            "x-kubernetes-validations": [
                { "rule": PROTOCOL_RULE, "message": PROTOCOL_MESSAGE }
            ]
        })
    }
}

impl Validate for Protocol {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        // Parsing refuses 0, but a value built in code can still hold it.
        if let Self::Number(0) = self {
            errors.push(path, PROTOCOL_MESSAGE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_case_sensitive() {
        assert_eq!(
            "ICMPv6".parse::<Protocol>(),
            Ok(Protocol::Named(ProtocolName::IcmpV6))
        );
        assert!("icmpv6".parse::<Protocol>().is_err());
        assert!("tcp".parse::<Protocol>().is_err());
    }

    #[test]
    fn numbers_in_strings_become_numbers() {
        assert_eq!("1".parse::<Protocol>(), Ok(Protocol::Number(1)));
        assert_eq!("255".parse::<Protocol>(), Ok(Protocol::Number(255)));
        assert!("0".parse::<Protocol>().is_err());
        assert!("256".parse::<Protocol>().is_err());
        assert!("+6".parse::<Protocol>().is_err());
        assert!("".parse::<Protocol>().is_err());
    }

    #[test]
    fn wire_form_round_trips() {
        for text in [r#""TCP""#, "17", r#""UDPLite""#] {
            let p: Protocol = serde_json::from_str(text).expect("a valid protocol");
            assert_eq!(serde_json::to_string(&p).expect("serialises"), text);
        }
        let p: Protocol = serde_json::from_str(r#""6""#).expect("a numeric string");
        assert_eq!(p, Protocol::Number(6));
        assert!(p.supports_ports());
        assert!(serde_json::from_str::<Protocol>("0").is_err());
        assert!(serde_json::from_str::<Protocol>("-1").is_err());
        assert!(serde_json::from_str::<Protocol>("true").is_err());
    }
}
