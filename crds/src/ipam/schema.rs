//! Serde and schema helpers shared by the IPAM kinds, so the wire format is Calico's
//! exactly: `null` where Go writes a nil slice or map, signed 64-bit formats where Go's
//! `int`/`uint64` appear, and CIDRs as strings.

use schemars::{Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer};

/// Reads `null` as the type's default: Go writes a nil slice or map as `null`.
pub(crate) fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

pub(crate) fn is_zero(value: &i32) -> bool {
    *value == 0
}

/// A CIDR in canonical text form, masked (`10.244.0.0/26`, `fd00::/122`).
pub(crate) fn cidr_string(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "x-kubernetes-validations": [{
            "rule": "isCIDR(self) && cidr(self) == cidr(self).masked()",
            "message": "must be a CIDR with no bits set after the prefix, such as 10.244.0.0/26"
        }]
    })
}

/// Calico's `allocations`: one entry per address, `null` when free.
pub(crate) fn allocation_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": { "type": "integer", "format": "int64", "minimum": 0, "nullable": true }
    })
}

/// Calico's `unallocated`: the free ordinals in the order they will be handed out.
pub(crate) fn ordinal_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": { "type": "integer", "format": "int64", "minimum": 0 }
    })
}

/// A Go `uint64` that Calico declares as `int64`.
pub(crate) fn sequence_number(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "integer", "format": "int64", "minimum": 0, "default": 0 })
}

/// Calico's `sequenceNumberForAllocation`: ordinal (as a string) to sequence number.
pub(crate) fn sequence_number_map(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": { "type": "integer", "format": "int64", "minimum": 0 }
    })
}

/// Calico's IPAMHandle `block`: block CIDR to the number of addresses held in it.
pub(crate) fn count_map(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": { "type": "integer", "format": "int64", "minimum": 0 }
    })
}

/// A string map (`secondary`, `alternateOwnerAttrs`).
pub(crate) fn string_map(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": { "type": "string" }
    })
}
