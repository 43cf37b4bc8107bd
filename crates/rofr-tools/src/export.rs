//! `rofr export`: confirmed awards written in the formats of the tools that launch and
//! account for the compute: SkyPilot's config, dstack fleets, a Karpenter
//! `EC2NodeClass` fragment, and FOCUS 1.2 cost rows. `docs/integrations.md` says what
//! each output holds.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
use serde_json::{json, Value};

/// One confirmed award, with what the outputs need of its need.
#[derive(Debug, Clone, PartialEq)]
pub struct Award {
    pub need: String,
    pub award: u64,
    pub provider: String,
    pub sku: String,
    pub gpus: u64,
    pub hours: u64,
    pub price_per_gpu_hour: f64,
    pub reservation: String,
    /// The reservation runs `hours` from here: the need's earliest start.
    pub start: DateTime<Utc>,
    pub regions: Vec<String>,
    pub launch: Option<String>,
    pub workload: String,
    pub tags: Vec<String>,
}

impl Award {
    pub fn end(&self) -> DateTime<Utc> {
        self.start + Duration::hours(self.hours as i64)
    }

    fn label(&self) -> String {
        format!("{}/{}", self.need, self.award)
    }

    /// The confirmed awards of one need as the API shows it (`GET /v1/needs/{id}`):
    /// those with a reservation, confirmed or already completed.
    pub fn of_need(need: &Value) -> Result<Vec<Award>, String> {
        let id = need["id"].as_str().ok_or("a need without an `id`")?;
        let text = |v: &Value, field: &str| -> Result<String, String> {
            v[field]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("need {id}: no `{field}`"))
        };
        let number = |v: &Value, field: &str| -> Result<u64, String> {
            v[field]
                .as_u64()
                .ok_or_else(|| format!("need {id}: no whole `{field}`"))
        };
        let start = text(need, "earliest_start")?;
        let start = DateTime::parse_from_rfc3339(&start)
            .map_err(|e| format!("need {id}: `earliest_start` {start:?}: {e}"))?
            .with_timezone(&Utc);
        let list = |field: &str| -> Vec<String> {
            need[field]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut awards = Vec::new();
        for award in need["awards"].as_array().into_iter().flatten() {
            if !matches!(award["status"].as_str(), Some("confirmed" | "completed")) {
                continue;
            }
            let Some(reservation) = award["reservation"].as_str() else {
                continue;
            };
            awards.push(Award {
                need: id.to_owned(),
                award: number(award, "award")?,
                provider: text(award, "provider")?,
                sku: text(need, "sku")?,
                gpus: number(award, "gpus")?,
                hours: number(need, "hours")?,
                price_per_gpu_hour: award["price_per_gpu_hour"]
                    .as_f64()
                    .ok_or_else(|| format!("need {id}: no `price_per_gpu_hour`"))?,
                reservation: reservation.to_owned(),
                start,
                regions: list("regions"),
                launch: need["launch"].as_str().map(str::to_owned),
                workload: need["workload"].as_str().unwrap_or_default().to_owned(),
                tags: list("tags"),
            });
        }
        Ok(awards)
    }
}

/// Which awards go out: those of the named needs, of one launch, and whose time
/// overlaps the period `[from, to)`; each filter applies where given.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub needs: BTreeSet<String>,
    pub launch: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

impl Selection {
    pub fn keeps(&self, award: &Award) -> bool {
        (self.needs.is_empty() || self.needs.contains(&award.need))
            && self
                .launch
                .as_ref()
                .is_none_or(|l| award.launch.as_ref() == Some(l))
            && self.from.is_none_or(|from| award.end() > from)
            && self.to.is_none_or(|to| award.start < to)
    }
}

/// The clouds the launch tools know, by their own names; a provider whose id is one
/// of these is taken to be that cloud unless told otherwise.
pub const CLOUDS: &[&str] = &[
    "aws",
    "gcp",
    "azure",
    "oci",
    "kubernetes",
    "lambda",
    "runpod",
    "nebius",
    "vastai",
    "cudo",
    "tensordock",
];

const NO_CLOUD: &str = "no known cloud; name it with --cloud PROVIDER=CLOUD";

/// Each provider's cloud, where the tools should know it as one.
#[derive(Debug, Clone, Default)]
pub struct Clouds(BTreeMap<String, String>);

impl Clouds {
    /// `PROVIDER=CLOUD` pairs, as `--cloud` takes them.
    pub fn parse(pairs: &[String]) -> Result<Clouds, String> {
        let mut map = BTreeMap::new();
        for pair in pairs {
            let (provider, cloud) = pair
                .split_once('=')
                .filter(|(p, c)| !p.is_empty() && !c.is_empty())
                .ok_or_else(|| {
                    format!("--cloud {pair:?}: write PROVIDER=CLOUD, e.g. oracle=oci")
                })?;
            if !CLOUDS.contains(&cloud) {
                return Err(format!(
                    "--cloud {pair:?}: unknown cloud `{cloud}`; use one of {}",
                    CLOUDS.join(", ")
                ));
            }
            map.insert(provider.to_owned(), cloud.to_owned());
        }
        Ok(Clouds(map))
    }

    pub fn of(&self, provider: &str) -> Option<&str> {
        self.0
            .get(provider)
            .map(String::as_str)
            .or_else(|| CLOUDS.iter().copied().find(|c| *c == provider))
    }
}

/// An output and what it had to leave out, so the command can say so.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub text: String,
    /// Awards the format has no place for.
    pub left_out: Vec<LeftOut>,
}

/// An award a format has no place for, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct LeftOut {
    pub award: String,
    pub provider: String,
    pub reservation: String,
    pub why: String,
}

impl LeftOut {
    fn new(award: &Award, why: String) -> LeftOut {
        LeftOut {
            award: award.label(),
            provider: award.provider.clone(),
            reservation: award.reservation.clone(),
            why,
        }
    }
}

/// One line per provider and reason: how many awards were left out, and the first few.
pub fn left_out_lines(left_out: &[LeftOut]) -> Vec<String> {
    let mut groups: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for l in left_out {
        groups
            .entry((l.provider.as_str(), l.why.as_str()))
            .or_default()
            .push(l.reservation.as_str());
    }
    groups
        .into_iter()
        .map(|((provider, why), reservations)| {
            let shown: Vec<&str> = reservations.iter().take(3).copied().collect();
            format!(
                "{} award{} with {provider} ({}{}): {why}",
                reservations.len(),
                if reservations.len() == 1 { "" } else { "s" },
                shown.join(", "),
                if reservations.len() > shown.len() {
                    ", …"
                } else {
                    ""
                }
            )
        })
        .collect()
}

/// Block YAML with every string double-quoted. YAML 1.1 readers (PyYAML, which SkyPilot
/// and dstack use) read a plain `yes`, `on` or `2025-01-01` as a boolean or a date,
/// and YAML emitters leave those plain, so a reservation id could change type on the
/// way; quoting every string, with YAML's escapes for what is not printable, keeps
/// each one text.
fn yaml(value: &Value) -> String {
    match value {
        Value::Object(map) if map.is_empty() => "{}\n".into(),
        Value::Array(list) if list.is_empty() => "[]\n".into(),
        Value::Object(_) | Value::Array(_) => block(value, 0),
        scalar => format!("{}\n", yaml_scalar(scalar)),
    }
}

fn block(value: &Value, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut out = String::new();
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                let key = yaml_key(key);
                match v {
                    Value::Object(m) if !m.is_empty() => {
                        out.push_str(&format!("{pad}{key}:\n{}", block(v, indent + 2)));
                    }
                    Value::Array(l) if !l.is_empty() => {
                        out.push_str(&format!("{pad}{key}:\n{}", block(v, indent)));
                    }
                    _ => out.push_str(&format!("{pad}{key}: {}\n", yaml_scalar(v))),
                }
            }
        }
        Value::Array(list) => {
            for item in list {
                let inner = match item {
                    Value::Object(m) if !m.is_empty() => block(item, indent + 2),
                    Value::Array(l) if !l.is_empty() => block(item, indent + 2),
                    _ => format!("{pad}  {}\n", yaml_scalar(item)),
                };
                // The item's first line takes the dash in place of its indentation.
                out.push_str(&format!("{pad}- {}", &inner[indent + 2..]));
            }
        }
        scalar => out.push_str(&format!("{pad}{}\n", yaml_scalar(scalar))),
    }
    out
}

fn yaml_scalar(value: &Value) -> String {
    match value {
        Value::String(s) => yaml_quoted(s),
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
        other => other.to_string(),
    }
}

/// Keys are this module's own names; any other is quoted.
fn yaml_key(key: &str) -> String {
    let plain = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        key.to_owned()
    } else {
        yaml_quoted(key)
    }
}

fn yaml_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}') => {
                out.push_str(&format!("\\u{:04X}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Comment lines; a character that could end a YAML comment line (a control
/// character, NEL among them, or the Unicode line and paragraph separators) is written
/// escaped.
fn comment_block(lines: &[String]) -> String {
    let safe = |line: &str| -> String {
        line.chars()
            .map(|c| {
                if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
                    c.escape_unicode().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect()
    };
    lines.iter().map(|l| format!("# {}\n", safe(l))).collect()
}

fn summary_line(awards: &[Award]) -> String {
    let needs: BTreeSet<&str> = awards.iter().map(|a| a.need.as_str()).collect();
    format!(
        "{} confirmed award{} of {} need{}",
        awards.len(),
        if awards.len() == 1 { "" } else { "s" },
        needs.len(),
        if needs.len() == 1 { "" } else { "s" }
    )
}

/// GPUs on one machine for an award: eight where they divide evenly, as on the
/// eight-GPU machines these skus ship in, else the largest power of two that does.
fn gpus_per_node(gpus: u64) -> u64 {
    [8, 4, 2, 1]
        .into_iter()
        .find(|n| gpus % n == 0)
        .unwrap_or(1)
}

/// SkyPilot reads reservations from its config (`~/.sky/config.yaml`, a project's
/// `.sky.yaml`, or the file `SKYPILOT_CONFIG` names), under `aws` and `gcp`.
pub fn skypilot(awards: &[Award], clouds: &Clouds) -> Output {
    let mut by_cloud: BTreeMap<&str, Vec<&Award>> = BTreeMap::new();
    let mut left_out = Vec::new();
    for award in awards {
        match clouds.of(&award.provider) {
            Some(cloud @ ("aws" | "gcp")) => by_cloud.entry(cloud).or_default().push(award),
            Some(cloud) => left_out.push(LeftOut::new(
                award,
                format!("SkyPilot takes reservations for aws and gcp only, not {cloud}"),
            )),
            None => left_out.push(LeftOut::new(award, NO_CLOUD.into())),
        }
    }
    let mut config = serde_json::Map::new();
    let mut notes = vec![
        format!(
            "SkyPilot config written by rofr export: {}",
            summary_line(awards)
        ),
        "use it as ~/.sky/config.yaml, a project's .sky.yaml, or SKYPILOT_CONFIG=<file>".into(),
    ];
    for (cloud, list) in &by_cloud {
        let reservations: BTreeSet<&str> = list.iter().map(|a| a.reservation.as_str()).collect();
        config.insert(
            (*cloud).to_owned(),
            json!({"prioritize_reservations": true, "specific_reservations": reservations}),
        );
        for a in list {
            let per_node = gpus_per_node(a.gpus);
            notes.push(format!(
                "{} {}: resources accelerators {}:{per_node}, num_nodes {}, from {} for {} h",
                a.label(),
                a.reservation,
                a.sku,
                a.gpus / per_node,
                a.start.to_rfc3339(),
                a.hours
            ));
        }
    }
    for line in left_out_lines(&left_out) {
        notes.push(format!("left out {line}"));
    }
    Output {
        text: comment_block(&notes) + &yaml(&Value::Object(config)),
        left_out,
    }
}

/// One dstack fleet configuration per award, as YAML documents.
pub fn dstack(awards: &[Award], clouds: &Clouds) -> Output {
    let mut text = comment_block(&[format!(
        "dstack fleets written by rofr export: {}; apply each with `dstack apply -f`",
        summary_line(awards)
    )]);
    let mut left_out = Vec::new();
    for award in awards {
        let Some(cloud) = clouds.of(&award.provider) else {
            left_out.push(LeftOut::new(award, NO_CLOUD.into()));
            continue;
        };
        let per_node = gpus_per_node(award.gpus);
        let mut fleet = json!({
            "type": "fleet",
            "name": fleet_name(award),
            "nodes": award.gpus / per_node,
            "placement": "cluster",
            "backends": [cloud],
            "resources": {"gpu": format!("{}:{per_node}", award.sku)},
        });
        // dstack takes AWS capacity reservations and blocks, and GCP reservations.
        if matches!(cloud, "aws" | "gcp") {
            fleet["reservation"] = json!(award.reservation);
        }
        text.push_str("---\n");
        text.push_str(&comment_block(&[format!(
            "{} with {}: reservation {}, from {} for {} h",
            award.label(),
            award.provider,
            award.reservation,
            award.start.to_rfc3339(),
            award.hours
        )]));
        text.push_str(&yaml(&fleet));
    }
    ended(text, left_out)
}

/// The output, ending with a comment line for each group of awards left out.
fn ended(mut text: String, left_out: Vec<LeftOut>) -> Output {
    let notes: Vec<String> = left_out_lines(&left_out)
        .into_iter()
        .map(|l| format!("left out {l}"))
        .collect();
    text.push_str(&comment_block(&notes));
    Output { text, left_out }
}

/// dstack names are lowercase letters, digits and dashes, starting with a letter.
fn fleet_name(award: &Award) -> String {
    let mut name: String = format!("rofr-{}-{}", award.need, award.award)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(41);
    name.trim_end_matches('-').to_owned()
}

/// Karpenter selects EC2 capacity reservations by id (`cr-` and lowercase letters and
/// digits): a patch of an `EC2NodeClass`'s `spec`.
pub fn karpenter(awards: &[Award], clouds: &Clouds, node_class: &str) -> Output {
    let mut terms = Vec::new();
    let mut left_out = Vec::new();
    let mut seen = BTreeSet::new();
    for award in awards {
        let id = &award.reservation;
        let is_ec2_id = id.len() > 3
            && id.starts_with("cr-")
            && id[3..]
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase());
        if clouds.of(&award.provider) != Some("aws") || !is_ec2_id {
            left_out.push(LeftOut::new(
                award,
                "Karpenter selects EC2 capacity reservations (aws, cr-…) only".into(),
            ));
        } else if seen.insert(id.clone()) {
            terms.push(json!({"id": id}));
        }
    }
    // Karpenter takes at most 30 terms in one class.
    let mut text = comment_block(&[
        format!(
            "EC2NodeClass fragment written by rofr export: {}",
            summary_line(awards)
        ),
        format!(
            "merge it: kubectl patch ec2nodeclass {node_class} --type merge --patch-file <file>"
        ),
    ]);
    for (i, chunk) in terms.chunks(30).enumerate() {
        let name = if i == 0 {
            node_class.to_owned()
        } else {
            format!("{node_class}-{i}")
        };
        if i > 0 {
            text.push_str("---\n");
        }
        text.push_str(&yaml(&json!({
            "apiVersion": "karpenter.k8s.aws/v1",
            "kind": "EC2NodeClass",
            "metadata": {"name": name},
            "spec": {"capacityReservationSelectorTerms": chunk},
        })));
    }
    if terms.is_empty() {
        text.push_str(&yaml(&json!({
            "apiVersion": "karpenter.k8s.aws/v1",
            "kind": "EC2NodeClass",
            "metadata": {"name": node_class},
            "spec": {},
        })));
    }
    ended(text, left_out)
}

/// A commitment of the deal, as the summary shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Commitment {
    pub name: String,
    pub provider: String,
    pub min_gpu_hours: Option<f64>,
    pub min_spend: Option<f64>,
    pub from: DateTime<Utc>,
    pub until: Option<DateTime<Utc>>,
}

impl Commitment {
    pub fn of_summary(summary: &Value) -> Result<Vec<Commitment>, String> {
        let time = |v: &Value, field: &str| -> Result<Option<DateTime<Utc>>, String> {
            v[field]
                .as_str()
                .map(|t| {
                    DateTime::parse_from_rfc3339(t)
                        .map(|t| t.with_timezone(&Utc))
                        .map_err(|e| format!("commitment `{field}` {t:?}: {e}"))
                })
                .transpose()
        };
        summary["commitments"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, c)| {
                let provider = c["provider"].as_str().unwrap_or_default().to_owned();
                Ok(Commitment {
                    name: c["name"]
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| format!("commitment-{i}-{provider}")),
                    provider,
                    min_gpu_hours: c["min_gpu_hours"].as_f64(),
                    min_spend: c["min_spend"].as_f64(),
                    from: time(c, "from")?.ok_or("a commitment without `from`")?,
                    until: time(c, "until")?,
                })
            })
            .collect()
    }

    fn covers(&self, at: DateTime<Utc>) -> bool {
        self.from <= at && self.until.is_none_or(|u| at < u)
    }
}

/// The FOCUS 1.2 columns written, in order.
pub const FOCUS_COLUMNS: &[&str] = &[
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingAccountType",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "CapacityReservationId",
    "CapacityReservationStatus",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargeFrequency",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "CommitmentDiscountCategory",
    "CommitmentDiscountId",
    "CommitmentDiscountName",
    "CommitmentDiscountQuantity",
    "CommitmentDiscountStatus",
    "CommitmentDiscountType",
    "CommitmentDiscountUnit",
    "ConsumedQuantity",
    "ConsumedUnit",
    "ContractedCost",
    "ContractedUnitPrice",
    "EffectiveCost",
    "InvoiceId",
    "InvoiceIssuerName",
    "ListCost",
    "ListUnitPrice",
    "PricingCategory",
    "PricingCurrency",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "RegionId",
    "RegionName",
    "ResourceId",
    "ResourceName",
    "ResourceType",
    "ServiceCategory",
    "ServiceName",
    "ServiceSubcategory",
    "SkuId",
    "SkuMeter",
    "SkuPriceDetails",
    "SkuPriceId",
    "SubAccountId",
    "SubAccountName",
    "SubAccountType",
    "Tags",
];

/// Who is billed: the buyer's deal, named in the rows.
#[derive(Debug, Clone)]
pub struct Billing {
    pub account_id: String,
    pub account_name: String,
    /// Provider id → display name, from the deal.
    pub provider_names: BTreeMap<String, String>,
}

fn month_start(at: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(at.year(), at.month(), 1, 0, 0, 0)
        .single()
        .expect("the first of a month is a valid time")
}

fn next_month(at: DateTime<Utc>) -> DateTime<Utc> {
    let (year, month) = if at.month() == 12 {
        (at.year() + 1, 1)
    } else {
        (at.year(), at.month() + 1)
    };
    Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0)
        .single()
        .expect("the first of a month is a valid time")
}

fn focus_time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Money and quantities as decimals: at least one digit after the point (so that
/// readers do not take a column of whole amounts for integers), at most ten, without
/// a float's noise.
fn decimal(x: f64) -> String {
    let text = format!("{:.10}", if x == 0.0 { 0.0 } else { x });
    let text = text.trim_end_matches('0');
    if text.ends_with('.') {
        format!("{text}0")
    } else {
        text.to_owned()
    }
}

/// FOCUS 1.2 rows as CSV: each award's usage, one row per calendar month it runs in
/// (the billing period), and for each commitment of the deal its burn-down: the usage
/// rows that count towards it carry it, and each billing period of its term that
/// ends before it is met gets a row for what is still unused.
pub fn focus(awards: &[Award], commitments: &[Commitment], billing: &Billing) -> Output {
    let mut rows: Vec<BTreeMap<&str, String>> = Vec::new();
    let mut sorted: Vec<&Award> = awards.iter().collect();
    sorted.sort_by(|a, b| (a.start, &a.need, a.award).cmp(&(b.start, &b.need, b.award)));
    // Usage, split by month.
    let mut periods: BTreeSet<DateTime<Utc>> = BTreeSet::new();
    for award in &sorted {
        let end = award.end();
        let mut from = award.start;
        while from < end {
            let period_end = next_month(from);
            let to = period_end.min(end);
            let hours = (to - from).num_seconds() as f64 / 3600.0;
            let quantity = award.gpus as f64 * hours;
            let cost = quantity * award.price_per_gpu_hour;
            let mut row = base_row(billing, &award.provider, month_start(from), period_end);
            periods.insert(month_start(from));
            row.insert("ChargeCategory", "Usage".into());
            row.insert("ChargeFrequency", "Usage-Based".into());
            row.insert(
                "ChargeDescription",
                format!(
                    "{} {} GPUs for need {} (award {}), reserved as {}",
                    award.gpus, award.sku, award.need, award.award, award.reservation
                ),
            );
            row.insert("ChargePeriodStart", focus_time(from));
            row.insert("ChargePeriodEnd", focus_time(to));
            for column in ["BilledCost", "EffectiveCost", "ListCost", "ContractedCost"] {
                row.insert(column, decimal(cost));
            }
            for column in ["ListUnitPrice", "ContractedUnitPrice"] {
                row.insert(column, decimal(award.price_per_gpu_hour));
            }
            row.insert("PricingCategory", "Committed".into());
            row.insert("PricingQuantity", decimal(quantity));
            row.insert("PricingUnit", "GPU-Hours".into());
            row.insert("ConsumedQuantity", decimal(quantity));
            row.insert("ConsumedUnit", "GPU-Hours".into());
            row.insert("CapacityReservationId", award.reservation.clone());
            row.insert("CapacityReservationStatus", "Used".into());
            row.insert("ResourceId", award.reservation.clone());
            row.insert("ResourceName", format!("{}/{}", award.need, award.award));
            row.insert("ResourceType", "GPU capacity reservation".into());
            row.insert("SkuId", award.sku.clone());
            row.insert("SkuPriceId", format!("{}/{}", award.need, award.award));
            row.insert("SkuMeter", "GPU-Hours".into());
            if let Some(region) = award.regions.first() {
                row.insert("RegionId", region.clone());
                row.insert("RegionName", region.clone());
            }
            let mut tags = serde_json::Map::new();
            tags.insert("rofr_need".into(), json!(award.need));
            tags.insert("rofr_workload".into(), json!(award.workload));
            if let Some(launch) = &award.launch {
                tags.insert("rofr_launch".into(), json!(launch));
            }
            row.insert("Tags", Value::Object(tags).to_string());
            if let Some(i) = commitments
                .iter()
                .position(|c| c.provider == award.provider && c.covers(from))
            {
                let c = &commitments[i];
                let (category, unit, counted) = match c.min_spend {
                    Some(_) => ("Spend", "USD", cost),
                    None => ("Usage", "GPU-Hours", quantity),
                };
                commitment_columns(&mut row, c, category, unit, counted, "Used");
            }
            rows.push(row);
            from = to;
        }
    }
    // What each commitment still lacks at the end of each billing period it spans
    // that holds usage: the burn-down.
    let mut running: Vec<f64> = vec![0.0; commitments.len()];
    for period in &periods {
        let period_end = next_month(*period);
        for (i, c) in commitments.iter().enumerate() {
            if !(c.from < period_end && c.until.is_none_or(|u| u > *period)) {
                continue;
            }
            let (category, unit) = match c.min_spend {
                Some(_) => ("Spend", "USD"),
                None => ("Usage", "GPU-Hours"),
            };
            running[i] += rows
                .iter()
                .filter(|r| {
                    r.get("CommitmentDiscountId").map(String::as_str) == Some(&commitment_id(c))
                        && r["BillingPeriodStart"] == focus_time(*period)
                })
                .map(|r| {
                    r["CommitmentDiscountQuantity"]
                        .parse::<f64>()
                        .unwrap_or(0.0)
                })
                .sum::<f64>();
            let target = c.min_spend.or(c.min_gpu_hours).unwrap_or(0.0);
            let unused = target - running[i];
            if unused <= 0.0 {
                continue;
            }
            let mut row = base_row(billing, &c.provider, *period, period_end);
            let from = (*period).max(c.from);
            let to = c.until.map_or(period_end, |u| u.min(period_end));
            row.insert("ChargeCategory", "Usage".into());
            row.insert("ChargeFrequency", "Usage-Based".into());
            row.insert(
                "ChargeDescription",
                format!(
                    "{}: {} {unit} of {} still to use at the end of this period",
                    c.name,
                    decimal(unused),
                    decimal(target)
                ),
            );
            row.insert("ChargePeriodStart", focus_time(from));
            row.insert("ChargePeriodEnd", focus_time(to));
            for column in ["BilledCost", "EffectiveCost", "ListCost", "ContractedCost"] {
                row.insert(column, decimal(0.0));
            }
            row.insert("ServiceName", "Committed GPU capacity".into());
            row.insert("SkuId", commitment_id(c));
            row.insert("SkuPriceId", commitment_id(c));
            commitment_columns(&mut row, c, category, unit, unused, "Unused");
            rows.push(row);
        }
    }
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer
        .write_record(FOCUS_COLUMNS)
        .expect("writing to memory cannot fail");
    for row in &rows {
        writer
            .write_record(
                FOCUS_COLUMNS
                    .iter()
                    .map(|c| row.get(c).map_or("", String::as_str)),
            )
            .expect("writing to memory cannot fail");
    }
    let bytes = writer.into_inner().expect("writing to memory cannot fail");
    Output {
        text: String::from_utf8(bytes).expect("every field is UTF-8"),
        left_out: Vec::new(),
    }
}

fn commitment_id(c: &Commitment) -> String {
    format!("rofr:commitment/{}", c.name)
}

fn commitment_columns(
    row: &mut BTreeMap<&str, String>,
    c: &Commitment,
    category: &str,
    unit: &str,
    quantity: f64,
    status: &str,
) {
    row.insert("CommitmentDiscountId", commitment_id(c));
    row.insert("CommitmentDiscountName", c.name.clone());
    row.insert("CommitmentDiscountCategory", category.into());
    row.insert("CommitmentDiscountType", "Minimum commitment".into());
    row.insert("CommitmentDiscountStatus", status.into());
    row.insert("CommitmentDiscountQuantity", decimal(quantity));
    row.insert("CommitmentDiscountUnit", unit.into());
}

fn base_row(
    billing: &Billing,
    provider: &str,
    period_start: DateTime<Utc>,
    period_end: DateTime<Utc>,
) -> BTreeMap<&'static str, String> {
    let name = billing
        .provider_names
        .get(provider)
        .cloned()
        .unwrap_or_else(|| provider.to_owned());
    let mut row = BTreeMap::new();
    row.insert("BillingAccountId", billing.account_id.clone());
    row.insert("BillingAccountName", billing.account_name.clone());
    row.insert("BillingAccountType", "Deal".into());
    row.insert("SubAccountId", format!("{}/{provider}", billing.account_id));
    row.insert("SubAccountName", name.clone());
    row.insert("SubAccountType", "Provider".into());
    row.insert("BillingCurrency", "USD".into());
    row.insert("PricingCurrency", "USD".into());
    row.insert("BillingPeriodStart", focus_time(period_start));
    row.insert("BillingPeriodEnd", focus_time(period_end));
    row.insert("ProviderName", name.clone());
    row.insert("PublisherName", name.clone());
    row.insert("InvoiceIssuerName", name);
    row.insert("ServiceName", "GPU compute".into());
    row.insert("ServiceCategory", "Compute".into());
    row.insert("ServiceSubcategory", "Virtual Machines".into());
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    fn award(need: &str, provider: &str, reservation: &str, start: &str, hours: u64) -> Award {
        Award {
            need: need.into(),
            award: 1,
            provider: provider.into(),
            sku: "H100".into(),
            gpus: 64,
            hours,
            price_per_gpu_hour: 2.5,
            reservation: reservation.into(),
            start: DateTime::parse_from_rfc3339(start)
                .unwrap()
                .with_timezone(&Utc),
            regions: vec!["us-east-1".into()],
            launch: Some("llm-7".into()),
            workload: "training".into(),
            tags: vec![],
        }
    }

    #[test]
    fn a_month_boundary_splits_usage_and_costs_add_up() {
        let a = award("n-1", "aws", "cr-0abc", "2025-01-31T12:00:00Z", 48);
        let billing = Billing {
            account_id: "stargate".into(),
            account_name: "Stargate".into(),
            provider_names: BTreeMap::new(),
        };
        let out = focus(&[a], &[], &billing);
        let mut reader = csv::Reader::from_reader(out.text.as_bytes());
        let headers = reader.headers().unwrap().clone();
        let cost = headers.iter().position(|h| h == "BilledCost").unwrap();
        let start = headers
            .iter()
            .position(|h| h == "ChargePeriodStart")
            .unwrap();
        let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(&rows[0][start], "2025-01-31T12:00:00Z");
        assert_eq!(&rows[1][start], "2025-02-01T00:00:00Z");
        let total: f64 = rows.iter().map(|r| r[cost].parse::<f64>().unwrap()).sum();
        assert!((total - 64.0 * 48.0 * 2.5).abs() < 1e-6, "{total}");
    }

    #[test]
    fn a_commitment_burns_down_until_met() {
        let billing = Billing {
            account_id: "d".into(),
            account_name: "D".into(),
            provider_names: BTreeMap::new(),
        };
        let c = Commitment {
            name: "aws-min".into(),
            provider: "aws".into(),
            min_gpu_hours: Some(64.0 * 24.0 * 40.0),
            min_spend: None,
            from: DateTime::parse_from_rfc3339("2025-01-01T00:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            until: None,
        };
        // 31 days in January, 20 in February: 51 days against 40.
        let a = award("n-1", "aws", "cr-0abc", "2025-01-01T00:00:00Z", 24 * 51);
        let text = focus(&[a], &[c], &billing).text;
        let unused: Vec<&str> = text.lines().filter(|l| l.contains(",Unused,")).collect();
        assert_eq!(unused.len(), 1, "{text}");
        assert!(
            unused[0].contains(&decimal(64.0 * 24.0 * 9.0)),
            "{}",
            unused[0]
        );
    }

    #[test]
    fn clouds_name_themselves_and_others_are_told() {
        let clouds = Clouds::parse(&["oracle=oci".into()]).unwrap();
        assert_eq!(clouds.of("oracle"), Some("oci"));
        assert_eq!(clouds.of("aws"), Some("aws"));
        assert_eq!(clouds.of("coreweave"), None);
        assert!(Clouds::parse(&["oracle".into()])
            .unwrap_err()
            .contains("PROVIDER=CLOUD"));
        assert!(Clouds::parse(&["x=moon".into()])
            .unwrap_err()
            .contains("unknown cloud"));
        let awards = [
            award("n-1", "aws", "cr-0abc", "2025-01-01T00:00:00Z", 10),
            award("n-2", "coreweave", "cw-1", "2025-01-01T00:00:00Z", 10),
        ];
        let out = skypilot(&awards, &clouds);
        assert_eq!(out.left_out.len(), 1);
        assert!(out.text.contains("- \"cr-0abc\""), "{}", out.text);
        let out = karpenter(&awards, &clouds, "gpu");
        assert!(out.text.contains("id: \"cr-0abc\""), "{}", out.text);
        assert_eq!(out.left_out.len(), 1);
    }

    #[test]
    fn decimals_keep_a_point_and_drop_noise() {
        assert_eq!(decimal(27648.0), "27648.0");
        assert_eq!(decimal(0.1 + 0.2), "0.3");
        assert_eq!(decimal(-0.0), "0.0");
        assert_eq!(decimal(2680.32), "2680.32");
    }

    #[test]
    fn fleet_names_are_dns_labels() {
        let a = award("N_1.x/y", "aws", "cr-1", "2025-01-01T00:00:00Z", 1);
        assert_eq!(fleet_name(&a), "rofr-n-1-x-y-1");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn documents(text: &str) -> Vec<serde_yaml_ng::Value> {
            serde_yaml_ng::Deserializer::from_str(text)
                .map(|d| serde_yaml_ng::Value::deserialize(d).expect("every document parses"))
                .filter(|v| !v.is_null())
                .collect()
        }

        use serde::Deserialize;

        fn any_award() -> impl Strategy<Value = Award> {
            (
                ".{1,40}",
                prop_oneof![Just("aws".to_owned()), Just("gcp".to_owned()), ".{1,12}"],
                // Any text, line breaks and YAML's own characters included.
                prop_oneof![
                    ".{1,60}",
                    "[\\x00-\\x1f\u{85}\u{2028}#:'\"{}\\[\\]&*!|>%@` -]{1,20}"
                ],
                1u64..=1_000_000,
                1u64..=87_600,
                // From 1970 to the last moment a need may name (the year 3000).
                0i64..32_503_680_000,
                0.01f64..1000.0,
            )
                .prop_map(
                    |(need, provider, reservation, gpus, hours, start, price)| Award {
                        need,
                        award: 1,
                        provider,
                        sku: "H100".into(),
                        gpus,
                        hours,
                        price_per_gpu_hour: price,
                        reservation,
                        start: DateTime::from_timestamp(start, 0).unwrap(),
                        regions: vec![],
                        launch: None,
                        workload: "training".into(),
                        tags: vec![],
                    },
                )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Whatever text the ids hold, every YAML output parses, and the
            /// reservations in it are the awards' exactly.
            #[test]
            fn any_string_reads_back_as_itself(text in "\\PC*|[\\x00-\\x1f\u{7f}-\u{9f}\u{2028}\u{feff}yesonNo0-9:#-]{0,12}") {
                let doc = yaml(&json!({"a": [text.clone(), {"id": text.clone()}], "b": {"c": text.clone()}}));
                let back: serde_yaml_ng::Value = serde_yaml_ng::from_str(&doc).unwrap();
                prop_assert_eq!(back["a"][0].as_str(), Some(text.as_str()), "{}", doc);
                prop_assert_eq!(back["a"][1]["id"].as_str(), Some(text.as_str()), "{}", doc);
                prop_assert_eq!(back["b"]["c"].as_str(), Some(text.as_str()), "{}", doc);
            }

            #[test]
            fn hostile_text_stays_in_its_field(awards in proptest::collection::vec(any_award(), 1..6)) {
                let clouds = Clouds::default();
                let sky = skypilot(&awards, &clouds);
                let docs = documents(&sky.text);
                prop_assert_eq!(docs.len(), 1);
                let mut listed: Vec<String> = ["aws", "gcp"]
                    .iter()
                    .flat_map(|c| docs[0][*c]["specific_reservations"].as_sequence().cloned().unwrap_or_default())
                    .map(|v| v.as_str().unwrap().to_owned())
                    .collect();
                listed.sort();
                let mut wanted: Vec<String> = awards
                    .iter()
                    .filter(|a| matches!(a.provider.as_str(), "aws" | "gcp"))
                    .map(|a| a.reservation.clone())
                    .collect();
                wanted.sort();
                wanted.dedup();
                listed.dedup();
                prop_assert_eq!(listed, wanted);

                let fleets = dstack(&awards, &clouds);
                let docs = documents(&fleets.text);
                prop_assert_eq!(docs.len() + fleets.left_out.len(), awards.len());
                for doc in &docs {
                    prop_assert_eq!(doc["type"].as_str(), Some("fleet"));
                }
                let patch = karpenter(&awards, &clouds, "gpu");
                prop_assert!(!documents(&patch.text).is_empty());
            }

            /// Usage rows cover each award's hours exactly, across month and year ends
            /// up to the year 3000, and their costs add up to GPUs × hours × price.
            #[test]
            fn focus_rows_add_up(award in any_award()) {
                let billing = Billing {
                    account_id: "d".into(),
                    account_name: "D".into(),
                    provider_names: BTreeMap::new(),
                };
                let out = focus(std::slice::from_ref(&award), &[], &billing);
                let mut reader = csv::Reader::from_reader(out.text.as_bytes());
                let headers = reader.headers().unwrap().clone();
                let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
                let (mut seconds, mut cost) = (0i64, 0f64);
                for row in reader.records() {
                    let row = row.unwrap();
                    let t = |c: usize| DateTime::parse_from_rfc3339(&row[c]).unwrap();
                    seconds += (t(col("ChargePeriodEnd")) - t(col("ChargePeriodStart"))).num_seconds();
                    cost += row[col("BilledCost")].parse::<f64>().unwrap();
                    prop_assert_eq!(&row[col("ResourceId")], award.reservation.as_str());
                    prop_assert!(t(col("BillingPeriodStart")) <= t(col("ChargePeriodStart")));
                    prop_assert!(t(col("ChargePeriodEnd")) <= t(col("BillingPeriodEnd")));
                }
                prop_assert_eq!(seconds, award.hours as i64 * 3600);
                let want = award.gpus as f64 * award.hours as f64 * award.price_per_gpu_hour;
                prop_assert!((cost - want).abs() <= want * 1e-9 + 1e-6, "{} against {}", cost, want);
            }
        }
    }
}
