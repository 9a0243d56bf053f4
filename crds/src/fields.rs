//! Field types and checks that several kinds share: AS numbers, ports and port ranges,
//! durations, IP addresses and CIDRs, selectors and case-insensitive keywords.
//!
//! The checks parse the way the API server's CEL IP and CIDR library does (no zones, no
//! IPv4-mapped IPv6 addresses), so a value the Rust rules accept is one the CRD schema
//! accepts too.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use kube::core::{Message, Rule};

use crate::selector::Selector;
use crate::validation::{FieldPath, ValidationErrors};

/// Longest string a CIDR or address field takes. The longest IPv6 CIDR in text is 49
/// characters; the bound keeps the API server's CEL cost estimate small.
pub const MAX_ADDRESS_LENGTH: u32 = 64;

/// Longest selector expression accepted, so CEL cost stays within the API server's budget.
pub const MAX_SELECTOR_LENGTH: u32 = 4096;

/// Pattern for a Go-style duration such as `90s`, `1m30s` or `500ms`; `0` turns a periodic
/// action off.
pub const DURATION_PATTERN: &str = r"^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+)$";

/// A BGP autonomous system number: 0 to 4294967295 (four-byte AS numbers included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AsNumber(pub u32);

impl JsonSchema for AsNumber {
    fn schema_name() -> Cow<'static, str> {
        "AsNumber".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "integer",
            "format": "int64",
            "minimum": 0,
            "maximum": 4_294_967_295u64,
        })
    }
}

impl fmt::Display for AsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A port, or an inclusive range of ports written `first:last`, as Calico accepts for
/// `natPortRange` and `kubeNodePortRanges`: either the number `8080` or the string
/// `"32768:65535"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port of the range.
    pub first: u16,
    /// Last port of the range, equal to `first` for a single port.
    pub last: u16,
}

impl PortRange {
    /// Parses `8080`, `"8080"` or `"32768:65535"`; ports 1 to 65535, first not above last.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (first, last) = match s.split_once(':') {
            Some((a, b)) => (a, b),
            None => (s, s),
        };
        let port = |p: &str| -> Result<u16, String> {
            match p.trim().parse::<u16>() {
                Ok(0) | Err(_) => Err(format!("{p:?} is not a port from 1 to 65535")),
                Ok(n) => Ok(n),
            }
        };
        let range = Self {
            first: port(first)?,
            last: port(last)?,
        };
        if range.first > range.last {
            return Err(format!(
                "range {s:?} starts after it ends; write the lower port first"
            ));
        }
        Ok(range)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}:{}", self.first, self.last)
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.first == self.last {
            serializer.serialize_u16(self.first)
        } else {
            serializer.serialize_str(&self.to_string())
        }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Number(u64),
            Text(String),
        }
        let text = match Wire::deserialize(deserializer)? {
            Wire::Number(n) => n.to_string(),
            Wire::Text(s) => s,
        };
        PortRange::parse(&text).map_err(serde::de::Error::custom)
    }
}

// Known limitation: the schema checks only the shape of a port range; that the first port
// is not above the last is a Rust rule, because a CEL rule on an int-or-string value of
// unbounded lists would strain the API server's cost budget.
impl JsonSchema for PortRange {
    fn schema_name() -> Cow<'static, str> {
        "PortRange".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "x-kubernetes-int-or-string": true,
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": 65535},
                {"type": "string", "pattern": "^[0-9]{1,5}(:[0-9]{1,5})?$", "maxLength": 11},
            ],
        })
    }
}

/// A Go-style duration such as `90s`, `1m30s` or `500ms`, kept as written so that a
/// round trip leaves the object unchanged. [`parse_duration`] reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GoDuration(pub String);

impl GoDuration {
    /// The duration, or `None` when the text is not one.
    pub fn to_std(&self) -> Option<std::time::Duration> {
        parse_duration(&self.0)
    }

    /// Checks the text; see [`check_duration`].
    pub fn check(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        check_duration(&self.0, path, errors);
    }
}

impl JsonSchema for GoDuration {
    fn schema_name() -> Cow<'static, str> {
        "GoDuration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": 64,
            "pattern": DURATION_PATTERN,
        })
    }
}

/// Parses an IP address as the CEL `ip()` function does: no zone, no IPv4-mapped IPv6.
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    let ip = IpAddr::from_str(s).ok()?;
    if let IpAddr::V6(v6) = ip
        && v6.to_ipv4_mapped().is_some()
    {
        return None;
    }
    Some(ip)
}

/// Parses a CIDR as the CEL `cidr()` function does; host bits may be set.
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    let (addr, len) = s.split_once('/')?;
    parse_ip(addr)?;
    let leading_zero = len.len() > 1 && len.starts_with('0');
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) || len.len() > 3 || leading_zero {
        return None;
    }
    IpNet::from_str(s).ok()
}

/// The IP family a field is restricted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4 only.
    V4,
    /// IPv6 only.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    fn example(self) -> &'static str {
        match self {
            Family::V4 => "an IPv4 address such as 192.0.2.10",
            Family::V6 => "an IPv6 address such as 2001:db8::10",
        }
    }
}

/// Checks that `value` is a CIDR without host bits; pushes an error at `path` otherwise.
/// Returns the network when it is valid.
pub fn check_masked_cidr(
    value: &str,
    path: &FieldPath,
    errors: &mut ValidationErrors,
) -> Option<IpNet> {
    let Some(net) = parse_cidr(value) else {
        errors.push(
            path,
            format!(
                "{value:?} is not a CIDR; write an address and a prefix length such as \
                 10.244.0.0/16 or fd00:10:244::/48"
            ),
        );
        return None;
    };
    if net.trunc() != net {
        errors.push(
            path,
            format!(
                "CIDR {value} has host bits set; did you mean {}?",
                net.trunc()
            ),
        );
        return None;
    }
    Some(net)
}

/// Checks that `value` is an IP address, of `family` when given.
pub fn check_ip(
    value: &str,
    family: Option<Family>,
    path: &FieldPath,
    errors: &mut ValidationErrors,
) -> Option<IpAddr> {
    let Some(ip) = parse_ip(value) else {
        let wanted = family.map_or("an IP address such as 192.0.2.10", Family::example);
        errors.push(path, format!("{value:?} is not {wanted}"));
        return None;
    };
    if let Some(family) = family
        && Family::of(&ip) != family
    {
        errors.push(
            path,
            format!(
                "{value} is the wrong IP family; this field takes {}",
                family.example()
            ),
        );
        return None;
    }
    Some(ip)
}

/// Checks that `value` is a selector in Calico's selector language. An empty string is
/// no selector at all (Calico reads it as `all()`), so it passes.
pub fn check_selector(value: &str, path: &FieldPath, errors: &mut ValidationErrors) {
    if value.trim().is_empty() {
        return;
    }
    if let Err(e) = Selector::parse(value) {
        errors.push(path, format!("not a valid selector: {e}"));
    }
}

/// Checks that `value` is one of `allowed`, ignoring case, or empty (which means the
/// default), as Calico's configuration fields accept.
pub fn check_keyword(
    value: &str,
    allowed: &[&str],
    path: &FieldPath,
    errors: &mut ValidationErrors,
) {
    if value.is_empty() || allowed.iter().any(|a| a.eq_ignore_ascii_case(value)) {
        return;
    }
    errors.push(
        path,
        format!(
            "{value:?} is not one of {} (case does not matter)",
            allowed.join(", ")
        ),
    );
}

/// The OpenAPI pattern that `check_keyword` enforces, for the CRD schema.
pub fn keyword_pattern(allowed: &[&str]) -> String {
    format!("^(?i)({})?$", allowed.join("|"))
}

/// Checks that `value` is a duration such as `90s` or `1m30s`.
pub fn check_duration(value: &str, path: &FieldPath, errors: &mut ValidationErrors) {
    if parse_duration(value).is_none() {
        errors.push(
            path,
            format!("{value:?} is not a duration; write it like 90s, 1m30s or 500ms"),
        );
    }
}

/// Parses a Go-style duration (`1h2m3.5s`, `250ms`, `0`).
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    if s == "0" {
        return Some(std::time::Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_len];
        if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
            return None;
        }
        let value: f64 = number.parse().ok()?;
        rest = &rest[number_len..];
        let units: [(&str, f64); 7] = [
            ("ns", 1e-9),
            ("us", 1e-6),
            ("µs", 1e-6),
            ("ms", 1e-3),
            ("s", 1.0),
            ("m", 60.0),
            ("h", 3600.0),
        ];
        let (unit, scale) = units.iter().find(|(u, _)| rest.starts_with(u))?;
        rest = &rest[unit.len()..];
        total += value * scale;
    }
    Some(std::time::Duration::from_secs_f64(total))
}

/// Checks that `value` is a DNS label: lower-case letters, digits and `-`, at most 63
/// characters, starting and ending with a letter or digit.
pub fn check_dns_label(value: &str, path: &FieldPath, errors: &mut ValidationErrors) {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if !ok {
        errors.push(
            path,
            format!(
                "{value:?} is not a DNS label: use at most 63 lower-case letters, digits and \
                 '-', starting and ending with a letter or digit"
            ),
        );
    }
}

/// The OpenAPI pattern for a DNS label.
pub const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// Checks that a number lies in `min..=max`.
pub fn check_range(
    value: i64,
    min: i64,
    max: i64,
    path: &FieldPath,
    errors: &mut ValidationErrors,
) {
    if value < min || value > max {
        errors.push(
            path,
            format!("{value} is out of range: it must be {min} to {max}"),
        );
    }
}

/// CEL rule for a string field that must be a CIDR; `field` names it in the message.
pub fn cel_is_cidr(field: &str) -> Rule {
    Rule::new("isCIDR(self)").message(Message::Message(format!(
        "{field} must be a CIDR such as 10.244.0.0/16 or fd00:10:244::/48"
    )))
}

/// CEL rule for a CIDR field that must have no host bits set; the message suggests the
/// masked form. Holds for values that are not CIDRs, which `cel_is_cidr` reports.
pub fn cel_masked_cidr(field: &str) -> Rule {
    // `format` rather than `+`: the API server's cost estimate treats `string(cidr)` as
    // unbounded and refuses a concatenation with it.
    Rule::new("!isCIDR(self) || cidr(self) == cidr(self).masked()").message(Message::Expression(
        format!(
            "'{field} %s has host bits set; did you mean %s?'.format([self, \
             string(cidr(self).masked())])"
        ),
    ))
}

/// CEL rule for a string field that must be an IP address, of `family` when given.
pub fn cel_is_ip(field: &str, family: Option<Family>) -> Rule {
    match family {
        None => Rule::new("isIP(self)").message(Message::Message(format!(
            "{field} must be an IP address such as 192.0.2.10 or 2001:db8::10"
        ))),
        Some(Family::V4) => {
            Rule::new("isIP(self) && ip(self).family() == 4").message(Message::Message(format!(
                "{field} must be an IPv4 address such as 192.0.2.10"
            )))
        }
        Some(Family::V6) => {
            Rule::new("isIP(self) && ip(self).family() == 6").message(Message::Message(format!(
                "{field} must be an IPv6 address such as 2001:db8::10"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_matches_the_cel_library() {
        assert!(parse_cidr("10.244.0.0/16").is_some());
        assert!(parse_cidr("aa00:0000::0000/10").is_some());
        assert!(parse_cidr("aa:bb::/129").is_none());
        assert!(parse_cidr("10.0.0.0").is_none());
        assert!(parse_cidr("::ffff:10.0.0.0/120").is_none());
        assert!(parse_cidr("10.0.0.0/+8").is_none());
        assert!(parse_cidr("10.0.0.0/08").is_none());
    }

    #[test]
    fn masked_cidr_suggests_the_network() {
        let mut errors = ValidationErrors::default();
        check_masked_cidr("10.244.1.0/16", &FieldPath::new("spec.cidr"), &mut errors);
        assert!(
            errors.to_string().contains("did you mean 10.244.0.0/16?"),
            "{errors}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("90s"),
            Some(std::time::Duration::from_secs(90))
        );
        assert_eq!(
            parse_duration("1m30s"),
            Some(std::time::Duration::from_secs(90))
        );
        assert_eq!(parse_duration("0"), Some(std::time::Duration::ZERO));
        assert_eq!(
            parse_duration("1.5h"),
            Some(std::time::Duration::from_secs(5400))
        );
        assert!(parse_duration("").is_none());
        assert!(parse_duration("90").is_none());
        assert!(parse_duration("s").is_none());
        assert!(parse_duration("1d").is_none());
    }

    #[test]
    fn port_ranges() {
        assert_eq!(
            PortRange::parse("8080"),
            Ok(PortRange {
                first: 8080,
                last: 8080
            })
        );
        assert_eq!(
            PortRange::parse("32768:65535"),
            Ok(PortRange {
                first: 32768,
                last: 65535
            })
        );
        assert!(PortRange::parse("0").is_err());
        assert!(PortRange::parse("2:1").is_err());
        assert!(PortRange::parse("70000").is_err());
        let range: PortRange = serde_json::from_str("443").expect("a number is a port");
        assert_eq!(range.first, 443);
        assert_eq!(serde_json::to_string(&range).expect("serializes"), "443");
    }

    #[test]
    fn keywords_ignore_case() {
        let mut errors = ValidationErrors::default();
        let path = FieldPath::new("x");
        check_keyword("accept", &["Accept", "Return"], &path, &mut errors);
        check_keyword("", &["Accept", "Return"], &path, &mut errors);
        assert!(errors.is_empty());
        check_keyword("Drop", &["Accept", "Return"], &path, &mut errors);
        assert_eq!(errors.0.len(), 1);
    }
}
