//! The CNI spec versions this plugin speaks, and what differs between them.

use std::fmt;

/// A CNI spec version this plugin supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SpecVersion {
    /// 0.3.0: the first version with `interfaces` and `ips`.
    V0_3_0,
    /// 0.3.1: same result format as 0.3.0.
    V0_3_1,
    /// 0.4.0: adds CHECK and `prevResult` on DEL.
    V0_4_0,
    /// 1.0.0: drops `version` from IP entries.
    V1_0_0,
    /// 1.1.0: adds STATUS and GC, interface `mtu`, and route attributes.
    V1_1_0,
}

/// Every version, oldest first; VERSION reports exactly this list.
pub const SUPPORTED_VERSIONS: [SpecVersion; 5] = [
    SpecVersion::V0_3_0,
    SpecVersion::V0_3_1,
    SpecVersion::V0_4_0,
    SpecVersion::V1_0_0,
    SpecVersion::V1_1_0,
];

impl SpecVersion {
    /// The newest supported version.
    pub const LATEST: SpecVersion = SpecVersion::V1_1_0;

    /// Parses a `cniVersion` string; `None` when it is not supported.
    pub fn parse(text: &str) -> Option<Self> {
        SUPPORTED_VERSIONS
            .into_iter()
            .find(|version| version.as_str() == text)
    }

    /// The version as written in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_3_0 => "0.3.0",
            Self::V0_3_1 => "0.3.1",
            Self::V0_4_0 => "0.4.0",
            Self::V1_0_0 => "1.0.0",
            Self::V1_1_0 => "1.1.0",
        }
    }

    /// Before 1.0.0 each IP entry says whether it is "4" or "6".
    pub fn ip_entries_carry_version(self) -> bool {
        self < Self::V1_0_0
    }

    /// CHECK exists from 0.4.0 on.
    pub fn has_check(self) -> bool {
        self >= Self::V0_4_0
    }

    /// STATUS, GC and the extra interface and route fields exist from 1.1.0 on.
    pub fn has_status_and_gc(self) -> bool {
        self >= Self::V1_1_0
    }

    /// The supported versions as the comma-separated list error messages show.
    pub fn supported_list() -> String {
        SUPPORTED_VERSIONS
            .iter()
            .map(|version| version.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for SpecVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exactly_the_supported_versions() {
        for version in SUPPORTED_VERSIONS {
            assert_eq!(SpecVersion::parse(version.as_str()), Some(version));
        }
        for unsupported in ["0.1.0", "0.2.0", "1.2.0", "", "1.0"] {
            assert_eq!(SpecVersion::parse(unsupported), None);
        }
    }

    #[test]
    fn format_differences_follow_the_spec() {
        assert!(SpecVersion::V0_4_0.ip_entries_carry_version());
        assert!(!SpecVersion::V1_0_0.ip_entries_carry_version());
        assert!(!SpecVersion::V0_3_1.has_check());
        assert!(SpecVersion::V0_4_0.has_check());
        assert!(SpecVersion::V1_1_0.has_status_and_gc());
        assert!(!SpecVersion::V1_0_0.has_status_and_gc());
    }
}
