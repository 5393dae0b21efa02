//! A point in the log's history: a global position or a moment in time, as given to
//! `--until` and `--at`.

use std::str::FromStr;

use boxoffice_store::RecordedEvent;
use chrono::{DateTime, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// Up to and including this global position.
    Position(u64),
    /// Up to and including events recorded at this moment.
    Time(DateTime<Utc>),
}

impl Point {
    /// Whether the event happened at or before this point.
    pub fn includes(&self, event: &RecordedEvent) -> bool {
        match self {
            Point::Position(p) => event.position <= *p,
            Point::Time(t) => event.recorded_at <= *t,
        }
    }
}

impl FromStr for Point {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(position) = s.parse::<u64>() {
            return Ok(Point::Position(position));
        }
        DateTime::parse_from_rfc3339(s)
            .map(|t| Point::Time(t.with_timezone(&Utc)))
            .map_err(|_| {
                format!(
                    "{s:?} is neither a log position nor an RFC 3339 time (2030-05-01T20:05:00Z)"
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_times_parse_and_garbage_does_not() {
        assert_eq!("42".parse::<Point>(), Ok(Point::Position(42)));
        assert_eq!(
            "2030-05-01T20:05:00+01:00".parse::<Point>(),
            Ok(Point::Time("2030-05-01T19:05:00Z".parse().unwrap()))
        );
        assert!("yesterday".parse::<Point>().is_err());
        assert!("-3".parse::<Point>().is_err());
    }
}
