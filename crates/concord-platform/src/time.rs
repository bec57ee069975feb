//! Timestamps: stored as microseconds since the Unix epoch (sortable, and the same type in
//! SQLite and PostgreSQL), exchanged as `google.protobuf.Timestamp`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch.
pub type Micros = i64;

/// The current time in microseconds since the epoch.
pub fn now_micros() -> Micros {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or_default()
}

/// Converts stored microseconds to a protobuf timestamp.
pub fn to_timestamp(micros: Micros) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

/// Converts a protobuf timestamp to microseconds; `None` if it is out of range.
pub fn from_timestamp(ts: &prost_types::Timestamp) -> Option<Micros> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return None;
    }
    ts.seconds.checked_mul(1_000_000).and_then(|s| s.checked_add(i64::from(ts.nanos) / 1000))
}

/// The current year (UTC), from the clock (civil-from-days, Howard Hinnant).
pub fn current_year() -> i32 {
    let days = now_micros() / 86_400_000_000;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2)) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_protobuf() {
        let m = 1_574_000_000_123_456;
        assert_eq!(from_timestamp(&to_timestamp(m)), Some(m));
        assert_eq!(from_timestamp(&to_timestamp(-1)), Some(-1));
    }

    #[test]
    fn current_year_is_plausible() {
        let y = current_year();
        assert!((2025..2100).contains(&y), "{y}");
    }

    #[test]
    fn rejects_out_of_range_nanos() {
        let ts = prost_types::Timestamp { seconds: 1, nanos: -5 };
        assert_eq!(from_timestamp(&ts), None);
    }
}
