//! Contract durations (`72h`, `15d`, `10 business days`) and the business calendar
//! that turns a start time and a duration into a deadline.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{Datelike, Days, LocalResult, NaiveDate, TimeZone, Weekday};
use chrono_tz::Tz;

use crate::types::{Timestamp, ValueError};

/// A length of time as a contract states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DealDuration {
    /// A fixed number of seconds (`72h`, `15d`, `2w`, `30m`).
    Exact { seconds: i64 },
    /// Whole business days on the deal's calendar, ending at the same local time of day.
    BusinessDays { days: u32 },
}

impl DealDuration {
    /// Parses `90s`, `30m`, `72h`, `15d`, `2w`, the long forms (`72 hours`, `15 days`,
    /// `2 weeks`) and `10 business days`.
    pub fn parse(text: &str) -> Result<DealDuration, ValueError> {
        let help = || {
            ValueError(format!(
                "`{text}` is not a duration: write e.g. `72h`, `15d`, `2w` or `10 business days`"
            ))
        };
        let trimmed = text.trim();
        let digits_end = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        if digits_end == 0 {
            return Err(help());
        }
        let amount: i64 = trimmed[..digits_end].parse().map_err(|_| help())?;
        let unit = trimmed[digits_end..].trim();
        let seconds_per_unit = match unit {
            "s" | "sec" | "second" | "seconds" => 1,
            "m" | "min" | "minute" | "minutes" => 60,
            "h" | "hour" | "hours" => 3_600,
            "d" | "day" | "days" => 86_400,
            "w" | "week" | "weeks" => 7 * 86_400,
            "business day" | "business days" | "bd" => {
                let days = u32::try_from(amount)
                    .ok()
                    .filter(|d| *d <= 3_650)
                    .ok_or_else(help)?;
                return Ok(DealDuration::BusinessDays { days });
            }
            _ => return Err(help()),
        };
        // Ten years is longer than any clause rofr knows of; larger values are typos.
        if amount > 10 * 366 * 86_400 / seconds_per_unit {
            return Err(ValueError(format!(
                "`{text}` is longer than ten years; is it a typo?"
            )));
        }
        Ok(DealDuration::Exact {
            seconds: amount * seconds_per_unit,
        })
    }

    /// A length in seconds for comparisons where the calendar does not matter: a
    /// business day counts as 24 hours, which is never longer than it really is.
    pub fn nominal_seconds(self) -> i64 {
        match self {
            DealDuration::Exact { seconds } => seconds,
            DealDuration::BusinessDays { days } => i64::from(days) * 86_400,
        }
    }
}

impl fmt::Display for DealDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DealDuration::Exact { seconds } if seconds % 86_400 == 0 => {
                write!(f, "{}d", seconds / 86_400)
            }
            DealDuration::Exact { seconds } if seconds % 3_600 == 0 => {
                write!(f, "{}h", seconds / 3_600)
            }
            DealDuration::Exact { seconds } => write!(f, "{seconds}s"),
            DealDuration::BusinessDays { days: 1 } => f.write_str("1 business day"),
            DealDuration::BusinessDays { days } => write!(f, "{days} business days"),
        }
    }
}

/// Which days count as business days, and in which time zone a day begins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Calendar {
    pub time_zone: Tz,
    pub weekend: BTreeSet<WeekdayName>,
    pub holidays: BTreeSet<NaiveDate>,
}

/// A weekday, ordered Monday first, so it can live in sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct WeekdayName(pub u8);

impl WeekdayName {
    pub fn parse(text: &str) -> Result<WeekdayName, ValueError> {
        let day = text.parse::<Weekday>().map_err(|_| {
            ValueError(format!(
                "`{text}` is not a weekday: write e.g. `saturday` or `sun`"
            ))
        })?;
        Ok(WeekdayName(day.num_days_from_monday() as u8))
    }
}

impl Default for Calendar {
    fn default() -> Self {
        Calendar {
            time_zone: Tz::UTC,
            weekend: [WeekdayName(5), WeekdayName(6)].into_iter().collect(),
            holidays: BTreeSet::new(),
        }
    }
}

impl Calendar {
    pub fn is_business_day(&self, date: NaiveDate) -> bool {
        let weekday = WeekdayName(date.weekday().num_days_from_monday() as u8);
        !self.weekend.contains(&weekday) && !self.holidays.contains(&date)
    }

    /// The moment `duration` after `start`. Business days are counted from the day
    /// after `start`'s local date, skipping weekends and holidays, and the deadline
    /// falls at `start`'s local time of day on the last of them (the first valid local
    /// time after it, where a clock change removed it).
    pub fn add(&self, start: Timestamp, duration: DealDuration) -> Timestamp {
        match duration {
            DealDuration::Exact { seconds } => start.plus_seconds(seconds),
            DealDuration::BusinessDays { days } => {
                let local = start.to_datetime().with_timezone(&self.time_zone);
                let mut date = local.date_naive();
                let mut counted = 0;
                while counted < days {
                    date = date + Days::new(1);
                    if self.is_business_day(date) {
                        counted += 1;
                    }
                }
                let naive = date.and_time(local.time());
                let resolved = match self.time_zone.from_local_datetime(&naive) {
                    LocalResult::Single(at) | LocalResult::Ambiguous(at, _) => at,
                    LocalResult::None => {
                        // A spring-forward gap: the hour after it is always valid.
                        let later = naive + chrono::Duration::hours(1);
                        self.time_zone
                            .from_local_datetime(&later)
                            .earliest()
                            .expect("the hour after a clock change exists")
                    }
                };
                Timestamp::from_unix_seconds(resolved.timestamp())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        Timestamp::parse(text).unwrap()
    }

    #[test]
    fn short_and_long_forms_parse_to_the_same_length() {
        assert_eq!(
            DealDuration::parse("72h").unwrap(),
            DealDuration::parse("3 days").unwrap()
        );
        assert_eq!(
            DealDuration::parse("10 business days").unwrap(),
            DealDuration::BusinessDays { days: 10 }
        );
        assert!(DealDuration::parse("ten days").is_err());
        assert!(DealDuration::parse("5 fortnights").is_err());
        assert!(DealDuration::parse("").is_err());
    }

    #[test]
    fn business_days_skip_weekends_and_holidays_in_local_time() {
        let calendar = Calendar {
            time_zone: "America/New_York".parse().unwrap(),
            holidays: [NaiveDate::from_ymd_opt(2025, 1, 20).unwrap()]
                .into_iter()
                .collect(),
            ..Calendar::default()
        };
        // Friday 17 January 2025, 10:00 in New York. Monday the 20th is a holiday, so
        // two business days later is Wednesday the 22nd at 10:00 local (15:00 UTC).
        let start = at("2025-01-17T15:00:00Z");
        let due = calendar.add(start, DealDuration::BusinessDays { days: 2 });
        assert_eq!(due, at("2025-01-22T15:00:00Z"));
    }

    #[test]
    fn business_days_keep_local_time_across_a_clock_change() {
        let calendar = Calendar {
            time_zone: "America/New_York".parse().unwrap(),
            ..Calendar::default()
        };
        // Friday 7 March 2025 09:00 EST; clocks go forward on the 9th; Monday 09:00 EDT.
        let due = calendar.add(
            at("2025-03-07T14:00:00Z"),
            DealDuration::BusinessDays { days: 1 },
        );
        assert_eq!(due, at("2025-03-10T13:00:00Z"));
    }
}
