//! Timestamps as Testflinger writes and reads them: `YYYY-MM-DDTHH:MM:SSZ` out, RFC 3339
//! (or Python's naive ISO form) in.

/// Formats unix seconds the way Testflinger does: `YYYY-MM-DDTHH:MM:SSZ` (clients replace
/// the `Z` with `+00:00`, so no offset may precede it).
///
/// Written digit by digit: every pop answer carries one (`started_at`), and `time`'s
/// format-description machinery cost ~850 instructions a call (callgrind).
pub fn iso_z(secs: u64) -> String {
    // 9999-12-31T23:59:59Z at most: four digits of year.
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp(secs.min(253_402_300_799) as i64) else {
        return "1970-01-01T00:00:00Z".into();
    };
    let (year, month, day) = t.to_calendar_date();
    let (hour, minute, second) = t.to_hms();
    let year = year as u16;
    let mut out = String::with_capacity(20);
    for (n, after) in [
        ((year / 100) as u8, None),
        ((year % 100) as u8, Some('-')),
        (u8::from(month), Some('-')),
        (day, Some('T')),
        (hour, Some(':')),
        (minute, Some(':')),
        (second, Some('Z')),
    ] {
        out.push(char::from(b'0' + n / 10));
        out.push(char::from(b'0' + n % 10));
        out.extend(after);
    }
    out
}

/// Parses an ISO 8601 / RFC 3339 timestamp (`Z` or an offset; a missing offset means
/// UTC, as Python's naive datetimes do) into unix microseconds.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    let text = text.trim();
    if text.len() > 64 {
        return None;
    }
    let parsed = time::OffsetDateTime::parse(text, &Rfc3339)
        .or_else(|_| time::OffsetDateTime::parse(&format!("{text}Z"), &Rfc3339))
        .or_else(|_| time::OffsetDateTime::parse(&format!("{}Z", text.replace(' ', "T")), &Rfc3339))
        .ok()?;
    i64::try_from(parsed.unix_timestamp_nanos() / 1000).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn iso_z_writes_what_time_formats_for_every_kind_of_date() {
        let format =
            time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
        let by_time = |secs: u64| {
            time::OffsetDateTime::from_unix_timestamp(secs.min(253_402_300_799) as i64)
                .unwrap()
                .format(&format)
                .unwrap()
        };
        let mut secs = vec![0, 59, 86_399, 951_782_400, 1_709_164_800, 1_796_247_262];
        secs.extend([253_402_300_799, 253_402_300_800, u64::MAX]);
        // Every day boundary of several years, leap ones included, and odd seconds.
        secs.extend((0..4 * 366).map(|d| 946_684_800 + d * 86_400 + d % 61));
        for s in secs {
            assert_eq!(super::iso_z(s), by_time(s), "{s}");
        }
    }
}
