//! `rofr agent --aws`: a provider that answers from EC2 Capacity Blocks. Requests for
//! quotes are priced from `DescribeCapacityBlockOfferings`; awards are bought with
//! `PurchaseCapacityBlock` and confirmed with the capacity reservation it returns.
//! Requests are signed with SigV4 by `aws-sigv4`. What it bought, or set out to buy,
//! is kept in a state file written before each purchase, so that a restarted agent
//! never buys an award twice (`docs/aws-agent.md`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::agent::{count_of, ignore_lost_races};
use crate::client::{Client, ClientError};

/// The agent's settings file (TOML).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The provider id the deal gives this agent.
    pub provider: String,
    /// How often it looks for new work, in milliseconds.
    #[serde(default = "default_poll")]
    pub poll_ms: u64,
    pub aws: AwsSettings,
}

fn default_poll() -> u64 {
    1000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSettings {
    pub region: String,
    /// The EC2 endpoint; `https://ec2.<region>.amazonaws.com` where absent.
    pub endpoint: Option<String>,
    /// `env` (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) or
    /// `profile:NAME` (from the shared credentials file).
    #[serde(default = "default_credentials")]
    pub credentials: String,
    /// The most, in dollars, all purchases together may cost.
    pub spending_limit: f64,
    /// Where the agent keeps what it bought.
    pub state: PathBuf,
    /// The platform the blocks are bought for.
    #[serde(default = "default_platform")]
    pub instance_platform: String,
    /// By sku: the instance type that carries it.
    pub instance_types: BTreeMap<String, InstanceType>,
}

fn default_credentials() -> String {
    "env".into()
}

fn default_platform() -> String {
    "Linux/UNIX".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceType {
    #[serde(rename = "type")]
    pub instance_type: String,
    /// GPUs on one instance.
    pub gpus: u32,
    /// The price per GPU-hour to quote where an offering states no upfront fee.
    pub price_per_gpu_hour: Option<f64>,
}

impl Settings {
    /// Parses a settings file, naming the line and column of any mistake.
    pub fn parse(file: &str, text: &str) -> Result<Settings, String> {
        let settings: Settings = crate::agent::parse_toml(file, text)?;
        let aws = &settings.aws;
        if !(aws.spending_limit.is_finite() && aws.spending_limit >= 0.0) {
            return Err(format!(
                "{file}: `aws.spending_limit` is {}; give dollars, 0 or more",
                aws.spending_limit
            ));
        }
        for (sku, t) in &aws.instance_types {
            if !(1..=MAX_GPUS_PER_INSTANCE).contains(&t.gpus) {
                return Err(format!(
                    "{file}: `aws.instance_types.{sku}.gpus` is {}; an instance has 1 to {MAX_GPUS_PER_INSTANCE} GPUs",
                    t.gpus
                ));
            }
            if t.price_per_gpu_hour
                .is_some_and(|p| !(p.is_finite() && p > 0.0))
            {
                return Err(format!(
                    "{file}: `aws.instance_types.{sku}.price_per_gpu_hour` must be a positive price"
                ));
            }
        }
        if aws.credentials != "env" && !aws.credentials.starts_with("profile:") {
            return Err(format!(
                "{file}: `aws.credentials` is {:?}; use \"env\" or \"profile:NAME\"",
                aws.credentials
            ));
        }
        Ok(settings)
    }
}

/// Access keys for signing.
#[derive(Clone)]
pub struct Keys {
    access_key: String,
    secret_key: String,
    session_token: Option<String>,
}

impl Keys {
    pub fn load(source: &str) -> Result<Keys, String> {
        if source == "env" {
            let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
            return Ok(Keys {
                access_key: var("AWS_ACCESS_KEY_ID")
                    .ok_or("credentials `env`: AWS_ACCESS_KEY_ID is not set")?,
                secret_key: var("AWS_SECRET_ACCESS_KEY")
                    .ok_or("credentials `env`: AWS_SECRET_ACCESS_KEY is not set")?,
                session_token: var("AWS_SESSION_TOKEN"),
            });
        }
        let profile = source.trim_start_matches("profile:");
        let file = std::env::var("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .or_else(|_| std::env::var("HOME").map(|h| Path::new(&h).join(".aws/credentials")))
            .map_err(|_| "no AWS_SHARED_CREDENTIALS_FILE and no HOME".to_owned())?;
        let ini = ini::Ini::load_from_file(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let section = ini
            .section(Some(profile))
            .ok_or_else(|| format!("{}: no profile [{profile}]", file.display()))?;
        let get = |key: &str| {
            section
                .get(key)
                .map(str::to_owned)
                .ok_or_else(|| format!("{}: [{profile}] has no {key}", file.display()))
        };
        Ok(Keys {
            access_key: get("aws_access_key_id")?,
            secret_key: get("aws_secret_access_key")?,
            session_token: section.get("aws_session_token").map(str::to_owned),
        })
    }
}

/// An EC2 Query API error, or a transport failure.
#[derive(Debug, thiserror::Error)]
pub enum Ec2Error {
    #[error("EC2 {action}: {code}: {message}")]
    Api {
        action: String,
        code: String,
        message: String,
    },
    #[error("EC2 {0}")]
    Other(String),
}

/// The EC2 Query API, signed.
pub struct Ec2 {
    endpoint: String,
    region: String,
    keys: Keys,
    http: reqwest::Client,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Offering {
    pub id: String,
    pub instance_type: String,
    pub instance_count: u32,
    pub start: String,
    pub end: String,
    pub hours: u32,
    pub upfront_fee: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    pub id: String,
    pub tags: BTreeMap<String, String>,
}

impl Ec2 {
    pub fn new(settings: &AwsSettings, keys: Keys) -> Ec2 {
        Ec2 {
            endpoint: settings
                .endpoint
                .clone()
                .unwrap_or_else(|| format!("https://ec2.{}.amazonaws.com/", settings.region)),
            region: settings.region.clone(),
            keys,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("a client with a timeout"),
        }
    }

    async fn call(&self, action: &str, params: &[(String, String)]) -> Result<String, Ec2Error> {
        let mut form: Vec<(String, String)> = vec![
            ("Action".into(), action.into()),
            ("Version".into(), "2016-11-15".into()),
        ];
        form.extend_from_slice(params);
        let body =
            serde_urlencoded::to_string(&form).map_err(|e| Ec2Error::Other(e.to_string()))?;
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let credentials = aws_credential_types::Credentials::new(
            &self.keys.access_key,
            &self.keys.secret_key,
            self.keys.session_token.clone(),
            None,
            "rofr-agent",
        );
        let identity = credentials.into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("ec2")
            .time(SystemTime::now())
            .settings(aws_sigv4::http_request::SigningSettings::default())
            .build()
            .map_err(|e| Ec2Error::Other(format!("signing: {e}")))?
            .into();
        let signable = aws_sigv4::http_request::SignableRequest::new(
            "POST",
            &self.endpoint,
            [("content-type", content_type)].into_iter(),
            aws_sigv4::http_request::SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|e| Ec2Error::Other(format!("signing: {e}")))?;
        let (instructions, _) = aws_sigv4::http_request::sign(signable, &params)
            .map_err(|e| Ec2Error::Other(format!("signing: {e}")))?
            .into_parts();
        let mut request = self
            .http
            .post(&self.endpoint)
            .header("content-type", content_type)
            .body(body);
        for (name, value) in instructions.headers() {
            request = request.header(name, value);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Ec2Error::Other(format!("{action}: {e}")))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| Ec2Error::Other(format!("{action}: {e}")))?;
        if status.is_success() {
            return Ok(text);
        }
        let doc = roxmltree::Document::parse(&text).ok();
        let find = |name: &str| {
            doc.as_ref()
                .and_then(|d| d.descendants().find(|n| n.has_tag_name(name)))
                .and_then(|n| n.text())
                .map(str::to_owned)
        };
        Err(Ec2Error::Api {
            action: action.into(),
            code: find("Code").unwrap_or_else(|| status.to_string()),
            message: find("Message").unwrap_or(text),
        })
    }

    pub async fn offerings(
        &self,
        instance_type: &str,
        count: u32,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        hours: u32,
    ) -> Result<Vec<Offering>, Ec2Error> {
        let at = |t: DateTime<Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let text = self
            .call(
                "DescribeCapacityBlockOfferings",
                &[
                    ("InstanceType".into(), instance_type.into()),
                    ("InstanceCount".into(), count.to_string()),
                    ("StartDateRange".into(), at(from)),
                    ("EndDateRange".into(), at(until)),
                    ("CapacityDurationHours".into(), hours.to_string()),
                ],
            )
            .await?;
        let doc = parse("DescribeCapacityBlockOfferings", &text)?;
        let offerings = items(doc.root(), "capacityBlockOfferingSet")
            .filter_map(|item| {
                let field = |name: &str| child_text(item, name);
                Some(Offering {
                    id: field("capacityBlockOfferingId")?,
                    instance_type: field("instanceType")?,
                    instance_count: field("instanceCount")?.parse().ok()?,
                    start: field("startDate")?,
                    end: field("endDate")?,
                    hours: field("capacityBlockDurationHours")?.parse().ok()?,
                    upfront_fee: field("upfrontFee").and_then(|f| f.parse().ok()),
                })
            })
            .collect();
        Ok(offerings)
    }

    /// Buys an offering, tagging the reservation `rofr-award` = `tag`.
    pub async fn purchase(
        &self,
        offering: &str,
        platform: &str,
        tag: &str,
    ) -> Result<String, Ec2Error> {
        let text = self
            .call(
                "PurchaseCapacityBlock",
                &[
                    ("CapacityBlockOfferingId".into(), offering.into()),
                    ("InstancePlatform".into(), platform.into()),
                    (
                        "TagSpecification.1.ResourceType".into(),
                        "capacity-reservation".into(),
                    ),
                    ("TagSpecification.1.Tag.1.Key".into(), AWARD_TAG.into()),
                    ("TagSpecification.1.Tag.1.Value".into(), tag.into()),
                ],
            )
            .await?;
        let doc = parse("PurchaseCapacityBlock", &text)?;
        doc.descendants()
            .find(|n| n.has_tag_name("capacityReservationId"))
            .and_then(|n| n.text())
            .map(str::to_owned)
            .ok_or_else(|| {
                Ec2Error::Other("PurchaseCapacityBlock: no capacityReservationId".into())
            })
    }

    /// The reservations tagged as bought for `tag`.
    pub async fn reservations_tagged(&self, tag: &str) -> Result<Vec<Reservation>, Ec2Error> {
        let filter = [
            ("Filter.1.Name".into(), format!("tag:{AWARD_TAG}")),
            ("Filter.1.Value.1".into(), tag.into()),
        ];
        // Filtered here too, where an endpoint ignores the filter.
        Ok(self
            .reservations(&filter)
            .await?
            .into_iter()
            .filter(|r| r.tags.get(AWARD_TAG).map(String::as_str) == Some(tag))
            .collect())
    }

    /// Every capacity reservation of the account in the region.
    pub async fn all_reservations(&self) -> Result<Vec<Reservation>, Ec2Error> {
        self.reservations(&[]).await
    }

    async fn reservations(
        &self,
        params: &[(String, String)],
    ) -> Result<Vec<Reservation>, Ec2Error> {
        let text = self.call("DescribeCapacityReservations", params).await?;
        let doc = parse("DescribeCapacityReservations", &text)?;
        let all = items(doc.root(), "capacityReservationSet").filter_map(|item| {
            let tags = items(item, "tagSet")
                .filter_map(|t| {
                    Some((
                        child_text(t, "key")?,
                        child_text(t, "value").unwrap_or_default(),
                    ))
                })
                .collect();
            Some(Reservation {
                id: child_text(item, "capacityReservationId")?,
                tags,
            })
        });
        Ok(all.collect())
    }
}

/// The `<item>`s of every `<set>` element under `node`.
fn items<'a, 'input>(
    node: roxmltree::Node<'a, 'input>,
    set: &'static str,
) -> impl Iterator<Item = roxmltree::Node<'a, 'input>> {
    node.descendants()
        .filter(move |n| n.has_tag_name(set))
        .flat_map(|s| s.children().filter(|n| n.has_tag_name("item")))
}

/// The text of `node`'s child element `name`.
fn child_text(node: roxmltree::Node, name: &str) -> Option<String> {
    node.children()
        .find(|n| n.has_tag_name(name))
        .and_then(|n| n.text())
        .map(str::to_owned)
}

/// The tag each bought reservation carries: the need and award it was bought for.
pub const AWARD_TAG: &str = "rofr-award";

fn parse<'a>(action: &str, text: &'a str) -> Result<roxmltree::Document<'a>, Ec2Error> {
    roxmltree::Document::parse(text)
        .map_err(|e| Ec2Error::Other(format!("{action}: the answer is not XML: {e}")))
}

/// What the agent has bought or set out to buy, by award (`need/award`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub purchases: BTreeMap<String, Purchase>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Purchase {
    pub offering: String,
    /// What it costs, in dollars, counted against the spending limit.
    pub cost: f64,
    /// Set once bought; absent while the purchase may or may not have happened.
    pub reservation: Option<String>,
    /// Set once the broker has the reservation.
    #[serde(default)]
    pub confirmed: bool,
}

impl State {
    pub fn load(path: &Path) -> Result<State, String> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: not the agent's state: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Writes beside the file, syncs and renames: a crash leaves the old state or the
    /// new, never half of one.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        use std::io::Write;
        let partial = path.with_extension("partial");
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&partial)?;
            file.write_all(&serde_json::to_vec_pretty(self).expect("state serializes"))?;
            file.sync_all()?;
            std::fs::rename(&partial, path)?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    pub fn spent(&self) -> f64 {
        self.purchases.values().map(|p| p.cost).sum()
    }
}

/// An offering's cost: its upfront fee, or the settings' price for its GPU-hours.
fn cost_of(offering: &Offering, price: f64, gpus_per_instance: u32) -> f64 {
    offering.upfront_fee.unwrap_or_else(|| {
        price * f64::from(offering.instance_count * gpus_per_instance) * f64::from(offering.hours)
    })
}

/// EC2 sells blocks of 1 to 14 days in whole days, or up to 182 days in whole weeks.
pub fn valid_block_hours(hours: u32) -> bool {
    (hours % 24 == 0 && (24..=14 * 24).contains(&hours))
        || (hours % 168 == 0 && (14 * 24..=182 * 24).contains(&hours))
}

/// The most instances one block may hold.
const MAX_INSTANCES: u32 = 64;

/// The most GPUs the settings may give one instance type (EC2's largest have 8 or 16),
/// so that a block's GPUs, at most 64 instances' worth, always fit a `u32`.
const MAX_GPUS_PER_INSTANCE: u32 = 1024;

/// What an offering costs per GPU-hour, where it is an offering of exactly `count`
/// instances of `gpus_per_instance` GPUs for `hours`: its upfront fee spread over
/// those GPU-hours, or `fallback` where it states none. An answer with a fee that is
/// not a finite amount above zero is no offering at all: a fee read as NaN would pass
/// every comparison with the spending limit.
pub fn price_of(
    offering: &Offering,
    count: u32,
    gpus_per_instance: u32,
    hours: u32,
    fallback: Option<f64>,
) -> Option<f64> {
    if offering.instance_count != count || offering.hours != hours {
        return None;
    }
    let gpu_hours = f64::from(count) * f64::from(gpus_per_instance) * f64::from(hours);
    let price = match offering.upfront_fee {
        Some(fee) if fee.is_finite() && fee > 0.0 => fee / gpu_hours,
        Some(_) => return None,
        None => fallback?,
    };
    (price.is_finite() && price > 0.0).then_some(price)
}

#[derive(Debug, Default, Clone)]
pub struct AwsStats {
    pub quoted: u64,
    pub declined: u64,
    pub bought: u64,
    pub confirmed: u64,
    pub failed: u64,
    pub errors: u64,
}

pub struct AwsAgent {
    settings: Settings,
    ec2: Ec2,
    client: Client,
    state: State,
    seen: std::collections::BTreeSet<String>,
    pub stats: AwsStats,
}

fn time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

impl AwsAgent {
    pub fn new(settings: Settings, keys: Keys, client: Client) -> Result<AwsAgent, String> {
        let state = State::load(&settings.aws.state)?;
        Ok(AwsAgent {
            ec2: Ec2::new(&settings.aws, keys),
            settings,
            client,
            state,
            seen: Default::default(),
            stats: AwsStats::default(),
        })
    }

    pub async fn run(mut self, stop: tokio::sync::watch::Receiver<bool>) -> AwsStats {
        while !*stop.borrow() {
            if let Err(error) = self.poll_once().await {
                self.stats.errors += 1;
                tracing::warn!(provider = %self.settings.provider, %error, "aws agent poll failed");
            }
            tokio::time::sleep(Duration::from_millis(self.settings.poll_ms)).await;
        }
        self.stats
    }

    /// The cheapest offering for `gpus` of `sku` over a need's window, with the
    /// instances it takes, and its price per GPU-hour.
    async fn offering(
        &self,
        sku: &str,
        gpus: u32,
        need: &Value,
    ) -> Result<Option<(Offering, f64)>, String> {
        let Some(kind) = self.settings.aws.instance_types.get(sku) else {
            return Ok(None);
        };
        let Some(hours) = count_of(&need["hours"]) else {
            return Ok(None);
        };
        let count = gpus / kind.gpus;
        if count == 0 || count > MAX_INSTANCES || !valid_block_hours(hours) {
            return Ok(None);
        }
        let (Some(from), Some(latest)) = (
            need["earliest_start"].as_str().and_then(time),
            need["latest_start"].as_str().and_then(time),
        ) else {
            return Ok(None);
        };
        let until = latest + chrono::Duration::hours(hours as i64);
        let offerings = self
            .ec2
            .offerings(&kind.instance_type, count, from, until, hours)
            .await
            .map_err(|e| e.to_string())?;
        let priced = offerings.into_iter().filter_map(|o| {
            let price = price_of(&o, count, kind.gpus, hours, kind.price_per_gpu_hour)?;
            Some((o, price))
        });
        Ok(priced.min_by(|a, b| a.1.total_cmp(&b.1)))
    }

    pub async fn poll_once(&mut self) -> Result<(), String> {
        let failed = |e: ClientError| e.to_string();
        // Awards first: what was set out to be bought is settled before anything new.
        let awards = self
            .client
            .all_pages("/v1/awards?status=made,confirmed", "awards")
            .await
            .map_err(failed)?;
        for award in &awards {
            let need = award["need"].as_str().unwrap_or_default().to_owned();
            let key = format!("{need}/{}", award["award"]);
            let status = award["status"].as_str().unwrap_or_default();
            if status == "confirmed" {
                if let Some(p) = self.state.purchases.get_mut(&key) {
                    if !p.confirmed {
                        p.confirmed = true;
                        self.state.save(&self.settings.aws.state)?;
                    }
                }
                continue;
            }
            self.settle(&need, &key, award).await?;
        }

        let rfqs = self.client.get("/v1/rfqs").await.map_err(failed)?["rfqs"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for rfq in &rfqs {
            let need = rfq["need"].as_str().unwrap_or_default().to_owned();
            if !self.seen.insert(format!("rfq/{need}/{}", rfq["round"])) {
                continue;
            }
            let sku = rfq["sku"].as_str().unwrap_or_default();
            // More than a u32 holds is more than any block: quote what a block can.
            let asked = rfq["gpus"]
                .as_u64()
                .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX));
            let per_instance = self
                .settings
                .aws
                .instance_types
                .get(sku)
                .map_or(1, |t| t.gpus);
            let gpus = asked.min(MAX_INSTANCES * per_instance) / per_instance * per_instance;
            let result = match self.offering(sku, gpus, rfq).await? {
                Some((offering, price)) if self.over_limit(&offering, price).is_some() => {
                    let why = self.over_limit(&offering, price).unwrap_or_default();
                    tracing::warn!(%need, "declining a request for quotes: {why}");
                    self.decline(&need, "other").await
                }
                Some((offering, price)) => {
                    let gpus = offering.instance_count * per_instance;
                    let answer = self
                        .client
                        .post(
                            &format!("/v1/needs/{need}/quote"),
                            &json!({"gpus": gpus, "price": (price * 100.0).ceil() / 100.0}),
                        )
                        .await;
                    match answer {
                        Err(ClientError::Api { status: 422, .. }) => {
                            self.decline(&need, "price").await
                        }
                        other => other.map(|_| self.stats.quoted += 1),
                    }
                }
                None => self.decline(&need, "no_capacity").await,
            };
            ignore_lost_races(result).map_err(failed)?;
        }
        Ok(())
    }

    async fn decline(&mut self, need: &str, reason: &str) -> Result<(), ClientError> {
        self.client
            .post(
                &format!("/v1/needs/{need}/decline"),
                &json!({"reason": reason}),
            )
            .await?;
        self.stats.declined += 1;
        Ok(())
    }

    /// Buys what an award needs, once, and confirms it.
    async fn settle(&mut self, need: &str, key: &str, award: &Value) -> Result<(), String> {
        let path = format!("/v1/needs/{need}/awards/{}", award["award"]);
        let state_file = self.settings.aws.state.clone();
        // A purchase begun before a crash: the tag says whether it happened.
        if let Some(p) = self
            .state
            .purchases
            .get(key)
            .filter(|p| p.reservation.is_none())
        {
            let found = self
                .ec2
                .reservations_tagged(key)
                .await
                .map_err(|e| e.to_string())?;
            if let Some(r) = found.first() {
                let mut p = p.clone();
                p.reservation = Some(r.id.clone());
                self.state.purchases.insert(key.to_owned(), p);
                self.state.save(&state_file)?;
            } else {
                // Not bought: the purchase may be tried again.
                self.state.purchases.remove(key);
                self.state.save(&state_file)?;
            }
        }
        if !self.state.purchases.contains_key(key) {
            let sku = award["sku"].as_str().unwrap_or_default();
            let gpus = count_of(&award["gpus"]).unwrap_or(0);
            let per_instance = self
                .settings
                .aws
                .instance_types
                .get(sku)
                .map_or(0, |t| t.gpus);
            let whole = per_instance > 0 && gpus % per_instance == 0;
            let offering = match whole {
                true => self.offering(sku, gpus, award).await?,
                false => None,
            };
            let Some((offering, price)) = offering else {
                return self
                    .fail(&path, "no capacity block for exactly the awarded GPUs")
                    .await;
            };
            // Checked again here: other purchases may have spent the room since the quote.
            if let Some(why) = self.over_limit(&offering, price) {
                return self.fail(&path, &why).await;
            }
            let cost = cost_of(&offering, price, per_instance);
            // Written before buying: a crash after this line is settled by the tag.
            self.state.purchases.insert(
                key.to_owned(),
                Purchase {
                    offering: offering.id.clone(),
                    cost,
                    reservation: None,
                    confirmed: false,
                },
            );
            self.state.save(&state_file)?;
            match self
                .ec2
                .purchase(&offering.id, &self.settings.aws.instance_platform, key)
                .await
            {
                Ok(reservation) => {
                    // For the restart test: die as a crash would, bought but not recorded.
                    if std::env::var_os("ROFR_AWS_AGENT_CRASH_AFTER_PURCHASE").is_some() {
                        std::process::abort();
                    }
                    self.stats.bought += 1;
                    if let Some(p) = self.state.purchases.get_mut(key) {
                        p.reservation = Some(reservation);
                    }
                    self.state.save(&state_file)?;
                }
                Err(e @ Ec2Error::Api { .. }) => {
                    // Refused: nothing was bought.
                    self.state.purchases.remove(key);
                    self.state.save(&state_file)?;
                    return self.fail(&path, &e.to_string()).await;
                }
                // Unknown whether it happened: the next poll asks by tag.
                Err(e) => return Err(e.to_string()),
            }
        }
        let Some(reservation) = self.state.purchases[key].reservation.clone() else {
            return Ok(());
        };
        let answer = self
            .client
            .post(
                &format!("{path}/confirm"),
                &json!({"reservation": reservation}),
            )
            .await;
        ignore_lost_races(answer.map(|_| ())).map_err(|e| e.to_string())?;
        self.stats.confirmed += 1;
        if let Some(p) = self.state.purchases.get_mut(key) {
            p.confirmed = true;
        }
        self.state.save(&state_file)
    }

    /// Why buying `offering` would break the spending limit, if it would.
    fn over_limit(&self, offering: &Offering, price: f64) -> Option<String> {
        let per_instance = self
            .settings
            .aws
            .instance_types
            .values()
            .find(|t| t.instance_type == offering.instance_type)
            .map_or(1, |t| t.gpus);
        let cost = cost_of(offering, price, per_instance);
        let (spent, limit) = (self.state.spent(), self.settings.aws.spending_limit);
        (spent + cost > limit).then(|| {
            format!(
                "over the spending limit: ${spent:.2} spent, ${cost:.2} more, limit ${limit:.2}"
            )
        })
    }

    async fn fail(&mut self, path: &str, reason: &str) -> Result<(), String> {
        if !self.seen.insert(format!("fail/{path}")) {
            return Ok(());
        }
        self.stats.failed += 1;
        let answer = self
            .client
            .post(&format!("{path}/fail"), &json!({"reason": reason}))
            .await;
        ignore_lost_races(answer.map(|_| ())).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_lengths_are_those_ec2_sells() {
        assert!(valid_block_hours(24) && valid_block_hours(14 * 24) && valid_block_hours(182 * 24));
        assert!(valid_block_hours(21 * 24));
        assert!(!valid_block_hours(0) && !valid_block_hours(23) && !valid_block_hours(15 * 24));
        assert!(!valid_block_hours(189 * 24) && !valid_block_hours(u32::MAX));
    }

    fn offering(count: u32, hours: u32, fee: Option<f64>) -> Offering {
        Offering {
            id: "cb-1".into(),
            instance_type: "p5.48xlarge".into(),
            instance_count: count,
            start: "2026-12-14T11:30:00Z".into(),
            end: "2026-12-16T11:30:00Z".into(),
            hours,
            upfront_fee: fee,
        }
    }

    #[test]
    fn a_fee_is_spread_over_the_blocks_gpu_hours() {
        // 2 instances × 8 GPUs × 48 h = 768 GPU-hours.
        let price = price_of(&offering(2, 48, Some(2995.2)), 2, 8, 48, None).unwrap();
        assert!((price - 3.9).abs() < 1e-12, "{price}");
        assert_eq!(
            price_of(&offering(2, 48, None), 2, 8, 48, Some(4.5)),
            Some(4.5)
        );
        assert_eq!(price_of(&offering(2, 48, None), 2, 8, 48, None), None);
        // Not what was asked for: another count or length.
        assert_eq!(price_of(&offering(3, 48, Some(1.0)), 2, 8, 48, None), None);
        assert_eq!(price_of(&offering(2, 24, Some(1.0)), 2, 8, 48, None), None);
    }

    #[test]
    fn a_fee_that_is_no_amount_makes_no_offering() {
        for fee in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0, 0.0, -0.0] {
            assert_eq!(
                price_of(&offering(2, 48, Some(fee)), 2, 8, 48, Some(4.5)),
                None,
                "{fee}"
            );
        }
        // The largest finite fee still prices, and stays finite.
        let price = price_of(&offering(64, 4368, Some(f64::MAX)), 64, 1024, 4368, None).unwrap();
        assert!(price.is_finite() && price > 0.0);
    }

    #[test]
    fn counts_that_do_not_fit_are_refused_not_wrapped() {
        assert_eq!(count_of(&json!(48)), Some(48));
        assert_eq!(count_of(&json!(u64::from(u32::MAX))), Some(u32::MAX));
        // 2^32 + 24 would wrap to a valid 24-hour block.
        assert_eq!(count_of(&json!((1u64 << 32) + 24)), None);
        assert_eq!(count_of(&json!(-1)), None);
        assert_eq!(count_of(&json!(1.5)), None);
        assert_eq!(count_of(&json!("48")), None);
    }

    proptest::proptest! {
        /// Whatever bits an answer's fee holds and whatever the block's shape within
        /// the settings' bounds, a price is finite and above zero, or there is none.
        #[test]
        fn any_fee_prices_finite_or_not_at_all(
            bits in proptest::prelude::any::<u64>(),
            count in 1u32..=MAX_INSTANCES,
            gpus in 1u32..=MAX_GPUS_PER_INSTANCE,
            hours in proptest::prelude::any::<u32>(),
        ) {
            let fee = f64::from_bits(bits);
            let price = price_of(&offering(count, hours, Some(fee)), count, gpus, hours, None);
            proptest::prop_assert!(price.is_none_or(|p| p.is_finite() && p > 0.0));
            // A price, where there is one, gives back the fee over the block's GPU-hours
            // (to a float's precision, which a subnormal price does not keep).
            let gpu_hours = f64::from(count) * f64::from(gpus) * f64::from(hours);
            if let Some(p) = price.filter(|p| p.is_normal()) {
                proptest::prop_assert!((p * gpu_hours - fee).abs() <= fee * 1e-12, "{} {}", p, fee);
            }
            // A fee that is a normal amount above zero over a block of some hours prices.
            if fee.is_normal() && fee > 0.0 && hours > 0 && fee / gpu_hours > f64::MIN_POSITIVE {
                proptest::prop_assert!(price.is_some(), "{}", fee);
            }
            // The block's GPUs, as the agent quotes them, fit a u32.
            proptest::prop_assert!(count.checked_mul(gpus).is_some());
        }
    }

    #[test]
    fn settings_errors_name_the_key() {
        let good = r#"
provider = "aws"
[aws]
region = "us-east-1"
spending_limit = 1000.0
state = "s.json"
[aws.instance_types]
H100 = { type = "p5.48xlarge", gpus = 8 }
"#;
        assert!(Settings::parse("a.toml", good).is_ok());
        let err = Settings::parse("a.toml", &good.replace("1000.0", "-1.0")).unwrap_err();
        assert!(err.contains("aws.spending_limit"), "{err}");
        let err = Settings::parse("a.toml", &good.replace("gpus = 8", "gpus = 0")).unwrap_err();
        assert!(err.contains("aws.instance_types.H100.gpus"), "{err}");
        let err = Settings::parse("a.toml", &good.replace("gpus = 8", "gpus = 1025")).unwrap_err();
        assert!(
            err.contains("is 1025; an instance has 1 to 1024 GPUs"),
            "{err}"
        );
        assert!(Settings::parse("a.toml", &good.replace("gpus = 8", "gpus = 1024")).is_ok());
        let err =
            Settings::parse("a.toml", &good.replace("gpus = 8", "gpus = 4294967296")).unwrap_err();
        // Past a u32: the parser names the file, line and column of the value.
        assert!(err.starts_with("a.toml:8:"), "{err}");
        let err = Settings::parse("a.toml", &good.replace("region", "regio")).unwrap_err();
        assert!(err.starts_with("a.toml:4:1:"), "{err}");
        let err = Settings::parse(
            "a.toml",
            &good.replace("state =", "credentials = \"vault\"\nstate ="),
        )
        .unwrap_err();
        assert!(err.contains("aws.credentials"), "{err}");
    }

    #[test]
    fn state_survives_a_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(State::load(&path).unwrap(), State::default());
        let mut state = State::default();
        state.purchases.insert(
            "n/1".into(),
            Purchase {
                offering: "cb-1".into(),
                cost: 12.5,
                reservation: None,
                confirmed: false,
            },
        );
        state.save(&path).unwrap();
        assert_eq!(State::load(&path).unwrap(), state);
        assert_eq!(state.spent(), 12.5);
        std::fs::write(&path, b"{").unwrap();
        assert!(State::load(&path)
            .unwrap_err()
            .contains("not the agent's state"));
    }
}
