//! Parsing request fields the same way in every service, naming the field at fault: text,
//! etags, times that may not be in the future, and protobuf enums to and from the
//! [`crate::named_enum`] enums of the domains.

use crate::error::{Error, Result, Violations};
use crate::time::{from_timestamp, now_micros};

/// Adds a violation unless `s` is non-blank and at most `max` characters.
pub fn text(v: &mut Violations, field: &str, s: &str, max: usize) {
    if s.trim().is_empty() {
        v.add(field, "is required");
    } else if s.chars().count() > max {
        v.add(field, format!("must be at most {max} characters"));
    }
}

/// The version an etag (`"7"` or `7`) carries; `None` when empty.
pub fn etag(s: &str, field: &str) -> Result<Option<i64>> {
    if s.is_empty() {
        return Ok(None);
    }
    s.trim_matches('"')
        .parse::<i64>()
        .map(Some)
        .map_err(|_| Error::invalid(field, "is not an etag this service issued"))
}

/// Micros of `t` (default now); a violation when it is not a valid time or is in the
/// future (a minute of clock skew allowed).
pub fn past_time(v: &mut Violations, field: &str, t: Option<&prost_types::Timestamp>) -> i64 {
    let now = now_micros();
    match t {
        None => now,
        Some(ts) => match from_timestamp(ts) {
            Some(m) if m > now + 60_000_000 => {
                v.add(field, "must not be in the future");
                0
            }
            Some(m) => m,
            None => {
                v.add(field, "is not a valid timestamp");
                0
            }
        },
    }
}

/// Micros of a required deadline: a violation when it is missing, not a valid time, or not in
/// the future (a deadline in the past is a mistake, not a record).
pub fn future_time(v: &mut Violations, field: &str, t: Option<&prost_types::Timestamp>) -> i64 {
    match t.map(from_timestamp) {
        None => {
            v.add(field, "is required");
            0
        }
        Some(None) => {
            v.add(field, "is not a valid timestamp");
            0
        }
        Some(Some(m)) if m <= now_micros() => {
            v.add(field, "is in the past; a deadline must be in the future");
            0
        }
        Some(Some(m)) => m,
    }
}

/// Parses a required protobuf enum field into a domain enum, adding a violation naming the
/// allowed values when it is unset or unknown: `required_enum!(v, "field", value, Proto,
/// Domain)`.
#[macro_export]
macro_rules! required_enum {
    ($v:expr, $field:expr, $value:expr, $proto:ty, $domain:ty) => {{
        let value: i32 = $value;
        let parsed = <$proto>::try_from(value)
            .ok()
            .and_then(|e| <$domain>::from_proto_name(e.as_str_name()));
        if parsed.is_none() {
            let what = if value == 0 {
                "is required".to_string()
            } else {
                format!("has unknown value {value}")
            };
            $v.add($field, format!("{what}; use one of {}", <$domain>::NAMES.join(", ")));
        }
        parsed
    }};
}

/// A domain enum's protobuf value: `enum_out!(Proto, value)`.
#[macro_export]
macro_rules! enum_out {
    ($proto:ty, $value:expr) => {
        <$proto>::from_str_name(&$value.proto_name()).map_or(0, |e| e as i32)
    };
}

/// The id in a person's resource name (`persons/{id}`: letters, digits and '-', at most 64),
/// or `None` with a violation naming `field`.
pub fn person_id(v: &mut Violations, field: impl Into<String>, name: &str) -> Option<String> {
    match name.strip_prefix("persons/") {
        Some(id)
            if !id.is_empty()
                && id.len() <= 64
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
        {
            Some(id.to_string())
        }
        _ => {
            v.add(
                field,
                format!(
                    "'{}' is not a name like \"persons/0192...\"",
                    name.chars().take(80).collect::<String>()
                ),
            );
            None
        }
    }
}

/// ABORTED when the caller's etag (`expected`, from [`etag`]) is not the resource's current
/// `version` (AIP-154): the caller read an older state.
pub fn check_etag(resource: &str, version: i64, expected: Option<i64>) -> Result<()> {
    match expected {
        Some(v) if v != version => Err(Error::Aborted(format!(
            "etag mismatch: {resource} is at etag \"{version}\", the request carried \"{v}\"; read it again and retry"
        ))),
        _ => Ok(()),
    }
}

/// FAILED_PRECONDITION for a step a state machine does not allow: names the resource, its
/// state and where it may go from there (`none` when nowhere, for example "nothing (final)").
pub fn invalid_transition(
    reason: &'static str,
    resource: &str,
    state: impl std::fmt::Display,
    successors: &[&str],
    none: &str,
) -> Error {
    let next = if successors.is_empty() { none.to_string() } else { successors.join(", ") };
    Error::FailedPrecondition {
        reason,
        message: format!("{resource} is {state}; from there it may become {next}"),
    }
}
