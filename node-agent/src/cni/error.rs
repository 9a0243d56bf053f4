//! CNI errors: the JSON a runtime reads on stdout when a plugin fails.

use serde_json::json;

use super::version::SpecVersion;

/// The `code` of a CNI error. Codes below 100 are the spec's; 100 and up are Tortie's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// 1: the configuration's `cniVersion` is not one this plugin speaks.
    IncompatibleVersion,
    /// 2: a configuration field has a value the plugin does not support.
    UnsupportedField,
    /// 3: the container is unknown or gone.
    UnknownContainer,
    /// 4: a `CNI_*` environment variable is missing or malformed.
    InvalidEnvironment,
    /// 5: reading stdin, a file or a process failed.
    Io,
    /// 6: the configuration (or a delegate's answer) is not valid JSON.
    Decode,
    /// 7: the configuration parses but breaks a rule.
    InvalidNetworkConfig,
    /// 11: a transient condition; the runtime should retry.
    TryAgainLater,
    /// 50: STATUS: the plugin cannot serve ADD right now.
    PluginNotAvailable,
    /// 100: the kernel refused a netlink or sysctl operation.
    Kernel,
    /// 101: the pod's network namespace cannot be entered.
    Namespace,
    /// 102: CHECK found the pod's wiring differs from what ADD made.
    CheckFailed,
    /// 103: the IPAM delegate could not be run or answered nonsense.
    IpamDelegate,
    /// 104: a bug in the plugin (a caught panic).
    Internal,
    /// Any other code, passed through unchanged from an IPAM delegate.
    Other(u32),
}

impl ErrorCode {
    /// The number written to the error JSON.
    pub fn number(self) -> u32 {
        match self {
            Self::IncompatibleVersion => 1,
            Self::UnsupportedField => 2,
            Self::UnknownContainer => 3,
            Self::InvalidEnvironment => 4,
            Self::Io => 5,
            Self::Decode => 6,
            Self::InvalidNetworkConfig => 7,
            Self::TryAgainLater => 11,
            Self::PluginNotAvailable => 50,
            Self::Kernel => 100,
            Self::Namespace => 101,
            Self::CheckFailed => 102,
            Self::IpamDelegate => 103,
            Self::Internal => 104,
            Self::Other(code) => code,
        }
    }

    /// The code for a number read from a delegate's error JSON.
    pub fn from_number(number: u32) -> Self {
        match number {
            1 => Self::IncompatibleVersion,
            2 => Self::UnsupportedField,
            3 => Self::UnknownContainer,
            4 => Self::InvalidEnvironment,
            5 => Self::Io,
            6 => Self::Decode,
            7 => Self::InvalidNetworkConfig,
            11 => Self::TryAgainLater,
            50 => Self::PluginNotAvailable,
            other => Self::Other(other),
        }
    }
}

/// A failed CNI operation, as the runtime will see it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct CniError {
    /// What kind of failure this is.
    pub code: ErrorCode,
    /// One line naming the object and the problem.
    pub msg: String,
    /// Longer context (the kernel's or the delegate's own words), may be empty.
    pub details: String,
}

impl CniError {
    /// An error without details.
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Adds the longer explanation.
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The error JSON the spec prescribes, stamped with the version the runtime spoke.
    pub fn to_json(&self, version: SpecVersion) -> serde_json::Value {
        let mut error = json!({
            "cniVersion": version.as_str(),
            "code": self.code.number(),
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            error["details"] = json!(self.details);
        }
        error
    }
}

/// Shorthand for the kernel refusing something, keeping its own words as details.
pub fn kernel(msg: impl Into<String>, cause: impl std::fmt::Display) -> CniError {
    CniError::new(ErrorCode::Kernel, msg).with_details(cause.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_spec_fields_and_omits_empty_details() {
        let error = CniError::new(ErrorCode::Decode, "bad config");
        let json = error.to_json(SpecVersion::V1_0_0);
        assert_eq!(json["code"], 6);
        assert_eq!(json["cniVersion"], "1.0.0");
        assert!(json.get("details").is_none());

        let json = error.with_details("line 1").to_json(SpecVersion::V0_3_1);
        assert_eq!(json["details"], "line 1");
    }

    #[test]
    fn numbers_round_trip() {
        for number in [1, 2, 3, 4, 5, 6, 7, 11, 50, 999] {
            assert_eq!(ErrorCode::from_number(number).number(), number);
        }
    }
}
