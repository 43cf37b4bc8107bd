//! From TOML text to a typed [`Deal`]. Serde reads the shape (and refuses unknown keys
//! with their position); this module then turns every raw value into its type and
//! collects every error it finds, each with file:line:column, key and a hint.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{NaiveDate, NaiveDateTime, NaiveTime, TimeZone};
use chrono_tz::Tz;
use serde::Deserialize;
use toml::value::Datetime;
use toml::Spanned;

use super::*;
use crate::diagnostic::{Diagnostic, SourceMap};
use crate::duration::WeekdayName;
use crate::types::ValueError;

/// The most base usage a cap counts for one provider, in GPU-hours or dollars: far
/// above any real usage, and small enough that a cap is judged in exact integers
/// ([`crate::cap`]) without overflow.
pub const MAX_BASE: f64 = 1e15;

/// The most first-refusal clauses a deal may have: a need's state names its clause
/// in 16 bits.
pub const MAX_FIRST_REFUSALS: usize = u16::MAX as usize;

/// The shortest `sourcing.retry_after`, in seconds.
const MIN_RETRY_SECONDS: i64 = 60;

type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeal {
    deal: S<RawHeader>,
    calendar: Option<S<RawCalendar>>,
    sourcing: Option<S<RawSourcing>>,
    #[serde(default)]
    provider: Vec<S<RawProvider>>,
    #[serde(default)]
    first_refusal: Vec<S<RawFirstRefusal>>,
    #[serde(default)]
    concentration_cap: Vec<S<RawCap>>,
    #[serde(default)]
    commitment: Vec<S<RawCommitment>>,
    #[serde(default)]
    placement_restriction: Vec<S<RawRestriction>>,
    #[serde(default)]
    approval: Vec<S<RawApproval>>,
    #[serde(default)]
    witness: Vec<S<RawWitness>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    name: S<String>,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCalendar {
    time_zone: Option<S<String>>,
    weekend: Option<Vec<S<String>>>,
    #[serde(default)]
    holidays: Vec<S<Datetime>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSourcing {
    quote_window: Option<S<String>>,
    confirm_window: Option<S<String>>,
    retry_after: Option<S<String>>,
    allocation: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    id: S<String>,
    name: Option<String>,
    #[serde(default)]
    skus: Vec<S<String>>,
    #[serde(default)]
    regions: Vec<S<String>>,
    max_gpus: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFirstRefusal {
    name: Option<String>,
    holder: S<String>,
    variant: S<String>,
    window: S<String>,
    #[serde(default)]
    partial: bool,
    reoffer_threshold: Option<S<f64>>,
    third_party_window: Option<S<String>>,
    term: S<RawTerm>,
    #[serde(default)]
    offer_prices: BTreeMap<String, S<f64>>,
    on_delivery_failure: Option<S<String>>,
    scope: Option<S<RawScope>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTerm {
    from: S<Datetime>,
    until: Option<S<Datetime>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScope {
    #[serde(default)]
    skus: Vec<S<String>>,
    #[serde(default)]
    regions: Vec<S<String>>,
    #[serde(default)]
    workloads: Vec<S<String>>,
    #[serde(default)]
    tags: Vec<S<String>>,
    #[serde(default)]
    exclude_tags: Vec<S<String>>,
    gpus: Option<S<RawGpuRange>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGpuRange {
    min: Option<S<i64>>,
    max: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCap {
    name: Option<String>,
    max_share: S<f64>,
    window: Option<S<String>>,
    #[serde(default = "yes")]
    binds_holder: bool,
    hhi_alert: Option<S<f64>>,
    basis: Option<S<String>>,
    #[serde(default)]
    providers: Vec<S<String>>,
    #[serde(default)]
    base: BTreeMap<String, S<f64>>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommitment {
    name: Option<String>,
    provider: S<String>,
    min_gpu_hours: Option<S<f64>>,
    min_spend: Option<S<f64>>,
    period: S<RawTerm>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRestriction {
    name: Option<String>,
    tags: S<Vec<S<String>>>,
    providers: S<Vec<S<String>>>,
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApproval {
    name: Option<String>,
    min_value: Option<S<f64>>,
    #[serde(default)]
    non_holder: bool,
    #[serde(default)]
    providers: Vec<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWitness {
    name: S<String>,
    key: S<String>,
    url: S<String>,
    #[serde(default = "yes")]
    required: bool,
}

/// Parses a deal file. On failure, every error found is returned, in file order.
///
/// `file` is the name used in locations (usually the path as the user typed it).
pub fn parse_deal(file: &str, text: &str) -> Result<Deal, Vec<Diagnostic>> {
    let map = SourceMap::new(file, text);
    let raw: RawDeal = toml::from_str(text).map_err(|error| {
        let offset = error.span().map(|s| s.start).unwrap_or(0);
        let message = error.message().to_owned();
        let help = hint_for_serde_message(&message);
        let mut diagnostic = Diagnostic::error("invalid-toml", map.location(offset), message);
        if let Some(help) = help {
            diagnostic = diagnostic.help(help);
        }
        vec![diagnostic]
    })?;
    let mut cx = Cx {
        map,
        errors: Vec::new(),
    };
    let deal = cx.deal(raw);
    if cx.errors.is_empty() {
        Ok(deal)
    } else {
        cx.errors
            .sort_by_key(|d| (d.location.line, d.location.column));
        Err(cx.errors)
    }
}

fn hint_for_serde_message(message: &str) -> Option<String> {
    if message.contains("missing field `deal`") {
        Some("a deal file starts with a [deal] table holding its `name`".into())
    } else if message.contains("expected a TOML datetime") || message.contains("datetime") {
        Some("write dates unquoted, as TOML dates: `from = 2025-01-21`".into())
    } else if message.contains("unknown field") {
        Some("check the spelling against the keys listed in the message".into())
    } else {
        None
    }
}

struct Cx<'a> {
    map: SourceMap<'a>,
    errors: Vec<Diagnostic>,
}

impl Cx<'_> {
    fn at(&self, span: std::ops::Range<usize>) -> Location {
        self.map.location(span.start)
    }

    fn fail(&mut self, span: std::ops::Range<usize>, key: String, error: ValueError) {
        let diagnostic = Diagnostic::error("invalid-value", self.at(span), error.0).key(key);
        self.errors.push(diagnostic);
    }

    fn value<T>(
        &mut self,
        raw: &S<String>,
        key: impl Into<String>,
        parse: impl Fn(&str) -> Result<T, ValueError>,
    ) -> Option<T> {
        match parse(raw.get_ref()) {
            Ok(value) => Some(value),
            Err(error) => {
                self.fail(raw.span(), key.into(), error);
                None
            }
        }
    }

    fn set<T: Ord>(
        &mut self,
        raw: &[S<String>],
        key: &str,
        parse: impl Fn(&str) -> Result<T, ValueError>,
    ) -> BTreeSet<T> {
        raw.iter()
            .enumerate()
            .filter_map(|(i, item)| self.value(item, format!("{key}[{i}]"), &parse))
            .collect()
    }

    fn duration(&mut self, raw: &S<String>, key: impl Into<String>) -> Option<DealDuration> {
        self.value(raw, key, DealDuration::parse)
    }

    fn count(&mut self, raw: &S<i64>, key: impl Into<String>, min: i64) -> Option<Gpus> {
        let value = *raw.get_ref();
        match u32::try_from(value).ok().filter(|v| i64::from(*v) >= min) {
            Some(v) => Some(Gpus(v)),
            None => {
                self.fail(
                    raw.span(),
                    key.into(),
                    ValueError(format!(
                        "{value} is not a valid GPU count: use a whole number from {min} to {}",
                        u32::MAX
                    )),
                );
                None
            }
        }
    }

    fn fraction(
        &mut self,
        raw: &S<f64>,
        key: impl Into<String>,
        low_exclusive: bool,
        what: &str,
    ) -> Option<f64> {
        let value = *raw.get_ref();
        let ok = value.is_finite()
            && value <= 1.0
            && if low_exclusive {
                value > 0.0
            } else {
                value >= 0.0
            };
        if ok {
            Some(value)
        } else {
            let range = if low_exclusive { "(0, 1]" } else { "[0, 1]" };
            self.fail(
                raw.span(),
                key.into(),
                ValueError(format!(
                    "{value} is not a valid {what}: use a fraction in {range}, e.g. 0.4 for 40%"
                )),
            );
            None
        }
    }

    fn non_negative(&mut self, raw: &S<f64>, key: impl Into<String>, what: &str) -> Option<f64> {
        let value = *raw.get_ref();
        if value.is_finite() && value >= 0.0 {
            Some(value)
        } else {
            self.fail(
                raw.span(),
                key.into(),
                ValueError(format!("{value} is not a valid {what}: use a number ≥ 0")),
            );
            None
        }
    }

    fn moment(
        &mut self,
        raw: &S<Datetime>,
        key: impl Into<String>,
        time_zone: Tz,
    ) -> Option<Timestamp> {
        match datetime_to_timestamp(raw.get_ref(), time_zone) {
            Ok(at) => Some(at),
            Err(error) => {
                self.fail(raw.span(), key.into(), error);
                None
            }
        }
    }

    fn term(&mut self, raw: &S<RawTerm>, key: &str, time_zone: Tz) -> Option<Term> {
        let term = raw.get_ref();
        let from = self.moment(&term.from, format!("{key}.from"), time_zone);
        let until = match &term.until {
            Some(until) => Some(self.moment(until, format!("{key}.until"), time_zone)?),
            None => None,
        };
        let from = from?;
        if let (Some(until), Some(raw_until)) = (until, &term.until) {
            if until <= from {
                self.fail(
                    raw_until.span(),
                    format!("{key}.until"),
                    ValueError(format!(
                        "the term ends ({until}) before it starts ({from}): `until` must be later than `from`"
                    )),
                );
                return None;
            }
        }
        Some(Term { from, until })
    }

    fn clause(
        &self,
        kind: &'static str,
        index: usize,
        name: &Option<String>,
        span: std::ops::Range<usize>,
    ) -> ClauseRef {
        ClauseRef {
            kind,
            index,
            name: name.clone(),
            location: self.at(span),
        }
    }

    fn deal(&mut self, raw: RawDeal) -> Deal {
        let header = raw.deal.get_ref();
        let name = header.name.get_ref().trim().to_owned();
        if name.is_empty() {
            self.fail(
                header.name.span(),
                "deal.name".into(),
                ValueError(
                    "the deal's name is empty: give it a short name such as \"stargate\"".into(),
                ),
            );
        }
        let calendar = raw
            .calendar
            .as_ref()
            .map(|c| self.calendar(c.get_ref()))
            .unwrap_or_default();
        let time_zone = calendar.time_zone;
        let sourcing = raw
            .sourcing
            .as_ref()
            .map(|s| self.sourcing(s.get_ref()))
            .unwrap_or_default();
        let providers = self.providers(&raw.provider);
        if raw.first_refusal.len() > MAX_FIRST_REFUSALS {
            self.fail(
                raw.deal.span(),
                "first_refusal".into(),
                ValueError(format!(
                    "{} first_refusal clauses: a deal has at most {MAX_FIRST_REFUSALS}",
                    raw.first_refusal.len()
                )),
            );
        }
        let first_refusals = raw
            .first_refusal
            .iter()
            .enumerate()
            .filter_map(|(i, clause)| self.first_refusal(i, clause, time_zone))
            .collect();
        let caps = raw
            .concentration_cap
            .iter()
            .enumerate()
            .filter_map(|(i, clause)| self.cap(i, clause))
            .collect();
        let commitments = raw
            .commitment
            .iter()
            .enumerate()
            .filter_map(|(i, clause)| self.commitment(i, clause, time_zone))
            .collect();
        let restrictions = raw
            .placement_restriction
            .iter()
            .enumerate()
            .filter_map(|(i, clause)| self.restriction(i, clause))
            .collect();
        let approvals = raw
            .approval
            .iter()
            .enumerate()
            .filter_map(|(i, clause)| self.approval(i, clause))
            .collect();
        let witnesses = self.witnesses(&raw.witness);
        Deal {
            name,
            file: self.map.location(0).file,
            location: self.at(raw.deal.span()),
            providers,
            calendar,
            sourcing,
            first_refusals,
            caps,
            commitments,
            restrictions,
            approvals,
            witnesses,
        }
    }

    fn witnesses(&mut self, raw: &[S<RawWitness>]) -> Vec<Witness> {
        let mut witnesses: Vec<Witness> = Vec::new();
        for (index, w) in raw.iter().enumerate() {
            let key = format!("witness[{index}]");
            let r = w.get_ref();
            let name = r.name.get_ref().trim().to_owned();
            if name.is_empty() {
                self.fail(
                    r.name.span(),
                    format!("{key}.name"),
                    ValueError("a witness's name is empty: name the party, e.g. \"azure\"".into()),
                );
            } else if witnesses.iter().any(|other| other.name == name) {
                self.fail(
                    r.name.span(),
                    format!("{key}.name"),
                    ValueError(format!("another witness is named `{name}`")),
                );
            }
            let verifier = self.value(&r.key, format!("{key}.key"), cosigner_key);
            let url = self.value(&r.url, format!("{key}.url"), witness_url);
            if let (Some(verifier_key), Some(url)) = (verifier, url) {
                if witnesses.iter().any(|other| other.key == verifier_key) {
                    self.fail(
                        r.key.span(),
                        format!("{key}.key"),
                        ValueError("another witness has this key".into()),
                    );
                }
                witnesses.push(Witness {
                    name,
                    key: verifier_key,
                    url,
                    required: r.required,
                    location: self.at(w.span()),
                });
            }
        }
        witnesses
    }

    fn calendar(&mut self, raw: &RawCalendar) -> Calendar {
        let mut calendar = Calendar::default();
        if let Some(zone) = &raw.time_zone {
            if let Some(tz) = self.value(zone, "calendar.time_zone", |text| {
                text.parse::<Tz>().map_err(|_| {
                    ValueError(format!(
                        "`{text}` is not an IANA time zone: write e.g. \"America/New_York\" or \"UTC\""
                    ))
                })
            }) {
                calendar.time_zone = tz;
            }
        }
        if let Some(weekend) = &raw.weekend {
            calendar.weekend = self.set(weekend, "calendar.weekend", WeekdayName::parse);
        }
        for (i, holiday) in raw.holidays.iter().enumerate() {
            match datetime_to_date(holiday.get_ref()) {
                Ok(date) => {
                    calendar.holidays.insert(date);
                }
                Err(error) => self.fail(holiday.span(), format!("calendar.holidays[{i}]"), error),
            }
        }
        calendar
    }

    fn sourcing(&mut self, raw: &RawSourcing) -> Sourcing {
        let mut sourcing = Sourcing::default();
        let fields = [
            (
                &raw.quote_window,
                "sourcing.quote_window",
                &mut sourcing.quote_window,
            ),
            (
                &raw.confirm_window,
                "sourcing.confirm_window",
                &mut sourcing.confirm_window,
            ),
            (
                &raw.retry_after,
                "sourcing.retry_after",
                &mut sourcing.retry_after,
            ),
        ];
        for (raw, key, slot) in fields {
            if let Some(raw) = raw {
                if let Some(duration) = self.duration(raw, key) {
                    *slot = duration;
                }
            }
        }
        // An unplaced need is sourced again after each retry, until its decision: a
        // retry of seconds would write events as fast as the clock ticks.
        if let Some(raw) = &raw.retry_after {
            if matches!(sourcing.retry_after, DealDuration::Exact { seconds } if seconds < MIN_RETRY_SECONDS)
            {
                self.fail(
                    raw.span(),
                    "sourcing.retry_after".into(),
                    ValueError(format!(
                        "`{}` is too short: an unplaced need is sourced again after each retry, so wait at least {}s",
                        raw.get_ref(),
                        MIN_RETRY_SECONDS
                    )),
                );
            }
        }
        if let Some(raw) = &raw.allocation {
            if let Some(allocation) = self.value(raw, "sourcing.allocation", Allocation::parse) {
                sourcing.allocation = allocation;
            }
        }
        sourcing
    }

    fn providers(&mut self, raw: &[S<RawProvider>]) -> Vec<Provider> {
        let mut providers: Vec<Provider> = Vec::new();
        for (i, entry) in raw.iter().enumerate() {
            let p = entry.get_ref();
            let key = format!("provider[{i}]");
            let Some(id) = self.value(&p.id, format!("{key}.id"), ProviderId::parse) else {
                continue;
            };
            if let Some(first) = providers.iter().find(|other| other.id == id) {
                let diagnostic = Diagnostic::error(
                    "duplicate-provider",
                    self.at(p.id.span()),
                    format!("provider `{id}` is declared twice"),
                )
                .key(format!("{key}.id"))
                .help(format!(
                    "the first declaration is at {}; merge the two",
                    first.location
                ));
                self.errors.push(diagnostic);
                continue;
            }
            let skus = self.set(&p.skus, &format!("{key}.skus"), Sku::parse);
            let regions = self.set(&p.regions, &format!("{key}.regions"), Region::parse);
            let max_gpus = p
                .max_gpus
                .as_ref()
                .and_then(|m| self.count(m, format!("{key}.max_gpus"), 0));
            providers.push(Provider {
                id,
                name: p.name.clone(),
                skus,
                regions,
                max_gpus,
                location: self.at(entry.span()),
            });
        }
        providers
    }

    fn first_refusal(
        &mut self,
        index: usize,
        raw: &S<RawFirstRefusal>,
        time_zone: Tz,
    ) -> Option<FirstRefusal> {
        let clause_ref = self.clause("first_refusal", index, &raw.get_ref().name, raw.span());
        let fr = raw.get_ref();
        let key = format!("first_refusal[{index}]");
        let holder = self.value(&fr.holder, format!("{key}.holder"), ProviderId::parse);
        let variant = self.value(&fr.variant, format!("{key}.variant"), |text| match text {
            "first_offer" => Ok(Variant::FirstOffer),
            "last_look" => Ok(Variant::LastLook),
            "negotiate" => Ok(Variant::Negotiate),
            other => Err(ValueError(format!(
                "`{other}` is not a first-refusal variant: use \"first_offer\", \"last_look\" or \"negotiate\""
            ))),
        });
        let window = self.duration(&fr.window, format!("{key}.window"));
        let reoffer_threshold = match &fr.reoffer_threshold {
            Some(raw) => self.fraction(
                raw,
                format!("{key}.reoffer_threshold"),
                false,
                "re-offer threshold",
            ),
            None => Some(0.0),
        };
        let third_party_window = match &fr.third_party_window {
            Some(raw) => Some(self.duration(raw, format!("{key}.third_party_window"))?),
            None => None,
        };
        let term = self.term(&fr.term, &format!("{key}.term"), time_zone);
        let mut offer_prices = BTreeMap::new();
        for (sku, price) in &fr.offer_prices {
            let price_key = format!("{key}.offer_prices.{sku}");
            let sku = match Sku::parse(sku) {
                Ok(sku) => sku,
                Err(error) => {
                    self.fail(price.span(), price_key, error);
                    continue;
                }
            };
            match Price::from_dollars(*price.get_ref()) {
                Ok(p) => {
                    offer_prices.insert(sku, p);
                }
                Err(error) => self.fail(price.span(), price_key, error),
            }
        }
        let on_delivery_failure = match &fr.on_delivery_failure {
            Some(raw) => self.value(
                raw,
                format!("{key}.on_delivery_failure"),
                |text| match text {
                    "holder_first" => Ok(Redelivery::HolderFirst),
                    "sourcing" => Ok(Redelivery::Sourcing),
                    other => Err(ValueError(format!(
                        "`{other}` is not a redelivery rule: use \"holder_first\" or \"sourcing\""
                    ))),
                },
            ),
            None => Some(Redelivery::HolderFirst),
        };
        let scope = match &fr.scope {
            Some(scope) => self.scope(scope, &format!("{key}.scope")),
            None => Some(Scope {
                skus: BTreeSet::new(),
                regions: BTreeSet::new(),
                workloads: BTreeSet::new(),
                tags: BTreeSet::new(),
                exclude_tags: BTreeSet::new(),
                gpus: GpuRange {
                    min: Gpus(1),
                    max: None,
                },
                location: clause_ref.location.clone(),
            }),
        };
        Some(FirstRefusal {
            holder_location: self.at(fr.holder.span()),
            clause: clause_ref,
            holder: holder?,
            scope: scope?,
            variant: variant?,
            window: window?,
            partial: fr.partial,
            reoffer_threshold: reoffer_threshold?,
            third_party_window,
            term: term?,
            offer_prices,
            on_delivery_failure: on_delivery_failure?,
        })
    }

    fn scope(&mut self, raw: &S<RawScope>, key: &str) -> Option<Scope> {
        let s = raw.get_ref();
        let gpus = match &s.gpus {
            Some(range) => {
                let r = range.get_ref();
                let min = match &r.min {
                    Some(min) => self.count(min, format!("{key}.gpus.min"), 1)?,
                    None => Gpus(1),
                };
                let max = match &r.max {
                    Some(max) => Some(self.count(max, format!("{key}.gpus.max"), 1)?),
                    None => None,
                };
                GpuRange { min, max }
            }
            None => GpuRange {
                min: Gpus(1),
                max: None,
            },
        };
        Some(Scope {
            skus: self.set(&s.skus, &format!("{key}.skus"), Sku::parse),
            regions: self.set(&s.regions, &format!("{key}.regions"), Region::parse),
            workloads: self.set(&s.workloads, &format!("{key}.workloads"), Workload::parse),
            tags: self.set(&s.tags, &format!("{key}.tags"), Tag::parse),
            exclude_tags: self.set(&s.exclude_tags, &format!("{key}.exclude_tags"), Tag::parse),
            gpus,
            location: self.at(raw.span()),
        })
    }

    fn cap(&mut self, index: usize, raw: &S<RawCap>) -> Option<ConcentrationCap> {
        let clause = self.clause("concentration_cap", index, &raw.get_ref().name, raw.span());
        let c = raw.get_ref();
        let key = format!("concentration_cap[{index}]");
        let max_share = self.fraction(&c.max_share, format!("{key}.max_share"), true, "share");
        let window = match &c.window {
            Some(raw) => Some(self.duration(raw, format!("{key}.window"))?),
            None => None,
        };
        let hhi_alert = match &c.hhi_alert {
            Some(raw) => {
                let value = *raw.get_ref();
                if value.is_finite() && (0.0..=10_000.0).contains(&value) {
                    Some(value)
                } else {
                    self.fail(
                        raw.span(),
                        format!("{key}.hhi_alert"),
                        ValueError(format!(
                            "{value} is not an HHI: use a number from 0 to 10000 (1800 marks a highly concentrated market)"
                        )),
                    );
                    return None;
                }
            }
            None => None,
        };
        let basis = match &c.basis {
            Some(raw) => self.value(raw, format!("{key}.basis"), |text| match text {
                "gpu_hours" => Ok(CapBasis::GpuHours),
                "spend" => Ok(CapBasis::Spend),
                other => Err(ValueError(format!(
                    "`{other}` is not a cap basis: use \"gpu_hours\" or \"spend\""
                ))),
            })?,
            None => CapBasis::GpuHours,
        };
        let providers = self.set(&c.providers, &format!("{key}.providers"), ProviderId::parse);
        let mut base = BTreeMap::new();
        for (provider, amount) in &c.base {
            let base_key = format!("{key}.base.{provider}");
            let Some(value) = self.non_negative(amount, base_key.clone(), "base usage") else {
                continue;
            };
            if value > MAX_BASE {
                let error = ValueError(format!(
                    "{value} is more base usage than a cap counts: use at most {MAX_BASE:e}"
                ));
                self.fail(amount.span(), base_key, error);
                continue;
            }
            match ProviderId::parse(provider) {
                Ok(id) => {
                    base.insert(id, value);
                }
                Err(error) => self.fail(amount.span(), base_key, error),
            }
        }
        Some(ConcentrationCap {
            clause,
            max_share: max_share?,
            window,
            binds_holder: c.binds_holder,
            hhi_alert,
            basis,
            providers,
            base,
        })
    }

    fn commitment(
        &mut self,
        index: usize,
        raw: &S<RawCommitment>,
        time_zone: Tz,
    ) -> Option<Commitment> {
        let clause = self.clause("commitment", index, &raw.get_ref().name, raw.span());
        let c = raw.get_ref();
        let key = format!("commitment[{index}]");
        let provider = self.value(&c.provider, format!("{key}.provider"), ProviderId::parse);
        let min_gpu_hours = match &c.min_gpu_hours {
            Some(raw) => {
                Some(self.non_negative(raw, format!("{key}.min_gpu_hours"), "GPU-hour minimum")?)
            }
            None => None,
        };
        let min_spend = match &c.min_spend {
            Some(raw) => {
                Some(self.non_negative(raw, format!("{key}.min_spend"), "spend minimum")?)
            }
            None => None,
        };
        if min_gpu_hours.is_none() && min_spend.is_none() {
            let diagnostic = Diagnostic::error(
                "empty-commitment",
                clause.location.clone(),
                "the commitment sets neither `min_gpu_hours` nor `min_spend`",
            )
            .key(key.clone())
            .help("add `min_gpu_hours = 1000000` or `min_spend = 5000000`");
            self.errors.push(diagnostic);
        }
        let period = self.term(&c.period, &format!("{key}.period"), time_zone);
        Some(Commitment {
            provider_location: self.at(c.provider.span()),
            clause,
            provider: provider?,
            min_gpu_hours,
            min_spend,
            period: period?,
        })
    }

    fn restriction(
        &mut self,
        index: usize,
        raw: &S<RawRestriction>,
    ) -> Option<PlacementRestriction> {
        let clause = self.clause(
            "placement_restriction",
            index,
            &raw.get_ref().name,
            raw.span(),
        );
        let r = raw.get_ref();
        let key = format!("placement_restriction[{index}]");
        let tags = self.set(r.tags.get_ref(), &format!("{key}.tags"), Tag::parse);
        let providers = self.set(
            r.providers.get_ref(),
            &format!("{key}.providers"),
            ProviderId::parse,
        );
        for (list, field, example) in [
            (
                r.tags.get_ref().is_empty(),
                &r.tags.span(),
                "tags = [\"windsurf\"]",
            ),
            (
                r.providers.get_ref().is_empty(),
                &r.providers.span(),
                "providers = [\"azure\"]",
            ),
        ] {
            if list {
                let name = if example.starts_with("tags") {
                    "tags"
                } else {
                    "providers"
                };
                self.fail(
                    field.clone(),
                    format!("{key}.{name}"),
                    ValueError(format!(
                        "a restriction with no {name} restricts nothing: write e.g. `{example}`"
                    )),
                );
            }
        }
        Some(PlacementRestriction {
            clause,
            tags,
            providers,
            reason: r.reason.clone(),
        })
    }

    fn approval(&mut self, index: usize, raw: &S<RawApproval>) -> Option<Approval> {
        let clause = self.clause("approval", index, &raw.get_ref().name, raw.span());
        let a = raw.get_ref();
        let key = format!("approval[{index}]");
        let min_value = match &a.min_value {
            Some(raw) => Some(self.non_negative(raw, format!("{key}.min_value"), "award value")?),
            None => None,
        };
        let providers = self.set(&a.providers, &format!("{key}.providers"), ProviderId::parse);
        Some(Approval {
            clause,
            min_value,
            non_holder: a.non_holder,
            providers,
        })
    }
}

/// Checks a C2SP `tlog-cosignature/v1` verifier key's text:
/// `<name>+<key ID>+<base64(0x04 ‖ 32-byte Ed25519 key)>`, the ID matching.
fn cosigner_key(text: &str) -> Result<String, ValueError> {
    use base64::Engine as _;
    use sha2::Digest as _;
    let text = text.trim();
    let shape = || {
        ValueError(format!(
            "`{text}` is not a witness's verifier key: `<name>+<8 hex digits>+<base64>`, as `rofr witness key` prints it"
        ))
    };
    let mut parts = text.splitn(3, '+');
    let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(shape());
    };
    if name.is_empty() || name.chars().any(char::is_whitespace) || id.len() != 8 {
        return Err(shape());
    }
    let id = u32::from_str_radix(id, 16).map_err(|_| shape())?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| shape())?;
    match bytes.as_slice() {
        [0x04, public @ ..] if public.len() == 32 => {
            let mut h = sha2::Sha256::new();
            h.update(name.as_bytes());
            h.update([0x0A, 0x04]);
            h.update(public);
            let digest = h.finalize();
            if u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) != id {
                return Err(ValueError(format!(
                    "the key ID in `{text}` does not match its key: the text was changed"
                )));
            }
            Ok(text.to_owned())
        }
        [0x01, ..] => Err(ValueError(
            "this is a log's verifier key (type 0x01); a witness cosigns with a tlog-cosignature/v1 key (type 0x04)".into(),
        )),
        _ => Err(shape()),
    }
}

/// A witness's submission prefix: an http:// or https:// URL with a host.
fn witness_url(text: &str) -> Result<String, ValueError> {
    let text = text.trim().trim_end_matches('/');
    let rest = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"))
        .ok_or_else(|| {
            ValueError(format!(
                "`{text}` is not an http:// or https:// URL: write e.g. \"http://127.0.0.1:8091\""
            ))
        })?;
    if rest.is_empty() || rest.starts_with('/') || rest.chars().any(char::is_whitespace) {
        return Err(ValueError(format!("`{text}` names no host")));
    }
    Ok(text.to_owned())
}

fn datetime_to_date(value: &Datetime) -> Result<NaiveDate, ValueError> {
    match (&value.date, &value.time) {
        (Some(date), None) => NaiveDate::from_ymd_opt(
            i32::from(date.year),
            u32::from(date.month),
            u32::from(date.day),
        )
        .ok_or_else(|| ValueError(format!("{value} is not a calendar date"))),
        _ => Err(ValueError(format!(
            "{value} is not a plain date: write e.g. 2025-12-25"
        ))),
    }
}

/// A TOML date is midnight in the deal's time zone; a local date-time is read in that
/// zone too; an offset date-time is exact.
fn datetime_to_timestamp(value: &Datetime, time_zone: Tz) -> Result<Timestamp, ValueError> {
    let Some(date) = &value.date else {
        return Err(ValueError(format!(
            "{value} has no date: write e.g. 2025-01-21"
        )));
    };
    let day = NaiveDate::from_ymd_opt(
        i32::from(date.year),
        u32::from(date.month),
        u32::from(date.day),
    )
    .ok_or_else(|| ValueError(format!("{value} is not a calendar date")))?;
    let time = match &value.time {
        Some(t) => NaiveTime::from_hms_opt(
            u32::from(t.hour),
            u32::from(t.minute),
            u32::from(t.second.unwrap_or(0)),
        )
        .ok_or_else(|| ValueError(format!("{value} is not a valid time of day")))?,
        None => NaiveTime::MIN,
    };
    let naive = NaiveDateTime::new(day, time);
    let seconds = match &value.offset {
        Some(toml::value::Offset::Z) => naive.and_utc().timestamp(),
        Some(toml::value::Offset::Custom { minutes }) => {
            naive.and_utc().timestamp() - i64::from(*minutes) * 60
        }
        None => time_zone
            .from_local_datetime(&naive)
            .earliest()
            .map(|at| at.timestamp())
            .ok_or_else(|| ValueError(format!("{value} does not exist in {time_zone}")))?,
    };
    Ok(Timestamp::from_unix_seconds(seconds))
}
