use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{ErrorCode, MAX_CLOCK_SKEW_S, ProtocolError};

/// A point in time with millisecond precision, written as RFC 3339 UTC
/// (`2026-11-29T12:00:00.123Z`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    unix_ms: i64,
}

/// Length of the wire form, `YYYY-MM-DDTHH:MM:SS.mmmZ`.
const WIRE_LEN: usize = 24;

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let unix_ms = match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
        };
        Timestamp { unix_ms }
    }

    /// From milliseconds since the Unix epoch.
    pub const fn from_unix_ms(unix_ms: i64) -> Self {
        Timestamp { unix_ms }
    }

    /// Milliseconds since the Unix epoch.
    pub const fn unix_ms(self) -> i64 {
        self.unix_ms
    }

    /// Parses any RFC 3339 timestamp (any offset, any fraction).
    pub fn parse(text: &str) -> Result<Self, ProtocolError> {
        let parsed = OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
            ProtocolError::new(ErrorCode::InvalidTimestamp, format!("timestamp {text:?} is not RFC 3339: {e}"))
        })?;
        let unix_ms = i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000).map_err(|_| {
            ProtocolError::new(ErrorCode::InvalidTimestamp, format!("timestamp {text:?} is out of range"))
        })?;
        Ok(Timestamp { unix_ms })
    }

    /// Parses a client's timestamp and checks it lies within ±300 s of `now`.
    pub fn check_client(text: &str, now: Timestamp) -> Result<Self, ProtocolError> {
        let ts = Timestamp::parse(text)?;
        let skew_ms = (ts.unix_ms - now.unix_ms).abs();
        if skew_ms > MAX_CLOCK_SKEW_S * 1000 {
            return Err(ProtocolError::new(
                ErrorCode::InvalidTimestamp,
                format!(
                    "timestamp {text:?} is {} s away from server time (at most {MAX_CLOCK_SKEW_S} s)",
                    skew_ms / 1000
                ),
            ));
        }
        Ok(ts)
    }

    /// Writes the wire form into `out` without allocating.
    pub fn write_to(self, out: &mut Vec<u8>) {
        // Every frame carries a timestamp and a busy thread formats the same
        // millisecond hundreds of times: keep the last one per thread.
        thread_local! {
            static LAST: std::cell::Cell<Option<(i64, [u8; WIRE_LEN])>> = const { std::cell::Cell::new(None) };
        }
        let buf = match LAST.get() {
            Some((unix_ms, buf)) if unix_ms == self.unix_ms => buf,
            _ => {
                let mut buf = [0u8; WIRE_LEN];
                self.format_into(&mut buf);
                LAST.set(Some((self.unix_ms, buf)));
                buf
            }
        };
        out.extend_from_slice(&buf);
    }

    fn format_into(self, buf: &mut [u8; WIRE_LEN]) {
        let days = self.unix_ms.div_euclid(86_400_000);
        let ms_of_day = self.unix_ms.rem_euclid(86_400_000);
        let (year, month, day) = civil_from_days(days);
        let year = year.clamp(0, 9999) as u32;
        let secs = (ms_of_day / 1000) as u32;
        let fields: [(usize, u32, usize); 7] = [
            (0, year, 4),
            (5, month, 2),
            (8, day, 2),
            (11, secs / 3600, 2),
            (14, secs / 60 % 60, 2),
            (17, secs % 60, 2),
            (20, (ms_of_day % 1000) as u32, 3),
        ];
        *buf = *b"0000-00-00T00:00:00.000Z";
        for (at, mut value, width) in fields {
            for i in (0..width).rev() {
                buf[at + i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        }
    }
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; WIRE_LEN];
        self.format_into(&mut buf);
        // The buffer holds ASCII digits and separators only.
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_per_thread_cache_never_serves_another_millisecond() {
        let write = |ms: i64| {
            let mut out = Vec::new();
            Timestamp::from_unix_ms(ms).write_to(&mut out);
            String::from_utf8(out).unwrap()
        };
        let (a, b) = (1_764_460_800_123, 1_764_460_800_124);
        for (ms, expected) in [
            (a, "2025-11-30T00:00:00.123Z"),
            (a, "2025-11-30T00:00:00.123Z"),
            (b, "2025-11-30T00:00:00.124Z"),
            (a, "2025-11-30T00:00:00.123Z"),
        ] {
            assert_eq!(write(ms), expected);
            assert_eq!(write(ms), Timestamp::from_unix_ms(ms).to_string());
        }
    }

    #[test]
    fn formats_like_the_contract() {
        let ts = Timestamp::parse("2026-11-29T12:00:00.123Z").unwrap();
        assert_eq!(ts.to_string(), "2026-11-29T12:00:00.123Z");
        assert_eq!(Timestamp::from_unix_ms(0).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(Timestamp::parse("2024-02-29T23:59:59.999+01:00").unwrap().to_string(), "2024-02-29T22:59:59.999Z");
    }

    #[test]
    fn formatting_agrees_with_the_time_crate_over_many_days() {
        for day in (-1000..200_000i64).step_by(37) {
            let ms = day * 86_400_000 + 45_296_789;
            let ours = Timestamp::from_unix_ms(ms).to_string();
            let theirs = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                .unwrap()
                .format(&Rfc3339)
                .unwrap();
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn client_skew_is_bounded() {
        let now = Timestamp::parse("2026-11-29T12:00:00.000Z").unwrap();
        assert!(Timestamp::check_client("2026-11-29T12:05:00.000Z", now).is_ok());
        assert!(Timestamp::check_client("2026-11-29T11:55:00.000Z", now).is_ok());
        let err = Timestamp::check_client("2026-11-29T12:05:00.001Z", now).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidTimestamp);
        let err = Timestamp::check_client("yesterday", now).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidTimestamp);
    }
}
