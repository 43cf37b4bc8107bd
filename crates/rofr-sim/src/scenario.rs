//! The scenario file (TOML): horizon and step, the deal, demand, provider models, the
//! strategies to compare, runs and seed. Every error names file:line:column and the key.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Arc;

use rofr_engine::deal::Deal;
use rofr_engine::diagnostic::{Diagnostic, SourceMap};
use rofr_engine::duration::DealDuration;
use rofr_engine::types::{Price, ProviderId, Region, Sku, Tag, Timestamp, ValueError, Workload};
use serde::Deserialize;
use toml::value::Datetime;
use toml::Spanned as S;

/// A sourcing strategy the simulator compares. Each is the scenario's deal changed in
/// one way and run by the same engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Strategy {
    /// Only the holder is ever asked or awarded.
    Exclusive,
    /// The deal's right of first refusal as a `first_offer` right.
    FirstOffer,
    /// The deal's right as a `last_look` right.
    LastLook,
    /// No right and no caps: the cheapest quotes win.
    OpenMarket,
    /// The deal with every provider, the holder included, capped at `[scenario] cap`.
    Capped,
    /// No right and no caps; providers tried in the deal's order, each giving what it
    /// quotes (the failover of multi-cloud launchers).
    Ordered,
    /// The deal as it is, amended as the scenario's `[[amendment]]`s schedule: set
    /// beside `first_offer` (the right kept throughout), it shows what the amendments
    /// did. Only for a scenario that schedules one.
    Amended,
}

impl Strategy {
    pub const ALL: [Strategy; 6] = [
        Strategy::Exclusive,
        Strategy::FirstOffer,
        Strategy::LastLook,
        Strategy::OpenMarket,
        Strategy::Capped,
        Strategy::Ordered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Exclusive => "exclusive",
            Strategy::FirstOffer => "first_offer",
            Strategy::LastLook => "last_look",
            Strategy::OpenMarket => "open_market",
            Strategy::Capped => "capped",
            Strategy::Ordered => "ordered",
            Strategy::Amended => "amended",
        }
    }

    pub fn parse(text: &str) -> Result<Strategy, ValueError> {
        Strategy::ALL
            .into_iter()
            .chain([Strategy::Amended])
            .find(|s| s.as_str() == text)
            .ok_or_else(|| {
                let names: Vec<&str> = Strategy::ALL
                    .iter()
                    .chain(&[Strategy::Amended])
                    .map(|s| s.as_str())
                    .collect();
                ValueError(format!(
                    "no strategy `{text}`: choose from {}",
                    names.join(", ")
                ))
            })
    }
}

/// One kind of launch: what it needs and when.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchSpec {
    pub name: String,
    pub sku: Sku,
    pub regions: BTreeSet<Region>,
    pub gpus: u32,
    pub hours: u32,
    /// How late the launch may start, in seconds.
    pub flexibility: i64,
    pub workload: Workload,
    pub tags: BTreeSet<Tag>,
    pub max_price: Price,
}

impl LaunchSpec {
    /// A copy sharing no id with this one (see `Deal::detached`).
    pub fn detached(&self) -> LaunchSpec {
        LaunchSpec {
            sku: self.sku.detached(),
            regions: self.regions.iter().map(Region::detached).collect(),
            workload: self.workload.detached(),
            tags: self.tags.iter().map(Tag::detached).collect(),
            ..self.clone()
        }
    }
}

/// A launch on a fixed date.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub date: Timestamp,
    pub spec: LaunchSpec,
}

/// Launches recurring every `every` seconds from `from` until `until`.
#[derive(Debug, Clone, PartialEq)]
pub struct Stream {
    pub every: i64,
    pub from: Timestamp,
    pub until: Option<Timestamp>,
    pub spec: LaunchSpec,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Demand {
    /// Growth of recurring demand per 30 days, compounding (0.05 = 5%).
    pub growth: f64,
    /// Spread of each launch's GPUs: the standard deviation of its logarithm.
    pub noise: f64,
    /// How long before its date a launch's needs are submitted, in seconds.
    pub lead: i64,
    /// Needs per launch, at most.
    pub split: u32,
    pub launches: Vec<Launch>,
    pub streams: Vec<Stream>,
}

/// Capacity of a provider for the buyer from `from` on, for one sku (and region).
#[derive(Debug, Clone, PartialEq)]
pub struct CapacityStep {
    pub from: Timestamp,
    pub sku: Sku,
    pub region: Option<Region>,
    pub gpus: u32,
}

/// How a simulated provider behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderModel {
    pub id: ProviderId,
    /// Seconds between being asked and answering.
    pub answer_delay: i64,
    /// Seconds between an award and the earliest start the provider can give.
    pub lead_time: i64,
    pub decline_probability: f64,
    pub silence_probability: f64,
    pub failure_probability: f64,
    /// Dollars per GPU-hour by sku at the scenario's start.
    pub prices: BTreeMap<Sku, f64>,
    /// Relative price change per 30 days, compounding.
    pub price_drift: f64,
    pub capacity: Vec<CapacityStep>,
}

/// An amendment the scenario schedules: the deal file it brings in, from when, and
/// what becomes of the needs open then.
#[derive(Debug, Clone)]
pub struct ScheduledAmendment {
    pub file: String,
    pub text: String,
    pub deal: Arc<Deal>,
    pub effective: Timestamp,
    pub open_needs: rofr_engine::log::OpenNeeds,
}

/// Reads an amendment's deal file, named as the scenario writes it: its path and text.
pub type Load<'a> = &'a mut dyn FnMut(&str) -> Result<(String, String), String>;

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub deal: Arc<Deal>,
    pub start: Timestamp,
    pub end: Timestamp,
    /// The reporting step, in seconds.
    pub step: i64,
    pub runs: u32,
    pub seed: u64,
    pub strategies: Vec<Strategy>,
    /// The share every provider is held to under `capped`.
    pub cap: f64,
    pub demand: Demand,
    pub providers: Vec<ProviderModel>,
    /// Amendments to the deal, in date order, that the `amended` strategy runs.
    pub amendments: Vec<ScheduledAmendment>,
    /// Things that parse but will not behave as the author likely means: a provider
    /// that answers after its windows close, a provider of the deal nobody modelled.
    pub warnings: Vec<Diagnostic>,
}

impl Scenario {
    /// Number of reporting steps over the horizon.
    pub fn steps(&self) -> usize {
        let span = self.end.unix_seconds() - self.start.unix_seconds();
        ((span + self.step - 1) / self.step).max(1) as usize
    }

    /// The holder of the deal's first right of first refusal, if it has one.
    pub fn holder(&self) -> Option<&ProviderId> {
        self.deal.first_refusals.first().map(|fr| &fr.holder)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    scenario: RawHeader,
    demand: RawDemand,
    #[serde(default)]
    provider: Vec<S<RawProvider>>,
    #[serde(default)]
    amendment: Vec<S<RawAmendment>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAmendment {
    /// The new version's deal file, relative to the scenario.
    deal: S<String>,
    date: S<Datetime>,
    #[serde(default)]
    open_needs: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    name: String,
    deal: S<String>,
    start: S<Datetime>,
    end: S<Datetime>,
    #[serde(default)]
    step: Option<S<String>>,
    #[serde(default)]
    runs: Option<S<i64>>,
    #[serde(default)]
    seed: Option<S<i64>>,
    #[serde(default)]
    strategies: Option<Vec<S<String>>>,
    #[serde(default)]
    cap: Option<S<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDemand {
    #[serde(default)]
    growth: Option<S<f64>>,
    #[serde(default)]
    noise: Option<S<f64>>,
    #[serde(default)]
    lead: Option<S<String>>,
    #[serde(default)]
    split: Option<S<i64>>,
    #[serde(default)]
    launch: Vec<RawLaunch>,
    #[serde(default)]
    stream: Vec<RawLaunch>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLaunch {
    name: String,
    /// A launch's date; for a stream, its first.
    #[serde(default)]
    date: Option<S<Datetime>>,
    #[serde(default)]
    every: Option<S<String>>,
    #[serde(default)]
    until: Option<S<Datetime>>,
    sku: S<String>,
    #[serde(default)]
    regions: Vec<S<String>>,
    gpus: S<i64>,
    hours: S<i64>,
    #[serde(default)]
    flexibility: Option<S<String>>,
    workload: S<String>,
    #[serde(default)]
    tags: Vec<S<String>>,
    max_price: S<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    id: S<String>,
    #[serde(default)]
    answer_delay: Option<S<String>>,
    #[serde(default)]
    lead_time: Option<S<String>>,
    #[serde(default)]
    decline_probability: Option<S<f64>>,
    #[serde(default)]
    silence_probability: Option<S<f64>>,
    #[serde(default)]
    failure_probability: Option<S<f64>>,
    prices: BTreeMap<String, S<f64>>,
    #[serde(default)]
    price_drift: Option<S<f64>>,
    capacity: Vec<RawCapacity>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapacity {
    from: S<Datetime>,
    sku: S<String>,
    #[serde(default)]
    region: Option<S<String>>,
    gpus: S<i64>,
}

/// The deal path a scenario names, resolved against the scenario file's directory,
/// with where it was written.
pub struct DealReference {
    pub path: std::path::PathBuf,
    pub location: rofr_engine::diagnostic::Location,
}

/// Reads the `[scenario] deal` path without judging the rest, so the caller can load
/// the deal the scenario is built on.
pub fn deal_reference(file: &str, text: &str) -> Result<DealReference, Vec<Diagnostic>> {
    #[derive(Deserialize)]
    struct Only {
        scenario: OnlyHeader,
    }
    #[derive(Deserialize)]
    struct OnlyHeader {
        deal: S<String>,
    }
    let map = SourceMap::new(file, text);
    let only: Only = toml::from_str(text).map_err(|e| vec![toml_error(&map, &e)])?;
    let dir = std::path::Path::new(file)
        .parent()
        .unwrap_or(std::path::Path::new(""));
    Ok(DealReference {
        path: dir.join(only.scenario.deal.get_ref()),
        location: map.location(only.scenario.deal.span().start),
    })
}

fn toml_error(map: &SourceMap<'_>, error: &toml::de::Error) -> Diagnostic {
    let offset = error.span().map(|s| s.start).unwrap_or(0);
    let mut diagnostic = Diagnostic::error("invalid-toml", map.location(offset), error.message());
    if error.message().contains("unknown field") {
        diagnostic = diagnostic.help("check the spelling against the keys listed in the message");
    } else if error.message().contains("datetime") {
        diagnostic = diagnostic.help("write dates unquoted, as TOML dates: `start = 2025-01-01`");
    }
    diagnostic
}

/// Parses a scenario; `deal` is the deal its `[scenario] deal` names, already parsed.
/// Every error is collected, each with its file:line:column and key.
pub fn parse_scenario(
    file: &str,
    text: &str,
    deal: Arc<Deal>,
) -> Result<Scenario, Vec<Diagnostic>> {
    parse_scenario_with(file, text, deal, &mut |_| {
        Err("amendments are read only from files (`rofr simulate`)".into())
    })
}

/// [`parse_scenario`], reading each amendment's deal file with `load`.
pub fn parse_scenario_with(
    file: &str,
    text: &str,
    deal: Arc<Deal>,
    load: Load<'_>,
) -> Result<Scenario, Vec<Diagnostic>> {
    let map = SourceMap::new(file, text);
    let raw: RawScenario = toml::from_str(text).map_err(|e| vec![toml_error(&map, &e)])?;
    let mut cx = Cx {
        map,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let amendments = cx.amendments(&raw.amendment, &deal, load);
    let scheduled = !raw.amendment.is_empty();
    let scenario = cx.scenario(raw, deal).map(|mut s| {
        if !amendments.is_empty() && !s.strategies.contains(&Strategy::Amended) {
            s.strategies.push(Strategy::Amended);
        }
        s.amendments = amendments;
        s
    });
    if let Some(s) = &scenario {
        // Where an amendment failed to read, that error says so already.
        if s.strategies.contains(&Strategy::Amended) && !scheduled {
            cx.fail(
                0..0,
                "scenario.strategies",
                "`amended` needs an [[amendment]] to run",
            );
        }
    }
    if cx.errors.is_empty() {
        let mut scenario = scenario.expect("no errors means a scenario");
        scenario.warnings = cx.warnings;
        Ok(scenario)
    } else {
        cx.errors
            .sort_by_key(|d| (d.location.line, d.location.column));
        Err(cx.errors)
    }
}

struct Cx<'a> {
    map: SourceMap<'a>,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl Cx<'_> {
    fn fail(&mut self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) {
        let diagnostic =
            Diagnostic::error("invalid-value", self.map.location(span.start), message).key(key);
        self.errors.push(diagnostic);
    }

    fn parsed<T>(
        &mut self,
        raw: &S<String>,
        key: impl Into<String>,
        parse: impl Fn(&str) -> Result<T, ValueError>,
    ) -> Option<T> {
        match parse(raw.get_ref()) {
            Ok(value) => Some(value),
            Err(error) => {
                self.fail(raw.span(), key, error.0);
                None
            }
        }
    }

    fn seconds(&mut self, raw: &Option<S<String>>, key: &str, default: i64) -> i64 {
        let Some(raw) = raw else {
            return default;
        };
        self.parsed(raw, key, DealDuration::parse)
            .map_or(default, |d| d.nominal_seconds())
    }

    fn date(&mut self, raw: &S<Datetime>, key: impl Into<String>) -> Option<Timestamp> {
        let value = raw.get_ref();
        match (&value.date, &value.time) {
            (Some(date), None) => {
                let day = chrono::NaiveDate::from_ymd_opt(
                    i32::from(date.year),
                    u32::from(date.month),
                    u32::from(date.day),
                );
                match day {
                    Some(day) => Some(Timestamp::from_unix_seconds(
                        day.and_hms_opt(0, 0, 0)
                            .expect("midnight")
                            .and_utc()
                            .timestamp(),
                    )),
                    None => {
                        self.fail(raw.span(), key, format!("{value} is not a calendar date"));
                        None
                    }
                }
            }
            _ => {
                self.fail(
                    raw.span(),
                    key,
                    format!("{value} is not a plain date: write e.g. 2025-06-01 (midnight UTC)"),
                );
                None
            }
        }
    }

    fn probability(&mut self, raw: &Option<S<f64>>, key: &str) -> f64 {
        match raw {
            None => 0.0,
            Some(p) if (0.0..=1.0).contains(p.get_ref()) => *p.get_ref(),
            Some(p) => {
                self.fail(
                    p.span(),
                    key,
                    format!("a probability lies in [0, 1], not {}", p.get_ref()),
                );
                0.0
            }
        }
    }

    fn count(&mut self, raw: &S<i64>, key: impl Into<String>, max: i64) -> Option<u32> {
        let value = *raw.get_ref();
        if (1..=max).contains(&value) {
            Some(value as u32)
        } else {
            self.fail(
                raw.span(),
                key,
                format!("must be between 1 and {max}, not {value}"),
            );
            None
        }
    }

    fn scenario(&mut self, raw: RawScenario, deal: Arc<Deal>) -> Option<Scenario> {
        let header = &raw.scenario;
        let start = self.date(&header.start, "scenario.start");
        let end = self.date(&header.end, "scenario.end");
        if let (Some(start), Some(end)) = (start, end) {
            if end <= start {
                self.fail(
                    header.end.span(),
                    "scenario.end",
                    format!("the horizon ends ({end}) before it starts ({start})"),
                );
            }
        }
        let step = self.seconds(&header.step, "scenario.step", 7 * 86_400);
        if step <= 0 {
            let span = header.step.as_ref().map(|s| s.span()).unwrap_or(0..0);
            self.fail(span, "scenario.step", "the step must be longer than zero");
        }
        let runs = match &header.runs {
            Some(raw) => self.count(raw, "scenario.runs", 100_000),
            None => Some(100),
        };
        let seed = match &header.seed {
            Some(raw) if *raw.get_ref() < 0 => {
                self.fail(raw.span(), "scenario.seed", "a seed is a whole number ≥ 0");
                None
            }
            Some(raw) => Some(*raw.get_ref() as u64),
            None => Some(1),
        };
        let strategies = match &header.strategies {
            None if deal.caps.first().is_none_or(|c| c.base.is_empty()) => Strategy::ALL
                .into_iter()
                .filter(|s| *s != Strategy::Capped)
                .collect(),
            None => Strategy::ALL.to_vec(),
            Some(list) => {
                let mut out = Vec::new();
                for (i, s) in list.iter().enumerate() {
                    if let Some(strategy) =
                        self.parsed(s, format!("scenario.strategies[{i}]"), Strategy::parse)
                    {
                        let no_base = deal.caps.first().is_none_or(|c| c.base.is_empty());
                        if strategy == Strategy::Capped && no_base {
                            self.fail(
                                s.span(),
                                format!("scenario.strategies[{i}]"),
                                "`capped` judges shares award by award against usage already held: give the deal's first concentration_cap a `base` (its window is used too)",
                            );
                        }
                        if out.contains(&strategy) {
                            self.fail(
                                s.span(),
                                format!("scenario.strategies[{i}]"),
                                format!("`{}` is listed twice", strategy.as_str()),
                            );
                        }
                        out.push(strategy);
                    }
                }
                if list.is_empty() {
                    self.fail(
                        header.deal.span(),
                        "scenario.strategies",
                        "name at least one strategy",
                    );
                }
                out
            }
        };
        let cap = match &header.cap {
            Some(raw) if !(*raw.get_ref() > 0.0 && *raw.get_ref() <= 1.0) => {
                self.fail(
                    raw.span(),
                    "scenario.cap",
                    format!("a share lies in (0, 1], not {}", raw.get_ref()),
                );
                0.4
            }
            Some(raw) => *raw.get_ref(),
            None => 0.4,
        };
        let demand = self.demand(&raw.demand);
        let providers: Vec<ProviderModel> = raw
            .provider
            .iter()
            .enumerate()
            .filter_map(|(i, p)| self.provider(i, p, &deal))
            .collect();
        let mut seen = BTreeSet::new();
        for (i, p) in raw.provider.iter().enumerate() {
            if !seen.insert(p.get_ref().id.get_ref().clone()) {
                self.fail(
                    p.get_ref().id.span(),
                    format!("provider[{i}].id"),
                    "this provider is modelled twice",
                );
            }
        }
        for provider in &deal.providers {
            if !raw
                .provider
                .iter()
                .any(|p| p.get_ref().id.get_ref() == provider.id.as_str())
            {
                let warning = Diagnostic::warning(
                    "provider-not-modelled",
                    self.map.location(header.deal.span().start),
                    format!(
                        "the deal names `{}` but no [[provider]] models it: it will never answer",
                        provider.id
                    ),
                )
                .key("provider");
                self.warnings.push(warning);
            }
        }
        if raw.provider.is_empty() {
            self.fail(
                header.deal.span(),
                "provider",
                "model at least one provider with [[provider]]",
            );
        }
        Some(Scenario {
            name: header.name.clone(),
            deal,
            start: start?,
            end: end?,
            step,
            runs: runs?,
            seed: seed?,
            strategies,
            cap,
            demand: demand?,
            providers,
            amendments: Vec::new(),
            warnings: Vec::new(),
        })
    }

    /// Each `[[amendment]]`: its deal file read and parsed (it must keep the deal's
    /// name), its date, its rule; in date order, no two on one date.
    fn amendments(
        &mut self,
        raw: &[S<RawAmendment>],
        deal: &Deal,
        load: Load<'_>,
    ) -> Vec<ScheduledAmendment> {
        let mut out: Vec<ScheduledAmendment> = Vec::new();
        for (i, amendment) in raw.iter().enumerate() {
            let key = |k: &str| format!("amendment[{i}].{k}");
            let a = amendment.get_ref();
            let effective = self.date(&a.date, key("date"));
            let open_needs = match &a.open_needs {
                None => Some(rofr_engine::log::OpenNeeds::Keep),
                Some(raw) => self.parsed(raw, key("open_needs"), |t| t.parse().map_err(ValueError)),
            };
            let loaded = match load(a.deal.get_ref()) {
                Ok((file, text)) => match rofr_engine::deal::parse_deal(&file, &text) {
                    Ok(parsed) if parsed.name == deal.name => Some((file, text, parsed)),
                    Ok(parsed) => {
                        self.fail(
                            a.deal.span(),
                            key("deal"),
                            format!(
                                "an amendment keeps the deal's name: {file} names it `{}`, not `{}`",
                                parsed.name, deal.name
                            ),
                        );
                        None
                    }
                    Err(errors) => {
                        let first = errors.first().map(ToString::to_string).unwrap_or_default();
                        self.fail(
                            a.deal.span(),
                            key("deal"),
                            format!("the deal does not parse: {first}"),
                        );
                        None
                    }
                },
                Err(error) => {
                    self.fail(a.deal.span(), key("deal"), error);
                    None
                }
            };
            let (Some(effective), Some(open_needs), Some((file, text, parsed))) =
                (effective, open_needs, loaded)
            else {
                continue;
            };
            if out.last().is_some_and(|last| last.effective >= effective) {
                self.fail(
                    a.date.span(),
                    key("date"),
                    "amendments take effect in date order, each after the one before",
                );
                continue;
            }
            out.push(ScheduledAmendment {
                file,
                text,
                deal: Arc::new(parsed),
                effective,
                open_needs,
            });
        }
        out
    }

    fn demand(&mut self, raw: &RawDemand) -> Option<Demand> {
        let growth = match &raw.growth {
            Some(g) if *g.get_ref() <= -1.0 || !g.get_ref().is_finite() => {
                self.fail(
                    g.span(),
                    "demand.growth",
                    format!("growth per 30 days must be above -1, not {}", g.get_ref()),
                );
                0.0
            }
            Some(g) => *g.get_ref(),
            None => 0.0,
        };
        let noise = match &raw.noise {
            Some(n) if !(0.0..=3.0).contains(n.get_ref()) => {
                self.fail(
                    n.span(),
                    "demand.noise",
                    format!("noise lies in [0, 3], not {}", n.get_ref()),
                );
                0.0
            }
            Some(n) => *n.get_ref(),
            None => 0.0,
        };
        let lead = self.seconds(&raw.lead, "demand.lead", 14 * 86_400);
        let split = match &raw.split {
            Some(s) => self.count(s, "demand.split", 1_000).unwrap_or(1),
            None => 1,
        };
        let mut launches = Vec::new();
        for (i, l) in raw.launch.iter().enumerate() {
            let key = format!("demand.launch[{i}]");
            let spec = self.launch_spec(l, &key);
            let date = match &l.date {
                Some(d) => self.date(d, format!("{key}.date")),
                None => {
                    self.fail(
                        l.sku.span(),
                        format!("{key}.date"),
                        "a launch needs a `date`",
                    );
                    None
                }
            };
            if let Some(every) = &l.every {
                self.fail(
                    every.span(),
                    format!("{key}.every"),
                    "`every` belongs to [[demand.stream]]",
                );
            }
            if let (Some(date), Some(spec)) = (date, spec) {
                launches.push(Launch { date, spec });
            }
        }
        let mut streams = Vec::new();
        for (i, l) in raw.stream.iter().enumerate() {
            let key = format!("demand.stream[{i}]");
            let spec = self.launch_spec(l, &key);
            let from = match &l.date {
                Some(d) => self.date(d, format!("{key}.date")),
                None => {
                    self.fail(
                        l.sku.span(),
                        format!("{key}.date"),
                        "a stream needs the `date` of its first launch",
                    );
                    None
                }
            };
            let until = l
                .until
                .as_ref()
                .and_then(|u| self.date(u, format!("{key}.until")));
            let every = self.seconds(&l.every, &format!("{key}.every"), 0);
            if every < 3600 {
                let span = l.every.as_ref().map(|s| s.span()).unwrap_or(l.sku.span());
                self.fail(
                    span,
                    format!("{key}.every"),
                    "a stream needs `every`, at least an hour",
                );
            }
            if let (Some(from), Some(spec)) = (from, spec) {
                streams.push(Stream {
                    every,
                    from,
                    until,
                    spec,
                });
            }
        }
        Some(Demand {
            growth,
            noise,
            lead,
            split,
            launches,
            streams,
        })
    }

    fn launch_spec(&mut self, raw: &RawLaunch, key: &str) -> Option<LaunchSpec> {
        let sku = self.parsed(&raw.sku, format!("{key}.sku"), Sku::parse);
        let regions: BTreeSet<Region> = raw
            .regions
            .iter()
            .enumerate()
            .filter_map(|(i, r)| self.parsed(r, format!("{key}.regions[{i}]"), Region::parse))
            .collect();
        let gpus = self.count(&raw.gpus, format!("{key}.gpus"), 10_000_000);
        let hours = self.count(&raw.hours, format!("{key}.hours"), 24 * 366 * 5);
        let flexibility = self.seconds(&raw.flexibility, &format!("{key}.flexibility"), 0);
        let workload = self.parsed(&raw.workload, format!("{key}.workload"), Workload::parse);
        let tags = raw
            .tags
            .iter()
            .enumerate()
            .filter_map(|(i, t)| self.parsed(t, format!("{key}.tags[{i}]"), Tag::parse))
            .collect();
        let max_price = match Price::from_dollars(*raw.max_price.get_ref()) {
            Ok(p) if p.dollars() > 0.0 => Some(p),
            Ok(_) => {
                self.fail(
                    raw.max_price.span(),
                    format!("{key}.max_price"),
                    "the maximum price must be above zero",
                );
                None
            }
            Err(e) => {
                self.fail(raw.max_price.span(), format!("{key}.max_price"), e.0);
                None
            }
        };
        Some(LaunchSpec {
            name: raw.name.clone(),
            sku: sku?,
            regions,
            gpus: gpus?,
            hours: hours?,
            flexibility,
            workload: workload?,
            tags,
            max_price: max_price?,
        })
    }

    /// Warns where a provider answers only after the window it answers in has closed.
    fn late_answers(
        &mut self,
        raw: &RawProvider,
        key: &str,
        id: &ProviderId,
        delay: i64,
        deal: &Deal,
    ) {
        let span = raw
            .answer_delay
            .as_ref()
            .map_or(raw.id.span(), |d| d.span());
        let mut windows = vec![("quote window", deal.sourcing.quote_window.nominal_seconds())];
        if let Some(fr) = deal.first_refusals.iter().find(|fr| &fr.holder == id) {
            windows.push(("first-refusal window", fr.window.nominal_seconds()));
        }
        for (what, window) in windows {
            if delay >= window {
                let warning = Diagnostic::warning(
                    "answers-too-late",
                    self.map.location(span.start),
                    format!(
                        "`{id}` answers {} h after being asked, when the deal's {what} of {} h has closed: its answers will all be too late",
                        delay / 3600,
                        window / 3600
                    ),
                )
                .key(format!("{key}.answer_delay"));
                self.warnings.push(warning);
            }
        }
    }

    fn provider(&mut self, i: usize, raw: &S<RawProvider>, deal: &Deal) -> Option<ProviderModel> {
        let raw = raw.get_ref();
        let key = format!("provider[{i}]");
        let id = self.parsed(&raw.id, format!("{key}.id"), ProviderId::parse)?;
        if !deal.providers.iter().any(|p| p.id == id) {
            let known: Vec<String> = deal.providers.iter().map(|p| p.id.to_string()).collect();
            self.fail(
                raw.id.span(),
                format!("{key}.id"),
                format!(
                    "the deal names no provider `{id}` (it names {})",
                    known.join(", ")
                ),
            );
        }
        let answer_delay = self.seconds(&raw.answer_delay, &format!("{key}.answer_delay"), 3600);
        self.late_answers(raw, &key, &id, answer_delay, deal);
        let lead_time = self.seconds(&raw.lead_time, &format!("{key}.lead_time"), 0);
        let decline_probability = self.probability(
            &raw.decline_probability,
            &format!("{key}.decline_probability"),
        );
        let silence_probability = self.probability(
            &raw.silence_probability,
            &format!("{key}.silence_probability"),
        );
        let failure_probability = self.probability(
            &raw.failure_probability,
            &format!("{key}.failure_probability"),
        );
        let mut prices = BTreeMap::new();
        for (sku, price) in &raw.prices {
            let Some(sku) = self.parsed(
                &S::new(0..0, sku.clone()),
                format!("{key}.prices.{sku}"),
                Sku::parse,
            ) else {
                continue;
            };
            if !(price.get_ref().is_finite() && *price.get_ref() > 0.0) {
                self.fail(
                    price.span(),
                    format!("{key}.prices.{sku}"),
                    format!("a price is above zero, not {}", price.get_ref()),
                );
                continue;
            }
            prices.insert(sku, *price.get_ref());
        }
        let price_drift = match &raw.price_drift {
            Some(d) if *d.get_ref() <= -1.0 || !d.get_ref().is_finite() => {
                self.fail(
                    d.span(),
                    format!("{key}.price_drift"),
                    "drift per 30 days must be above -1",
                );
                0.0
            }
            Some(d) => *d.get_ref(),
            None => 0.0,
        };
        let mut capacity = Vec::new();
        for (j, c) in raw.capacity.iter().enumerate() {
            let ckey = format!("{key}.capacity[{j}]");
            let from = self.date(&c.from, format!("{ckey}.from"));
            let sku = self.parsed(&c.sku, format!("{ckey}.sku"), Sku::parse);
            let region = c
                .region
                .as_ref()
                .and_then(|r| self.parsed(r, format!("{ckey}.region"), Region::parse));
            let gpus = *c.gpus.get_ref();
            if !(0..=100_000_000).contains(&gpus) {
                self.fail(
                    c.gpus.span(),
                    format!("{ckey}.gpus"),
                    format!("GPUs lie between 0 and 100,000,000, not {gpus}"),
                );
                continue;
            }
            if let (Some(sku), Some(from)) = (&sku, from) {
                if !prices.contains_key(sku) {
                    self.fail(
                        c.sku.span(),
                        format!("{ckey}.sku"),
                        format!("no price for {sku}: add it to `prices`"),
                    );
                }
                capacity.push(CapacityStep {
                    from,
                    sku: sku.clone(),
                    region,
                    gpus: gpus as u32,
                });
            }
        }
        capacity.sort_by_key(|c| c.from);
        Some(ProviderModel {
            id,
            answer_delay,
            lead_time,
            decline_probability,
            silence_probability,
            failure_probability,
            prices,
            price_drift,
            capacity,
        })
    }
}
