//! Newtypes for the values every other module passes around. Each constructor is the
//! only way in, so a value that exists is a valid one.

use std::fmt;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a value could not be made: a plain sentence that says what would be right.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValueError(pub String);

/// Byte order of two ids, as `str` orders them. Ids are short (at most 64 bytes, most
/// under 16), and a loop over them costs less than the call to `memcmp` that slice
/// comparison makes.
#[inline]
fn compare_short(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return x.cmp(y);
        }
    }
    a.len().cmp(&b.len())
}

macro_rules! identifier {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        // Shared text: ids are cloned into every event and index, and a clone of an
        // `Arc<str>` is a count, not an allocation.
        #[derive(Debug, Clone, Eq)]
        pub struct $name(std::sync::Arc<str>);

        // As `str` hashes, so that maps keyed by ids can be asked with a `&str`.
        impl std::hash::Hash for $name {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                str::hash(&self.0, state)
            }
        }

        // Most comparisons are between clones of one value: the pointer says so at once.
        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                std::sync::Arc::ptr_eq(&self.0, &other.0)
                    || compare_short(self.0.as_bytes(), other.0.as_bytes()).is_eq()
            }
        }

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        impl Ord for $name {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                if std::sync::Arc::ptr_eq(&self.0, &other.0) {
                    std::cmp::Ordering::Equal
                } else {
                    compare_short(self.0.as_bytes(), other.0.as_bytes())
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl $name {
            /// Whether the two are one copy of their text (not merely equal text).
            pub fn shares_text_with(&self, other: &Self) -> bool {
                std::sync::Arc::ptr_eq(&self.0, &other.0)
            }

            /// The same text in an allocation of its own, whose count no other id
            /// shares: threads that each work on their own copies of ids never contend
            /// for one count.
            pub fn detached(&self) -> Self {
                $name(std::sync::Arc::from(&*self.0))
            }

            /// Accepts 1 to 64 characters of ASCII letters, digits, `-`, `_` and `.`,
            /// starting with a letter or digit.
            pub fn parse(text: &str) -> Result<Self, ValueError> {
                let ok_first = text.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
                let ok_rest = text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                if text.len() <= 64 && ok_first && ok_rest {
                    Ok(Self(text.into()))
                } else {
                    Err(ValueError(format!(
                        concat!("`{}` is not a valid ", $what,
                            ": use 1 to 64 letters, digits, `-`, `_` or `.`, starting with a letter or digit"),
                        text
                    )))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                openapi::id(concat!("A ", $what, ": 1 to 64 letters, digits, `-`, `_` or `.`, starting with a letter or digit"))
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                Self::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

identifier!(
    /// A provider's id as the deal names it, e.g. `azure`.
    ProviderId,
    "provider id"
);
identifier!(
    /// A need's id, chosen by the buyer and unique within a broker.
    NeedId,
    "need id"
);
identifier!(
    /// A GPU model such as `H100` or `GB200`.
    Sku,
    "sku"
);
identifier!(
    /// A provider region such as `us-east`.
    Region,
    "region"
);
identifier!(
    /// A workload kind such as `training` or `inference`.
    Workload,
    "workload"
);
identifier!(
    /// A free tag carried by a need, matched by scopes and restrictions.
    Tag,
    "tag"
);

/// A count of GPUs. Zero is a valid count (nothing left to place); a need's own size is
/// checked to be positive where the need is parsed.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Gpus(pub u32);

impl Gpus {
    pub const ZERO: Gpus = Gpus(0);

    pub fn get(self) -> u32 {
        self.0
    }

    pub fn saturating_sub(self, other: Gpus) -> Gpus {
        Gpus(self.0.saturating_sub(other.0))
    }
}

impl std::ops::Add for Gpus {
    type Output = Gpus;
    /// Saturating: no count rofr accepts comes near `u32::MAX`, and a sum that did
    /// must not wrap to a small one.
    fn add(self, other: Gpus) -> Gpus {
        Gpus(self.0.saturating_add(other.0))
    }
}

impl std::ops::AddAssign for Gpus {
    fn add_assign(&mut self, other: Gpus) {
        *self = *self + other;
    }
}

impl std::iter::Sum for Gpus {
    fn sum<I: Iterator<Item = Gpus>>(iter: I) -> Gpus {
        iter.fold(Gpus::ZERO, |total, g| total + g)
    }
}

impl fmt::Display for Gpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A price in US dollars per GPU-hour, held as an integer number of ten-thousandths of
/// a dollar so that comparisons and sums are exact and replay is bit-for-bit stable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Price(u64);

impl Price {
    const SCALE: f64 = 10_000.0;
    /// The largest accepted price in dollars per GPU-hour, $1,000,000: far above any
    /// real one.
    pub const MAX_DOLLARS: f64 = 1_000_000.0;

    pub fn from_dollars(dollars: f64) -> Result<Price, ValueError> {
        if !dollars.is_finite() || !(0.0..=Self::MAX_DOLLARS).contains(&dollars) {
            // 1e300 is shown so, not as its 301 digits.
            let shown = if dollars.abs() < 1e9 {
                dollars.to_string()
            } else {
                format!("{dollars:e}")
            };
            return Err(ValueError(format!(
                "price {shown} is out of range: use dollars per GPU-hour between 0 and {}",
                Self::MAX_DOLLARS
            )));
        }
        Ok(Price((dollars * Self::SCALE).round() as u64))
    }

    /// The largest price, in ten-thousandths of a dollar.
    pub const MAX: Price = Price(Self::MAX_DOLLARS as u64 * 10_000);

    /// A price of `units` ten-thousandths of a dollar, held to [`Price::MAX`] so that
    /// every price written reads back.
    pub fn from_ten_thousandths(units: u64) -> Price {
        Price(units.min(Self::MAX.0))
    }

    pub fn ten_thousandths(self) -> u64 {
        self.0
    }

    /// The price in ten-thousandths of a dollar.
    pub fn units(self) -> u64 {
        self.0
    }

    pub fn dollars(self) -> f64 {
        self.0 as f64 / Self::SCALE
    }

    /// This price raised by a fraction (`0.05` is 5%), rounded down to a whole unit so
    /// that a threshold never admits more than it says.
    pub fn raised_by(self, fraction: f64) -> Price {
        // The small epsilon absorbs float noise (6.00 × 1.05 must give exactly 6.30).
        Price::from_ten_thousandths((self.0 as f64 * (1.0 + fraction) + 1e-6).floor() as u64)
    }
}

impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${}/GPU-h", self.dollars())
    }
}

impl Serialize for Price {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.dollars())
    }
}

impl<'de> Deserialize<'de> for Price {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Price::from_dollars(f64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A moment in UTC, to the second. Written as RFC 3339 (`2025-01-21T09:00:00Z`).
///
/// Every value lies in RFC 3339's own range, years 0000 to 9999: construction and
/// arithmetic stop at [`Timestamp::MIN`] and [`Timestamp::MAX`], so whatever time a
/// deadline, a window or a duration produces is written with four digits and parses
/// back. A time outside the range would be written (`+10000-01-01T00:00:00Z`) in a form
/// the log's own parser refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// 0000-01-01T00:00:00Z.
    pub const MIN: Timestamp = Timestamp(-62_167_219_200);
    /// 9999-12-31T23:59:59Z.
    pub const MAX: Timestamp = Timestamp(253_402_300_799);

    /// The moment `seconds` after 1970-01-01T00:00:00Z, held to [`Timestamp::MIN`] and
    /// [`Timestamp::MAX`].
    pub fn from_unix_seconds(seconds: i64) -> Timestamp {
        Timestamp(seconds.clamp(Self::MIN.0, Self::MAX.0))
    }

    /// For constants: the caller gives a time in range.
    pub const fn from_unix_seconds_const(seconds: i64) -> Timestamp {
        assert!(seconds >= Self::MIN.0 && seconds <= Self::MAX.0);
        Timestamp(seconds)
    }

    pub fn unix_seconds(self) -> i64 {
        self.0
    }

    pub fn from_datetime(at: DateTime<Utc>) -> Timestamp {
        Timestamp::from_unix_seconds(at.timestamp())
    }

    pub fn to_datetime(self) -> DateTime<Utc> {
        Utc.timestamp_opt(self.0, 0)
            .single()
            .expect("years 0 to 9999 are valid datetimes")
    }

    /// Parses RFC 3339 with any offset; fractions of a second are refused because
    /// every time in rofr is whole seconds, and so are offsets that carry the moment
    /// out of the years 0000 to 9999 in UTC.
    pub fn parse(text: &str) -> Result<Timestamp, ValueError> {
        // RFC 3339 lets a space stand for the `T`; rofr's times have the `T`, as the
        // schemas it publishes say.
        if text
            .as_bytes()
            .get(10)
            .is_some_and(|b| !matches!(b, b'T' | b't'))
        {
            return Err(ValueError(format!(
                "`{text}` is not an RFC 3339 time with a `T` between date and time; write e.g. 2025-01-21T09:00:00Z"
            )));
        }
        let parsed = DateTime::parse_from_rfc3339(text).map_err(|e| {
            ValueError(format!(
                "`{text}` is not an RFC 3339 time ({e}); write e.g. 2025-01-21T09:00:00Z"
            ))
        })?;
        if parsed.timestamp_subsec_nanos() != 0 {
            return Err(ValueError(format!(
                "`{text}` has a fraction of a second; rofr keeps whole seconds"
            )));
        }
        let seconds = parsed.timestamp();
        if !(Self::MIN.0..=Self::MAX.0).contains(&seconds) {
            return Err(ValueError(format!(
                "`{text}` is outside the years 0000 to 9999 in UTC"
            )));
        }
        Ok(Timestamp(seconds))
    }

    /// The moment `seconds` later (earlier, if negative), held to the range.
    pub fn plus_seconds(self, seconds: i64) -> Timestamp {
        Timestamp::from_unix_seconds(self.0.saturating_add(seconds))
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC to the second, `2025-01-21T09:00:00Z`: every event carries a few,
    /// so they are written here without allocating, as `chrono` writes them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_text(|text| f.write_str(text))
    }
}

impl Timestamp {
    /// Appends the text (as `Display` writes it) to `out`, without the formatting
    /// machinery.
    pub fn push_to(self, out: &mut String) {
        self.with_text(|text| out.push_str(text));
    }

    /// Hands `use_text` the text, from a buffer on the stack.
    fn with_text<R>(self, use_text: impl FnOnce(&str) -> R) -> R {
        let text = self.rfc3339();
        use_text(std::str::from_utf8(&text).expect("ASCII"))
    }

    /// The text, from the days since 1970 by the civil calendar (Howard Hinnant's
    /// `civil_from_days`); every timestamp's year has four digits.
    fn rfc3339(self) -> [u8; 20] {
        let days = self.0.div_euclid(86_400);
        let second_of_day = self.0.rem_euclid(86_400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let day_of_era = z.rem_euclid(146_097);
        let year_of_era =
            (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let shifted_month = (5 * day_of_year + 2) / 153;
        let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
        let month = if shifted_month < 10 {
            shifted_month + 3
        } else {
            shifted_month - 9
        };
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        debug_assert!((0..=9999).contains(&year), "a timestamp in range");
        let mut text = *b"0000-00-00T00:00:00Z";
        let mut put = |at: usize, width: usize, mut value: i64| {
            for i in (at..at + width).rev() {
                text[i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, month);
        put(8, 2, day);
        put(11, 2, second_of_day / 3_600);
        put(14, 2, second_of_day / 60 % 60);
        put(17, 2, second_of_day % 60);
        text
    }
}

impl Serialize for Timestamp {
    /// The text as one string, not through `Display`: every event writes a few, and the
    /// formatting machinery around them cost more than the text itself.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.with_text(|text| s.serialize_str(text))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Timestamp::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// What `parse` takes for every id type, as a regular expression (for schemas).
pub const ID_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$";

/// The shape of the times [`Timestamp::parse`] takes: RFC 3339 without a fraction of
/// a second, with months, hours, minutes and seconds in range (the days of each month
/// and the range of years in UTC are checked apart).
pub const TIME_PATTERN: &str = concat!("^[0-9]{4}", time_after_year!());

/// [`TIME_PATTERN`] for the years `years` matches (a regular expression).
pub fn time_pattern_for_years(years: &str) -> String {
    format!("^({years}){}", time_after_year!())
}

/// The part of [`TIME_PATTERN`] after the year.
macro_rules! time_after_year {
    () => {
        concat!(
            "-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]",
            "([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
        )
    };
}
use time_after_year;

/// JSON schemas for the newtypes, for the HTTP API's OpenAPI document.
#[cfg(feature = "openapi")]
mod openapi {
    use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
    use utoipa::openapi::RefOr;

    use super::{ID_PATTERN, TIME_PATTERN};

    pub fn id(description: &str) -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(description))
            .min_length(Some(1))
            .max_length(Some(64))
            .pattern(Some(ID_PATTERN))
            .build()
            .into()
    }

    impl utoipa::PartialSchema for super::Gpus {
        fn schema() -> RefOr<Schema> {
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .description(Some("A count of GPUs"))
                .minimum(Some(0))
                .maximum(Some(u32::MAX))
                .build()
                .into()
        }
    }
    impl utoipa::ToSchema for super::Gpus {}

    impl utoipa::PartialSchema for super::Price {
        fn schema() -> RefOr<Schema> {
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .description(Some("US dollars per GPU-hour, to a ten-thousandth"))
                .minimum(Some(0))
                .maximum(Some(super::Price::MAX_DOLLARS))
                .build()
                .into()
        }
    }
    impl utoipa::ToSchema for super::Price {}

    impl utoipa::PartialSchema for super::Timestamp {
        fn schema() -> RefOr<Schema> {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
                .description(Some(
                    "RFC 3339 time in whole seconds, in the years 0000 to 9999 (UTC)",
                ))
                .pattern(Some(TIME_PATTERN))
                .build()
                .into()
        }
    }
    impl utoipa::ToSchema for super::Timestamp {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_order_and_compare_as_their_text_does() {
        let texts = [
            "p0", "p1", "p10", "p", "q", "P0", "azure", "azure-2", "a", "b0",
        ];
        for a in texts {
            for b in texts {
                let (x, y) = (ProviderId::parse(a).unwrap(), ProviderId::parse(b).unwrap());
                assert_eq!(x.cmp(&y), a.cmp(b), "{a} vs {b}");
                assert_eq!(x == y, a == b, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn prices_round_trip_through_json_as_short_decimals() {
        let price = Price::from_dollars(3.9).unwrap();
        assert_eq!(serde_json::to_string(&price).unwrap(), "3.9");
        assert_eq!(Price::from_dollars(6.98).unwrap().ten_thousandths(), 69_800);
    }

    #[test]
    fn a_raised_price_is_exact_at_the_threshold() {
        let offered = Price::from_dollars(6.0).unwrap();
        assert_eq!(offered.raised_by(0.05), Price::from_dollars(6.3).unwrap());
        assert_eq!(
            Price::from_dollars(3.33).unwrap().raised_by(0.1),
            Price::from_dollars(3.663).unwrap()
        );
    }

    #[test]
    fn negative_and_infinite_prices_are_refused() {
        assert!(Price::from_dollars(-1.0).is_err());
        assert!(Price::from_dollars(f64::INFINITY).is_err());
    }

    #[test]
    fn timestamps_print_as_utc_seconds() {
        let at = Timestamp::parse("2025-01-21T10:00:00+01:00").unwrap();
        assert_eq!(at.to_string(), "2025-01-21T09:00:00Z");
        assert!(Timestamp::parse("2025-01-21T09:00:00.5Z").is_err());
    }

    #[test]
    fn identifiers_refuse_spaces_and_empty_text() {
        assert!(ProviderId::parse("azure").is_ok());
        assert!(ProviderId::parse("").is_err());
        assert!(ProviderId::parse("az ure").is_err());
    }

    /// The text by `Display`, once it is checked that `push_to` and serialization give
    /// the same.
    fn every_text(t: Timestamp) -> String {
        let shown = t.to_string();
        let mut pushed = String::from("before ");
        t.push_to(&mut pushed);
        assert_eq!(pushed, format!("before {shown}"));
        assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{shown}\""));
        shown
    }

    fn by_chrono(t: Timestamp) -> String {
        t.to_datetime()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }

    #[test]
    fn times_are_written_as_chrono_writes_them_at_the_edges() {
        let edges = [
            0i64,
            -1,
            86_399,
            86_400,
            951_782_400,     // 2000-02-29
            4_107_542_399,   // 2100-02-28T23:59:59
            4_107_542_400,   // 2100-03-01
            -62_167_219_200, // 0000-01-01
            253_402_300_799, // 9999-12-31T23:59:59
        ];
        for t in edges.map(Timestamp::from_unix_seconds) {
            assert_eq!(every_text(t), by_chrono(t), "{}", t.unix_seconds());
        }
    }

    #[test]
    fn times_stop_at_the_ends_of_the_years_0000_to_9999() {
        let beyond = [i64::MIN, -62_167_219_201, 253_402_300_800, i64::MAX];
        for seconds in beyond {
            let t = Timestamp::from_unix_seconds(seconds);
            assert!(t == Timestamp::MIN || t == Timestamp::MAX, "{seconds}");
        }
        assert_eq!(Timestamp::MAX.plus_seconds(1), Timestamp::MAX);
        assert_eq!(Timestamp::MAX.plus_seconds(i64::MAX), Timestamp::MAX);
        assert_eq!(Timestamp::MIN.plus_seconds(i64::MIN), Timestamp::MIN);
        assert_eq!(Timestamp::MAX.to_string(), "9999-12-31T23:59:59Z");
        assert_eq!(Timestamp::MIN.to_string(), "0000-01-01T00:00:00Z");
        // Offsets that carry a written time out of the range are refused, not moved.
        assert!(Timestamp::parse("9999-12-31T23:59:59-01:00").is_err());
        assert!(Timestamp::parse("0000-01-01T00:00:00+01:00").is_err());
        assert_eq!(Timestamp::parse("9999-12-31T23:59:59Z"), Ok(Timestamp::MAX));
    }

    proptest::proptest! {
        #[test]
        fn times_are_written_as_chrono_writes_them(seconds in -70_000_000_000i64..260_000_000_000) {
            let t = Timestamp::from_unix_seconds(seconds);
            proptest::prop_assert_eq!(every_text(t), by_chrono(t));
        }

        #[test]
        fn every_time_reads_back_as_itself(seconds: i64, later: i64) {
            let t = Timestamp::from_unix_seconds(seconds).plus_seconds(later);
            proptest::prop_assert_eq!(Timestamp::parse(&t.to_string()), Ok(t));
            let json = serde_json::to_string(&t).unwrap();
            proptest::prop_assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
        }
    }
}
