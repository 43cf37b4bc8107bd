//! `rofr demo`: the whole system in one command. A broker on a fresh SQLite file with
//! the example Stargate deal, four provider agents answering over real HTTP, a stream
//! of needs from the buyer, an approver for gated awards, and a summary read back from
//! the event log.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use rofr_store::Location;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rofr_engine::types::{ProviderId, Timestamp};
use serde_json::{json, Value};

use crate::agent::{Agent, AgentStats, CapacityModel};
use crate::client::Client;
use rofr_server::witness::Witness;
use rofr_server::{Broker, Clock, Party};

pub const DEAL_FILE: &str = "examples/deals/stargate.toml";
pub const DEAL: &str = include_str!("../../../examples/deals/stargate.toml");
pub const AGENTS: [(&str, &str); 4] = [
    ("azure", include_str!("../../../examples/agents/azure.toml")),
    (
        "oracle",
        include_str!("../../../examples/agents/oracle.toml"),
    ),
    (
        "softbank-stargate",
        include_str!("../../../examples/agents/softbank-stargate.toml"),
    ),
    (
        "coreweave",
        include_str!("../../../examples/agents/coreweave.toml"),
    ),
];

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub needs: usize,
    /// Model seconds per real second.
    pub speed: f64,
    pub seed: u64,
    pub listen: String,
    /// Where to keep the database; a temporary directory when `None`.
    pub database: Option<PathBuf>,
    pub progress: bool,
}

/// Everything the demo prints, computed from the event log.
#[derive(Debug, Default)]
pub struct Summary {
    pub needs: usize,
    pub by_status: BTreeMap<String, usize>,
    pub gpu_hours: BTreeMap<String, f64>,
    pub hhi: f64,
    pub hhi_alert: Option<f64>,
    pub holder: String,
    pub in_scope: usize,
    pub holder_first: usize,
    pub exempt: usize,
    pub lapses: usize,
    pub reoffers: usize,
    pub revivals: usize,
    pub approvals: usize,
    pub hours_to_award: Vec<f64>,
    pub events: usize,
}

pub struct Running {
    pub url: String,
    pub tokens: Vec<(String, String)>,
    pub summary: Summary,
    pub agents: Vec<(String, AgentStats)>,
    pub stop: tokio::sync::watch::Sender<bool>,
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
    pub database: PathBuf,
    /// The ledger's verifier key, for `rofr verify`.
    pub verifier_key: String,
    /// How far witnessing trails the log at the end.
    pub witnessing: rofr_server::broker::witnessing::Witnessing,
    /// The holder's witness: its verifier key, URL and SQLite file.
    pub witness_key: String,
    pub witness_url: String,
    pub witness_database: PathBuf,
    /// The deal file the demo adopted: the example deal with the holder's witness.
    pub deal_file: PathBuf,
    pub witness: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The report of the demo's period, its export, and where its pages are.
    pub report: rofr_report::Report,
    pub export_file: PathBuf,
    pub report_dir: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

/// Downloads the export of `period`, reads it as `rofr report` would, and writes
/// report.html and report.json into `dir`.
async fn write_report(
    client: &Client,
    (from, to): (Timestamp, Timestamp),
    export_file: &std::path::Path,
    dir: &std::path::Path,
    verifier_key: &str,
    witness_key: &str,
) -> Result<rofr_report::Report, String> {
    let path = format!("/v1/ledger/export?from={from}&to={to}");
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(export_file)
            .map_err(|e| format!("cannot write {}: {e}", export_file.display()))?,
    );
    client
        .download(&path, &mut file)
        .await
        .map_err(|e| format!("the export: {e}"))?;
    drop(file);
    let key = rofr_ledger::VerifierKey::parse(verifier_key).map_err(|e| e.to_string())?;
    let witness = rofr_ledger::CosignerKey::parse(witness_key).map_err(|e| e.to_string())?;
    let input = std::io::BufReader::new(
        std::fs::File::open(export_file).map_err(|e| format!("cannot read the export: {e}"))?,
    );
    let name = export_file.display().to_string();
    let report = rofr_report::make(input, &name, &key, &[witness])
        .map_err(|e| format!("the demo's own export did not verify: {e}"))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())? + "\n";
    for (file, bytes) in [
        ("report.json", json.into_bytes()),
        (
            "report.html",
            rofr_report::html::render(&report).into_bytes(),
        ),
    ] {
        std::fs::write(dir.join(file), bytes)
            .map_err(|e| format!("cannot write {}: {e}", dir.join(file).display()))?;
    }
    Ok(report)
}

/// The first moment of the demo's model time: Monday 3 February 2025.
pub fn origin() -> Timestamp {
    Timestamp::parse("2025-02-03T00:00:00Z").expect("valid")
}

pub async fn run(options: DemoOptions) -> Result<Running, String> {
    let (dir, database) = match &options.database {
        Some(path) => (None, path.clone()),
        None => {
            let dir = tempfile::tempdir()
                .map_err(|e| format!("cannot make a temporary directory: {e}"))?;
            let path = dir.path().join("rofr-demo.db");
            (Some(dir), path)
        }
    };
    let clock = Clock::scaled(origin(), options.speed);
    let location = Location::Sqlite(database.clone());
    // The holder runs a witness: the deal names it, and the broker gathers its
    // cosignature on every checkpoint.
    let beside = |suffix: &str| {
        let mut name = database.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    let witness_database = beside(".witness.db");
    let mut witness = Witness::open(&witness_database, Some("witness.azure.demo/rofr"))?;
    let witness_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot listen for the holder's witness: {e}"))?;
    let witness_url = format!(
        "http://{}",
        witness_listener.local_addr().map_err(|e| e.to_string())?
    );
    let witness_key = witness.verifier_key();
    let deal_text = format!(
        "{DEAL}\n# The holder's witness, started by `rofr demo`.\n[[witness]]\nname = \"azure\"\nkey = \"{witness_key}\"\nurl = \"{witness_url}\"\nrequired = true\n"
    );
    let deal_file = beside(".deal.toml");
    std::fs::write(&deal_file, &deal_text)
        .map_err(|e| format!("cannot write {}: {e}", deal_file.display()))?;
    let deal_name = deal_file.display().to_string();
    let broker = Broker::open(
        &location,
        Some((&deal_name, &deal_text)),
        clock.clone(),
        None,
    )
    .map_err(|e| e.to_string())?;
    let (log_origin, log_key) = broker.ledger(|l| (l.origin().to_owned(), l.verifier_key()));
    witness.trust(
        &log_origin,
        rofr_ledger::VerifierKey::parse(&log_key).map_err(|e| e.to_string())?,
    );
    // The demo's providers and any receiver a user tries it with run on this machine.
    broker.allow_private_webhooks(true);
    let mut tokens = Vec::new();
    let mut token = |label: &str, party: Party| -> Result<String, String> {
        let t = Broker::create_token(&location, &party, label).map_err(|e| e.to_string())?;
        tokens.push((label.to_owned(), t.clone()));
        Ok(t)
    };
    let buyer = token("buyer", Party::Buyer)?;
    let auditor = token("auditor", Party::Auditor)?;
    let mut provider_tokens = Vec::new();
    for (id, _) in AGENTS {
        let party = Party::Provider(ProviderId::parse(id).expect("valid id"));
        provider_tokens.push(token(id, party)?);
    }

    let listener = tokio::net::TcpListener::bind(&options.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", options.listen))?;
    let url = format!(
        "http://{}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut witness_stop = stopped.clone();
    let witness = tokio::spawn(rofr_server::witness::serve(
        std::sync::Arc::new(witness),
        witness_listener,
        async move {
            let _ = witness_stop.wait_for(|s| *s).await;
        },
    ));
    let mut server_stop = stopped.clone();
    let server = tokio::spawn(rofr_server::serve(broker.clone(), listener, async move {
        let _ = server_stop.wait_for(|s| *s).await;
    }));

    let mut agent_tasks = Vec::new();
    for ((id, model), token) in AGENTS.iter().zip(&provider_tokens) {
        let model = CapacityModel::parse(id, model)?;
        let agent = Agent::new(model, Client::new(&url, token));
        let stopped = stopped.clone();
        agent_tasks.push((id.to_string(), tokio::spawn(agent.run(stopped))));
    }
    let (approver_stop, approver_stopped) = tokio::sync::watch::channel(false);
    let approver = tokio::spawn(approve_everything(
        Client::new(&url, &buyer),
        approver_stopped,
    ));

    let buyer_client = Client::new(&url, &buyer);
    let bar = progress(options.progress, options.needs as u64, "submitting needs");
    let mut rng = StdRng::seed_from_u64(options.seed);
    // Needs arrive over twenty model days.
    let spacing =
        Duration::from_secs_f64(20.0 * 86_400.0 / options.speed / options.needs.max(1) as f64);
    for i in 0..options.needs {
        let now = clock.now();
        let need = generate_need(&mut rng, i, now);
        let key = format!("demo-{i}");
        buyer_client
            .post_with_key("/v1/needs", &need, Some(&key))
            .await
            .map_err(|e| format!("submitting need {i}: {e}"))?;
        bar.inc(1);
        tokio::time::sleep(spacing).await;
    }
    bar.finish();

    // Wait until nothing is in flight, or until every decision date has passed.
    let bar = progress(options.progress, options.needs as u64, "settling");
    let deadline = Instant::now()
        + Duration::from_secs_f64(16.0 * 86_400.0 / options.speed)
        + Duration::from_secs(5);
    loop {
        let rows = buyer_client
            .all_pages("/v1/needs", "needs")
            .await
            .map_err(|e| e.to_string())?;
        let open = rows
            .iter()
            .filter(|r| {
                matches!(
                    r["status"].as_str(),
                    Some("offered" | "sourcing" | "waiting")
                )
            })
            .count();
        bar.set_position((rows.len() - open) as u64);
        if open == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bar.finish();
    let _ = approver_stop.send(true);
    let _ = approver.await;
    let _ = stop.send(false);

    let summary = summarize(&Client::new(&url, &auditor), &broker).await?;
    let mut agents = Vec::new();
    // Agents keep answering while the server runs (`--keep`); they stop with it.
    for (id, task) in agent_tasks {
        if !task.is_finished() {
            agents.push((id, AgentStats::default()));
            continue;
        }
        agents.push((id, task.await.unwrap_or_default()));
    }
    let verifier_key = broker.ledger(|l| l.verifier_key());
    // A last checkpoint of everything, for the holder's witness to cosign.
    let (size, _) = broker.checkpoint_now().map_err(|e| e.to_string())?;
    broker.wait_witnessed(size, Duration::from_secs(10)).await;
    let witnessing = broker.witnessing();
    // The report of the demo's period, from an export read back over HTTP and
    // verified with the log's key and the holder's witness.
    let period = (
        origin(),
        Timestamp::parse(&format!("{}T00:00:00Z", &clock.now().to_string()[..10]))
            .map_err(|e| e.to_string())?
            .plus_seconds(86_400),
    );
    let export_file = beside(".export.jsonl");
    let report_dir = beside(".report");
    let report = write_report(
        &Client::new(&url, &auditor),
        period,
        &export_file,
        &report_dir,
        &verifier_key,
        &witness_key,
    )
    .await?;
    Ok(Running {
        report,
        export_file,
        report_dir,
        witnessing,
        verifier_key,
        witness_key,
        witness_url,
        witness_database,
        deal_file,
        witness,
        url,
        tokens,
        summary,
        agents,
        stop,
        server,
        database,
        _dir: dir,
    })
}

fn progress(show: bool, total: u64, message: &'static str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>16} [{bar:40}] {pos}/{len} ({elapsed})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(message);
    bar
}

/// A plausible need: sku, size, workload and price drawn from the mix a frontier lab
/// buys (public 2025 list prices), a week's notice and a fortnight to decide.
fn generate_need(rng: &mut StdRng, i: usize, now: Timestamp) -> Value {
    let (sku, max_price) = match rng.random_range(0..10) {
        0..=4 => ("H100", 7.5),
        5..=6 => ("H200", 8.0),
        _ => ("GB200", 11.0),
    };
    let gpus = [8, 8, 16, 32, 32, 64, 64, 128, 256, 512][rng.random_range(0..10)];
    let workload = match rng.random_range(0..20) {
        0..=9 => "training",
        10..=16 => "inference",
        _ => "research",
    };
    let hours = [24, 48, 72, 168, 336][rng.random_range(0..5)];
    let mut tags = Vec::new();
    if rng.random_bool(0.05) {
        tags.push("windsurf");
    }
    let day = 86_400;
    json!({
        "id": format!("need-{i:05}"),
        "sku": sku,
        "gpus": gpus,
        "hours": hours,
        "workload": workload,
        "tags": tags,
        "earliest_start": now.plus_seconds(7 * day).to_string(),
        "latest_start": now.plus_seconds(21 * day).to_string(),
        "max_price_per_gpu_hour": max_price,
        "decide_by": now.plus_seconds(14 * day).to_string(),
        "launch": format!("launch-{}", i % 12),
    })
}

/// The demo's approver signs off every gated award.
async fn approve_everything(client: Client, stop: tokio::sync::watch::Receiver<bool>) {
    while !*stop.borrow() {
        for status in ["awarded", "waiting", "sourcing"] {
            let Ok(page) = client
                .get(&format!("/v1/needs?status={status}&limit=1000"))
                .await
            else {
                continue;
            };
            for row in page["needs"].as_array().cloned().unwrap_or_default() {
                let id = row["id"].as_str().unwrap_or_default();
                let Ok(need) = client.get(&format!("/v1/needs/{id}")).await else {
                    continue;
                };
                for award in need["awards"].as_array().cloned().unwrap_or_default() {
                    if award["status"] == "pending_approval" {
                        let path = format!("/v1/needs/{id}/awards/{}/approve", award["award"]);
                        let _ = client.post(&path, &json!({})).await;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn hours_between(from: &str, to: &str) -> Option<f64> {
    let from = Timestamp::parse(from).ok()?;
    let to = Timestamp::parse(to).ok()?;
    Some((to.unix_seconds() - from.unix_seconds()) as f64 / 3600.0)
}

/// Reads the whole event log back as an auditor would and tells its story.
pub async fn summarize(auditor: &Client, broker: &Broker) -> Result<Summary, String> {
    let events = auditor
        .all_pages("/v1/events", "events")
        .await
        .map_err(|e| e.to_string())?;
    let rows = auditor
        .all_pages("/v1/needs", "needs")
        .await
        .map_err(|e| e.to_string())?;
    // Every entry but the deal's.
    let count = events
        .iter()
        .filter(|e| e["event"]["type"] != "deal_adopted")
        .count();
    let mut summary = Summary {
        needs: rows.len(),
        events: count,
        ..Summary::default()
    };
    for row in &rows {
        *summary
            .by_status
            .entry(row["status"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    let deal = broker.deal();
    summary.holder = deal
        .first_refusals
        .first()
        .map(|f| f.holder.to_string())
        .unwrap_or_default();
    summary.hhi_alert = deal.caps.iter().find_map(|c| c.hhi_alert);

    struct Need {
        hours: f64,
        submitted: String,
        holder: Option<String>,
        exempt: bool,
        holder_offered: bool,
        others_first: bool,
        first_award: Option<String>,
    }
    let mut needs: HashMap<String, Need> = HashMap::new();
    let mut awards: HashMap<(String, u64), (String, f64)> = HashMap::new();
    for entry in &events {
        let e = &entry["event"];
        let need_id = e["need"].as_str().unwrap_or_default().to_owned();
        let at = e["at"].as_str().unwrap_or_default().to_owned();
        let provider = e["provider"].as_str().map(str::to_owned);
        match e["type"].as_str().unwrap_or_default() {
            "need_submitted" => {
                needs.insert(
                    need_id,
                    Need {
                        hours: e["hours"].as_f64().unwrap_or(0.0),
                        submitted: at,
                        holder: e["holder"].as_str().map(str::to_owned),
                        exempt: e.get("holder_exempt").is_some(),
                        holder_offered: false,
                        others_first: false,
                        first_award: None,
                    },
                );
            }
            kind => {
                let Some(need) = needs.get_mut(&need_id) else {
                    continue;
                };
                let to_holder = provider.is_some() && provider == need.holder;
                match kind {
                    "offer_sent" if to_holder => need.holder_offered = true,
                    "rfq_sent" | "award_made" | "approval_requested"
                        if need.holder.is_some() && !to_holder && !need.holder_offered =>
                    {
                        need.others_first = true
                    }
                    _ => {}
                }
                match kind {
                    "offer_lapsed" | "match_lapsed" => summary.lapses += 1,
                    "offer_sent" if e["reoffer"] == true => summary.reoffers += 1,
                    "right_revived" => summary.revivals += 1,
                    "approval_requested" => summary.approvals += 1,
                    "award_made" => {
                        let gpu_hours = e["gpus"].as_f64().unwrap_or(0.0) * need.hours;
                        let key = (need_id.clone(), e["award"].as_u64().unwrap_or(0));
                        awards.insert(key, (provider.clone().unwrap_or_default(), gpu_hours));
                        if need.first_award.is_none() {
                            need.first_award = Some(at);
                        }
                    }
                    "award_failed" => {
                        awards.remove(&(need_id.clone(), e["award"].as_u64().unwrap_or(0)));
                    }
                    _ => {}
                }
            }
        }
    }
    for (provider, gpu_hours) in awards.values() {
        *summary.gpu_hours.entry(provider.clone()).or_default() += gpu_hours;
    }
    let total: f64 = summary.gpu_hours.values().sum();
    if total > 0.0 {
        summary.hhi = summary
            .gpu_hours
            .values()
            .map(|g| (g / total * 100.0).powi(2))
            .sum();
    }
    for need in needs.values() {
        if need.holder.is_some() {
            summary.in_scope += 1;
            if need.holder_offered && !need.others_first {
                summary.holder_first += 1;
            }
        }
        if need.exempt {
            summary.exempt += 1;
        }
        if let Some(award) = &need.first_award {
            summary
                .hours_to_award
                .extend(hours_between(&need.submitted, award));
        }
    }
    summary.hours_to_award.sort_by(f64::total_cmp);
    Ok(summary)
}

impl Summary {
    fn percentile(&self, p: f64) -> Option<f64> {
        let n = self.hours_to_award.len();
        (n > 0).then(|| self.hours_to_award[((n - 1) as f64 * p).round() as usize])
    }

    /// The summary as a plain-text table.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "\nNeeds by outcome ({} needs, {} events)\n",
            self.needs, self.events
        ));
        for (status, count) in &self.by_status {
            out.push_str(&format!("  {status:<12} {count:>6}\n"));
        }
        let total: f64 = self.gpu_hours.values().sum();
        out.push_str(&format!(
            "\n{:<20} {:>14} {:>8}\n",
            "Provider", "GPU-hours", "share"
        ));
        let mut providers: Vec<_> = self.gpu_hours.iter().collect();
        providers.sort_by(|a, b| b.1.total_cmp(a.1));
        for (provider, hours) in providers {
            let share = if total > 0.0 {
                hours / total * 100.0
            } else {
                0.0
            };
            out.push_str(&format!(
                "  {provider:<18} {:>14} {share:>7.1}%\n",
                thousands(*hours)
            ));
        }
        let alert = match self.hhi_alert {
            Some(line) if self.hhi > line => format!(" (above the {line:.0} alert line)"),
            Some(line) => format!(" (below the {line:.0} alert line)"),
            None => String::new(),
        };
        out.push_str(&format!(
            "\nHHI of awarded GPU-hours: {:.0}{alert}\n",
            self.hhi
        ));
        out.push_str(&format!(
            "First refusal: {} of {} in-scope needs were offered to {} before anyone else",
            self.holder_first, self.in_scope, self.holder
        ));
        if self.exempt > 0 {
            out.push_str(&format!(
                "; {} needs skipped it under a placement restriction",
                self.exempt
            ));
        }
        out.push('\n');
        out.push_str(&format!(
            "Lapses (deemed refusals): {}   re-offers: {}   revivals: {}   approvals: {}\n",
            self.lapses, self.reoffers, self.revivals, self.approvals
        ));
        if let (Some(p50), Some(p90)) = (self.percentile(0.5), self.percentile(0.9)) {
            out.push_str(&format!(
                "Time to first award (model hours): median {p50:.1}, p90 {p90:.1}\n"
            ));
        }
        out
    }
}

fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
