//! `rofr agent`: a provider that answers over HTTP from a capacity model: what it has
//! (by sku, region and period), what it charges, and how it behaves (accepts, declines,
//! stays silent, takes its time, sometimes fails to deliver).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::client::{Client, ClientError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityModel {
    pub provider: String,
    #[serde(default)]
    pub seed: u64,
    /// How often the agent looks for new work, in milliseconds of real time.
    #[serde(default = "default_poll")]
    pub poll_ms: u64,
    pub capacity: Vec<Capacity>,
    #[serde(default)]
    pub behaviour: Behaviour,
}

fn default_poll() -> u64 {
    100
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    pub sku: String,
    /// Regions served; empty means any.
    #[serde(default)]
    pub regions: Vec<String>,
    pub gpus: u32,
    pub price_per_gpu_hour: f64,
    /// The period this inventory is there for (RFC 3339), where it is limited.
    pub from: Option<String>,
    pub until: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Behaviour {
    /// Chance of answering an offer at all; the rest is silence until the deadline.
    pub answer_probability: f64,
    /// Of the offers answered with capacity free, the chance of taking them.
    pub accept_probability: f64,
    /// Chance of quoting a request for quotes (declining otherwise, or when full).
    pub quote_probability: f64,
    /// Chance that an award is reported failed instead of confirmed.
    pub fail_probability: f64,
    /// Real-time delay before each answer, in milliseconds.
    pub answer_delay_ms: u64,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            answer_probability: 0.95,
            accept_probability: 0.8,
            quote_probability: 0.9,
            fail_probability: 0.0,
            answer_delay_ms: 0,
        }
    }
}

impl CapacityModel {
    /// Parses a model file, naming the line and column of any mistake.
    pub fn parse(file: &str, text: &str) -> Result<CapacityModel, String> {
        let model: CapacityModel = parse_toml(file, text)?;
        let b = &model.behaviour;
        for (name, p) in [
            ("behaviour.answer_probability", b.answer_probability),
            ("behaviour.accept_probability", b.accept_probability),
            ("behaviour.quote_probability", b.quote_probability),
            ("behaviour.fail_probability", b.fail_probability),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!(
                    "{file}: `{name}` is {p}; a probability lies in [0, 1]"
                ));
            }
        }
        Ok(model)
    }

    fn price(&self, sku: &str) -> Option<f64> {
        self.capacity
            .iter()
            .find(|c| c.sku == sku)
            .map(|c| c.price_per_gpu_hour)
    }

    fn total(&self, sku: &str, at: &str) -> u32 {
        self.capacity
            .iter()
            .filter(|c| c.sku == sku)
            .filter(|c| {
                c.from.as_deref().is_none_or(|f| f <= at)
                    && c.until.as_deref().is_none_or(|u| at < u)
            })
            .map(|c| c.gpus)
            .sum()
    }
}

/// A TOML settings file read into `T`, a mistake named by file:line:column.
pub fn parse_toml<T: serde::de::DeserializeOwned>(file: &str, text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|e| {
        let at = e
            .span()
            .map(|s| {
                let line = text[..s.start].matches('\n').count() + 1;
                let column = s.start - text[..s.start].rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("{file}:{line}:{column}: ")
            })
            .unwrap_or_default();
        format!("{at}{}", e.message())
    })
}

/// What an agent did, for the demo's counts and the tests.
#[derive(Debug, Default, Clone)]
pub struct AgentStats {
    pub accepted: u64,
    pub declined: u64,
    pub silent: u64,
    pub quoted: u64,
    pub confirmed: u64,
    pub failed: u64,
    pub errors: u64,
}

pub struct Agent {
    model: CapacityModel,
    client: Client,
    rng: StdRng,
    seen: BTreeSet<String>,
    /// GPUs promised in quotes not yet awarded or expired, by sku.
    promised: HashMap<String, Vec<(Instant, u32)>>,
    pub stats: AgentStats,
}

impl Agent {
    pub fn new(model: CapacityModel, client: Client) -> Agent {
        Agent {
            rng: StdRng::seed_from_u64(model.seed),
            model,
            client,
            seen: BTreeSet::new(),
            promised: HashMap::new(),
            stats: AgentStats::default(),
        }
    }

    /// Polls and answers until `stop` says so.
    pub async fn run(mut self, stop: tokio::sync::watch::Receiver<bool>) -> AgentStats {
        while !*stop.borrow() {
            if let Err(error) = self.poll_once().await {
                self.stats.errors += 1;
                tracing::debug!(provider = %self.model.provider, %error, "agent poll failed");
            }
            tokio::time::sleep(Duration::from_millis(self.model.poll_ms)).await;
        }
        self.stats
    }

    async fn pause(&self) {
        if self.model.behaviour.answer_delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.model.behaviour.answer_delay_ms)).await;
        }
    }

    fn free(&mut self, sku: &str, awards: &[Value], now: &str) -> u32 {
        let held: u32 = awards
            .iter()
            .filter(|a| {
                a["sku"] == sku
                    && matches!(
                        a["status"].as_str(),
                        Some("made" | "confirmed" | "pending_approval")
                    )
            })
            .map(|a| count_of(&a["gpus"]).unwrap_or(0))
            .sum();
        let promised = self.promised.entry(sku.to_owned()).or_default();
        promised.retain(|(when, _)| when.elapsed() < Duration::from_secs(3));
        let promised: u32 = promised.iter().map(|(_, g)| g).sum();
        self.model.total(sku, now).saturating_sub(held + promised)
    }

    pub async fn poll_once(&mut self) -> Result<(), ClientError> {
        let now = self.client.get("/healthz").await?["now"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        // Those that hold capacity; the made ones await this agent's answer.
        let awards = self
            .client
            .all_pages(
                "/v1/awards?status=pending_approval,made,confirmed",
                "awards",
            )
            .await?;
        for award in &awards {
            if award["status"] != "made" {
                continue;
            }
            let key = format!(
                "award/{}/{}",
                award["need"].as_str().unwrap_or(""),
                award["award"]
            );
            if !self.seen.insert(key) {
                continue;
            }
            self.pause().await;
            let need = award["need"].as_str().unwrap_or_default();
            let path = format!("/v1/needs/{need}/awards/{}", award["award"]);
            if self.rng.random_bool(self.model.behaviour.fail_probability) {
                self.client
                    .post(
                        &format!("{path}/fail"),
                        &json!({"reason": "capacity fell through"}),
                    )
                    .await?;
                self.stats.failed += 1;
            } else {
                let reservation = format!("{}-{need}-{}", self.model.provider, award["award"]);
                self.client
                    .post(
                        &format!("{path}/confirm"),
                        &json!({"reservation": reservation}),
                    )
                    .await?;
                self.stats.confirmed += 1;
            }
        }

        let offers = self.client.get("/v1/offers").await?["offers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for offer in &offers {
            let need = offer["need"].as_str().unwrap_or_default().to_owned();
            if !self.seen.insert(format!("offer/{need}/{}", offer["offer"])) {
                continue;
            }
            if !self
                .rng
                .random_bool(self.model.behaviour.answer_probability)
            {
                self.stats.silent += 1;
                continue;
            }
            self.pause().await;
            let sku = offer["sku"].as_str().unwrap_or_default();
            let free = self.free(sku, &awards, &now);
            let wanted = count_of(&offer["gpus"]).unwrap_or(0);
            let is_match = offer["kind"] == "match";
            let take = self
                .rng
                .random_bool(self.model.behaviour.accept_probability)
                && free > 0;
            let result = if take {
                let gpus = wanted.min(free);
                let verb = if is_match { "match" } else { "accept" };
                let body = json!({"offer": offer["offer"], "gpus": gpus});
                match self
                    .client
                    .post(&format!("/v1/needs/{need}/{verb}"), &body)
                    .await
                {
                    // An all-or-nothing right refuses a partial take: decline instead.
                    Err(ClientError::Api { status: 422, .. }) if gpus < wanted => {
                        self.decline(&need, &offer["offer"], "no_capacity").await
                    }
                    other => other.map(|_| self.stats.accepted += 1),
                }
            } else {
                let reason = if free == 0 { "no_capacity" } else { "price" };
                self.decline(&need, &offer["offer"], reason).await
            };
            ignore_lost_races(result)?;
        }

        let rfqs = self.client.get("/v1/rfqs").await?["rfqs"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for rfq in &rfqs {
            let need = rfq["need"].as_str().unwrap_or_default().to_owned();
            if !self.seen.insert(format!("rfq/{need}/{}", rfq["round"])) {
                continue;
            }
            self.pause().await;
            let sku = rfq["sku"].as_str().unwrap_or_default();
            let free = self.free(sku, &awards, &now);
            let asked = count_of(&rfq["gpus"]).unwrap_or(0);
            let price = self.model.price(sku);
            let result = match price {
                Some(price)
                    if free > 0 && self.rng.random_bool(self.model.behaviour.quote_probability) =>
                {
                    let gpus = asked.min(free);
                    self.promised
                        .entry(sku.to_owned())
                        .or_default()
                        .push((Instant::now(), gpus));
                    let body = json!({"gpus": gpus, "price": price});
                    match self
                        .client
                        .post(&format!("/v1/needs/{need}/quote"), &body)
                        .await
                    {
                        // Above the buyer's maximum: say so.
                        Err(ClientError::Api { status: 422, .. }) => self
                            .client
                            .post(
                                &format!("/v1/needs/{need}/decline"),
                                &json!({"reason": "price"}),
                            )
                            .await
                            .map(|_| self.stats.declined += 1),
                        other => other.map(|_| self.stats.quoted += 1),
                    }
                }
                _ => self
                    .client
                    .post(
                        &format!("/v1/needs/{need}/decline"),
                        &json!({"reason": "no_capacity"}),
                    )
                    .await
                    .map(|_| self.stats.declined += 1),
            };
            ignore_lost_races(result)?;
        }
        Ok(())
    }

    async fn decline(
        &mut self,
        need: &str,
        offer: &Value,
        reason: &str,
    ) -> Result<(), ClientError> {
        let body = json!({"offer": offer, "reason": reason});
        self.client
            .post(&format!("/v1/needs/{need}/decline"), &body)
            .await?;
        self.stats.declined += 1;
        Ok(())
    }
}

/// A count the broker sent (GPUs, hours), where it fits a `u32`: never cut down to fit,
/// which could turn a count past 2^32 into a small, valid one.
pub(crate) fn count_of(value: &Value) -> Option<u32> {
    value.as_u64().and_then(|n| u32::try_from(n).ok())
}

/// An answer that arrives after its deadline (409) or to something withdrawn (404) is
/// a race the agent lost, not a failure.
pub(crate) fn ignore_lost_races(result: Result<(), ClientError>) -> Result<(), ClientError> {
    match result {
        Err(ClientError::Api {
            status: 404 | 409, ..
        }) => Ok(()),
        other => other,
    }
}
