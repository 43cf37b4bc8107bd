//! The deal language: each bad input names file:line:column and the key, and each
//! lint names the clauses involved. Cases are data: a deal text and what must be said.

use rofr_engine::deal::parse_deal;
use rofr_engine::diagnostic::{Diagnostic, Severity};
use rofr_engine::lint::lint;
use rofr_engine::types::Timestamp;

const PROVIDERS: &str = r#"
[deal]
name = "t"

[[provider]]
id = "azure"
skus = ["H100"]
max_gpus = 1000

[[provider]]
id = "oracle"
max_gpus = 1000
"#;

fn today() -> Timestamp {
    Timestamp::parse("2026-01-01T00:00:00Z").unwrap()
}

fn findings(extra: &str) -> Vec<Diagnostic> {
    let text = format!("{PROVIDERS}{extra}");
    match parse_deal("t.toml", &text) {
        Ok(deal) => lint(&deal, today()),
        Err(errors) => errors,
    }
}

/// Asserts one finding with this code at this line:column (and key, where given).
fn check(extra: &str, code: &str, line_col: (usize, usize), key: Option<&str>) {
    let all = findings(extra);
    let found = all
        .iter()
        .find(|d| d.code == code)
        .unwrap_or_else(|| panic!("no `{code}` in {all:#?}"));
    // Line numbers count from the start of the whole file; PROVIDERS is 12 lines.
    let at = (found.location.line - 12, found.location.column);
    assert_eq!(at, line_col, "{found}");
    assert_eq!(found.key.as_deref(), key, "{found}");
    assert_eq!(found.location.file, "t.toml");
}

const FR: &str = "[[first_refusal]]\nholder = \"azure\"\nvariant = \"first_offer\"\nwindow = \"72h\"\nterm = { from = 2025-01-01 }\n";

#[test]
fn an_unknown_key_is_pointed_at() {
    check(
        "[[first_refusal]]\nholdr = \"azure\"\n",
        "invalid-toml",
        (2, 1),
        None,
    );
}

#[test]
fn a_misspelt_variant_names_the_key_and_the_choices() {
    let text = FR.replace("first_offer", "first_refusal");
    check(
        &text,
        "invalid-value",
        (3, 11),
        Some("first_refusal[0].variant"),
    );
    assert!(findings(&text)[0].message.contains("\"last_look\""));
}

#[test]
fn a_bad_duration_says_what_would_be_right() {
    let text = FR.replace("72h", "3 fortnights");
    check(
        &text,
        "invalid-value",
        (4, 10),
        Some("first_refusal[0].window"),
    );
    assert!(findings(&text)[0].message.contains("10 business days"));
}

#[test]
fn a_share_outside_zero_to_one_is_refused() {
    check(
        "[[concentration_cap]]\nmax_share = 1.5\n",
        "invalid-value",
        (2, 13),
        Some("concentration_cap[0].max_share"),
    );
}

#[test]
fn a_quoted_date_asks_for_a_toml_date() {
    let text = FR.replace("from = 2025-01-01", "from = \"2025-01-01\"");
    let all = findings(&text);
    assert_eq!(all[0].code, "invalid-toml");
    assert!(
        all[0].help.as_deref().unwrap_or("").contains("unquoted"),
        "{}",
        all[0]
    );
}

#[test]
fn a_term_that_ends_before_it_starts_is_refused() {
    let text = FR.replace(
        "term = { from = 2025-01-01 }",
        "term = { from = 2025-01-01, until = 2024-01-01 }",
    );
    check(
        &text,
        "invalid-value",
        (5, 37),
        Some("first_refusal[0].term.until"),
    );
}

#[test]
fn an_unknown_time_zone_is_refused() {
    check(
        "[calendar]\ntime_zone = \"Mars/Olympus\"\n",
        "invalid-value",
        (2, 13),
        Some("calendar.time_zone"),
    );
}

#[test]
fn several_errors_are_all_reported_in_file_order() {
    let text = FR.replace("first_offer", "nope").replace("72h", "soon");
    let all = findings(&text);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(all[0].location.line < all[1].location.line);
}

#[test]
fn a_holder_the_deal_does_not_name_is_an_error() {
    let text = FR.replace("holder = \"azure\"", "holder = \"gcp\"");
    check(
        &text,
        "unknown-provider",
        (2, 10),
        Some("first_refusal[0].holder"),
    );
}

#[test]
fn a_restriction_on_the_holder_inside_its_scope_names_both_clauses() {
    let text = format!("{FR}\n[[placement_restriction]]\nname = \"ip\"\ntags = [\"windsurf\"]\nproviders = [\"azure\"]\n");
    let all = findings(&text);
    let finding = all
        .iter()
        .find(|d| d.code == "restriction-denies-holder")
        .expect("flagged");
    assert_eq!(finding.severity, Severity::Warning);
    let kinds: Vec<&str> = finding.clauses.iter().map(|c| c.kind).collect();
    assert_eq!(kinds, ["first_refusal", "placement_restriction"]);
    assert!(finding.help.as_deref().unwrap().contains("exclude_tags"));
}

#[test]
fn a_carve_out_in_the_scope_silences_the_restriction_warning() {
    let text = format!(
        "{FR}[first_refusal.scope]\nexclude_tags = [\"windsurf\"]\n\n[[placement_restriction]]\ntags = [\"windsurf\"]\nproviders = [\"azure\"]\n"
    );
    assert!(findings(&text)
        .iter()
        .all(|d| d.code != "restriction-denies-holder"));
}

#[test]
fn two_holders_over_overlapping_scope_conflict() {
    let text = format!("{FR}\n{}", FR.replace("azure", "oracle"));
    let all = findings(&text);
    let finding = all
        .iter()
        .find(|d| d.code == "conflicting-first-refusal")
        .expect("flagged");
    assert_eq!(finding.severity, Severity::Error);
    assert_eq!(finding.clauses.len(), 2);
}

#[test]
fn disjoint_scopes_do_not_conflict() {
    let a = format!("{FR}[first_refusal.scope]\nskus = [\"H100\"]\n");
    let b = FR.replace("azure", "oracle") + "[first_refusal.scope]\nskus = [\"GB200\"]\n";
    assert!(findings(&format!("{a}\n{b}"))
        .iter()
        .all(|d| d.code != "conflicting-first-refusal"));
}

#[test]
fn a_cap_that_makes_a_commitment_unreachable_is_an_error() {
    // Two providers of 1,000 GPUs for a year: at most 17.5M GPU-hours in all. A 10% cap
    // on oracle leaves it 1.75M, below the 5M committed.
    let text = "[[concentration_cap]]\nmax_share = 0.1\nproviders = [\"oracle\"]\n\n[[commitment]]\nprovider = \"oracle\"\nmin_gpu_hours = 5000000\nperiod = { from = 2026-01-01, until = 2027-01-01 }\n";
    let all = findings(text);
    let finding = all
        .iter()
        .find(|d| d.code == "commitment-unreachable" && d.clauses.len() == 2)
        .unwrap_or_else(|| panic!("{all:#?}"));
    assert_eq!(finding.clauses[1].kind, "concentration_cap");
}

#[test]
fn a_commitment_beyond_the_providers_capacity_is_an_error() {
    let text = "[[commitment]]\nprovider = \"oracle\"\nmin_gpu_hours = 9000000\nperiod = { from = 2026-01-01, until = 2027-01-01 }\n";
    check(
        text,
        "commitment-unreachable",
        (1, 1),
        Some("commitment[0].min_gpu_hours"),
    );
}

#[test]
fn caps_that_cannot_place_all_demand_are_an_error() {
    check(
        "[[concentration_cap]]\nmax_share = 0.4\n",
        "caps-unsatisfiable",
        (1, 1),
        None,
    );
}

#[test]
fn a_scope_the_holder_cannot_serve_matches_nothing() {
    let text = format!("{FR}[first_refusal.scope]\nskus = [\"GB200\"]\n");
    check(
        &text,
        "scope-matches-nothing",
        (6, 1),
        Some("first_refusal[0].scope"),
    );
}

#[test]
fn an_expired_term_is_a_warning() {
    let text = FR.replace(
        "term = { from = 2025-01-01 }",
        "term = { from = 2024-01-01, until = 2025-06-01 }",
    );
    let all = findings(&text);
    let finding = all
        .iter()
        .find(|d| d.code == "term-expired")
        .expect("flagged");
    assert_eq!(finding.severity, Severity::Warning);
}

#[test]
fn negotiate_with_a_reoffer_threshold_warns_that_it_has_no_effect() {
    let text = FR.replace("first_offer", "negotiate") + "reoffer_threshold = 0.05\n";
    assert!(findings(&text).iter().any(|d| d.code == "setting-ignored"));
}

#[test]
fn business_day_windows_parse() {
    let text = FR.replace("72h", "10 business days");
    assert!(findings(&text).is_empty(), "{:#?}", findings(&text));
}

#[test]
fn an_unknown_allocation_names_the_key_and_the_choices() {
    let text = "[sourcing]\nallocation = \"cheapest\"\n";
    check(text, "invalid-value", (2, 14), Some("sourcing.allocation"));
    assert!(findings(text)[0].message.contains("`ordered`"));
}

/// A detached deal equals the original, shares no id's text with it, and names each
/// provider by one id wherever it appears.
#[test]
fn a_detached_deal_is_equal_and_shares_no_ids() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/deals/stargate.toml"
    ))
    .unwrap();
    let deal = parse_deal("stargate.toml", &text).unwrap();
    let copy = deal.detached();
    assert_eq!(copy, deal);
    let same_text = |a: &str, b: &str| std::ptr::eq(a.as_ptr(), b.as_ptr());
    for (mine, theirs) in copy.providers.iter().zip(&deal.providers) {
        assert!(
            !same_text(mine.id.as_str(), theirs.id.as_str()),
            "{}",
            mine.id
        );
    }
    let holder = &copy.first_refusals[0].holder;
    let listed = copy.provider(holder).unwrap();
    assert!(
        same_text(holder.as_str(), listed.id.as_str()),
        "one id per provider"
    );
    for cap in &copy.caps {
        for provider in cap.base.keys() {
            let listed = copy.provider(provider).unwrap();
            assert!(
                same_text(provider.as_str(), listed.id.as_str()),
                "{provider}"
            );
        }
    }
}

#[test]
fn a_retry_of_seconds_is_refused() {
    check(
        "[sourcing]\nretry_after = \"5s\"\n",
        "invalid-value",
        (2, 15),
        Some("sourcing.retry_after"),
    );
    assert!(findings("[sourcing]\nretry_after = \"1m\"\n")
        .iter()
        .all(|d| d.key.as_deref() != Some("sourcing.retry_after")));
}

#[test]
fn a_base_beyond_what_a_cap_counts_is_refused() {
    let cap = |base: &str| {
        format!("[[concentration_cap]]\nmax_share = 0.5\nbase = {{ azure = {base} }}\n")
    };
    check(
        &cap("1e16"),
        "invalid-value",
        (3, 18),
        Some("concentration_cap[0].base.azure"),
    );
    assert!(findings(&cap("1e15"))
        .iter()
        .all(|d| d.key.as_deref() != Some("concentration_cap[0].base.azure")));
}
