//! `rofr check`: conflicts between clauses, found before money moves. Each finding
//! names every clause involved; errors make a deal unusable, warnings are worth a look.

use std::collections::BTreeSet;

use crate::deal::{Deal, FirstRefusal, Scope, Variant};
use crate::diagnostic::{Diagnostic, Location, Severity};
use crate::types::{ProviderId, Timestamp};

/// Lints a parsed deal as of `today` (used only to spot expired terms).
pub fn lint(deal: &Deal, today: Timestamp) -> Vec<Diagnostic> {
    let mut findings = Vec::new();
    unknown_providers(deal, &mut findings);
    for (i, fr) in deal.first_refusals.iter().enumerate() {
        restrictions_denying_holder(deal, fr, &mut findings);
        scope_matching_nothing(deal, fr, &mut findings);
        variant_settings(fr, &mut findings);
        for other in &deal.first_refusals[i + 1..] {
            overlapping_first_refusals(fr, other, &mut findings);
        }
        if fr.term.until.is_some_and(|until| until <= today) {
            findings.push(
                Diagnostic::warning(
                    "term-expired",
                    fr.clause.location.clone(),
                    format!(
                        "the first-refusal term ended on {}; no need submitted now is in its scope",
                        fr.term.until.expect("checked above")
                    ),
                )
                .key(format!("first_refusal[{}].term.until", fr.clause.index))
                .clause(fr.clause.clone())
                .help("remove the clause or extend `term.until` if the right still holds"),
            );
        }
    }
    commitments(deal, today, &mut findings);
    caps(deal, &mut findings);
    restrictions_barring_everyone(deal, &mut findings);
    for approval in &deal.approvals {
        if approval.min_value.is_none() && !approval.non_holder && approval.providers.is_empty() {
            findings.push(
                Diagnostic::warning(
                    "approval-matches-everything",
                    approval.clause.location.clone(),
                    "the approval clause sets no condition, so every award waits for an approver",
                )
                .clause(approval.clause.clone())
                .help("add `min_value`, `non_holder = true` or `providers`, or keep it if that is the intent"),
            );
        }
    }
    findings.sort_by(|a, b| {
        (a.severity, a.location.line, a.location.column).cmp(&(
            b.severity,
            b.location.line,
            b.location.column,
        ))
    });
    findings
}

fn unknown_provider(
    deal: &Deal,
    id: &ProviderId,
    location: Location,
    key: String,
    clause: &crate::diagnostic::ClauseRef,
    findings: &mut Vec<Diagnostic>,
) {
    if deal.provider(id).is_none() {
        let known: Vec<&str> = deal.providers.iter().map(|p| p.id.as_str()).collect();
        findings.push(
            Diagnostic::error(
                "unknown-provider",
                location,
                format!("`{id}` is not a provider this deal names"),
            )
            .key(key)
            .clause(clause.clone())
            .help(if known.is_empty() {
                "declare it in a [[provider]] table".to_owned()
            } else {
                format!(
                    "declare it in a [[provider]] table, or use one of: {}",
                    known.join(", ")
                )
            }),
        );
    }
}

fn unknown_providers(deal: &Deal, findings: &mut Vec<Diagnostic>) {
    for fr in &deal.first_refusals {
        let key = format!("first_refusal[{}].holder", fr.clause.index);
        unknown_provider(
            deal,
            &fr.holder,
            fr.holder_location.clone(),
            key,
            &fr.clause,
            findings,
        );
    }
    for c in &deal.commitments {
        let key = format!("commitment[{}].provider", c.clause.index);
        unknown_provider(
            deal,
            &c.provider,
            c.provider_location.clone(),
            key,
            &c.clause,
            findings,
        );
    }
    for r in &deal.restrictions {
        for p in &r.providers {
            let key = format!("placement_restriction[{}].providers", r.clause.index);
            unknown_provider(deal, p, r.clause.location.clone(), key, &r.clause, findings);
        }
    }
    for cap in &deal.caps {
        for p in cap.providers.iter().chain(cap.base.keys()) {
            let key = format!("concentration_cap[{}]", cap.clause.index);
            unknown_provider(
                deal,
                p,
                cap.clause.location.clone(),
                key,
                &cap.clause,
                findings,
            );
        }
    }
    for a in &deal.approvals {
        for p in &a.providers {
            let key = format!("approval[{}].providers", a.clause.index);
            unknown_provider(deal, p, a.clause.location.clone(), key, &a.clause, findings);
        }
    }
}

fn restrictions_denying_holder(deal: &Deal, fr: &FirstRefusal, findings: &mut Vec<Diagnostic>) {
    for r in &deal.restrictions {
        if !r.providers.contains(&fr.holder) {
            continue;
        }
        // Tags that the scope admits (it asks for none, or asks for this one) and does
        // not carve out: needs carrying them are in scope yet barred from the holder.
        let denied: Vec<&str> = r
            .tags
            .iter()
            .filter(|t| fr.scope.tags.is_empty() || fr.scope.tags.contains(*t))
            .filter(|t| !fr.scope.exclude_tags.contains(*t))
            .map(|t| t.as_str())
            .collect();
        if denied.is_empty() {
            continue;
        }
        let quoted = denied
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ");
        findings.push(
            Diagnostic::warning(
                "restriction-denies-holder",
                r.clause.location.clone(),
                format!(
                    "placement restriction bars the holder `{}` from workloads tagged {}, which lie inside its first-refusal scope; such needs will skip the holder, which the holder may dispute",
                    fr.holder, quoted
                ),
            )
            .key(format!("placement_restriction[{}].providers", r.clause.index))
            .clause(fr.clause.clone())
            .clause(r.clause.clone())
            .help(format!(
                "if the contract carves these workloads out, say so: add `exclude_tags = [{quoted}]` to first_refusal[{}].scope",
                fr.clause.index
            )),
        );
    }
}

fn scope_matching_nothing(deal: &Deal, fr: &FirstRefusal, findings: &mut Vec<Diagnostic>) {
    let scope = &fr.scope;
    let key = format!("first_refusal[{}].scope", fr.clause.index);
    let mut reasons = Vec::new();
    if scope.gpus.max.is_some_and(|max| max < scope.gpus.min) {
        reasons.push("its GPU range is empty (max is below min)".to_owned());
    }
    if !scope.tags.is_empty() && scope.tags.is_subset(&scope.exclude_tags) {
        reasons.push("every tag it asks for is also excluded".to_owned());
    }
    if let Some(holder) = deal.provider(&fr.holder) {
        if !scope.skus.is_empty() && !holder.skus.is_empty() && scope.skus.is_disjoint(&holder.skus)
        {
            reasons.push(format!("the holder `{}` sells none of its skus", holder.id));
        }
        if !scope.regions.is_empty()
            && !holder.regions.is_empty()
            && scope.regions.is_disjoint(&holder.regions)
        {
            reasons.push(format!(
                "the holder `{}` serves none of its regions",
                holder.id
            ));
        }
    }
    for reason in reasons {
        findings.push(
            Diagnostic::error(
                "scope-matches-nothing",
                scope.location.clone(),
                format!("the first-refusal scope matches no need: {reason}"),
            )
            .key(key.clone())
            .clause(fr.clause.clone())
            .help("widen the scope, or remove the clause if the right no longer applies"),
        );
    }
    for sku in fr.offer_prices.keys() {
        if !scope.skus.is_empty() && !scope.skus.contains(sku) {
            findings.push(
                Diagnostic::warning(
                    "offer-price-outside-scope",
                    fr.clause.location.clone(),
                    format!("an offer price is set for `{sku}`, which the scope does not cover"),
                )
                .key(format!(
                    "first_refusal[{}].offer_prices.{sku}",
                    fr.clause.index
                ))
                .clause(fr.clause.clone())
                .help("add the sku to `scope.skus` or remove the price"),
            );
        }
    }
}

fn variant_settings(fr: &FirstRefusal, findings: &mut Vec<Diagnostic>) {
    if fr.variant == Variant::Negotiate
        && (fr.reoffer_threshold > 0.0 || fr.third_party_window.is_some())
    {
        findings.push(
            Diagnostic::warning(
                "setting-ignored",
                fr.clause.location.clone(),
                "a `negotiate` right has no matching right and does not revive, so `reoffer_threshold` and `third_party_window` have no effect",
            )
            .key(format!("first_refusal[{}].variant", fr.clause.index))
            .clause(fr.clause.clone())
            .help("use `first_offer` if the holder must see better third-party terms, or remove the settings"),
        );
    }
    if fr.window.nominal_seconds() == 0 {
        findings.push(
            Diagnostic::warning(
                "zero-window",
                fr.clause.location.clone(),
                "the holder's window is zero: every offer lapses the moment it is sent",
            )
            .key(format!("first_refusal[{}].window", fr.clause.index))
            .clause(fr.clause.clone())
            .help("typical windows are 10, 15 or 20 days, or 20 business days"),
        );
    }
}

fn sets_overlap<T: Ord>(a: &BTreeSet<T>, b: &BTreeSet<T>) -> bool {
    a.is_empty() || b.is_empty() || !a.is_disjoint(b)
}

fn scopes_overlap(a: &Scope, b: &Scope) -> bool {
    let gpus_overlap = a.gpus.max.is_none_or(|max| max >= b.gpus.min)
        && b.gpus.max.is_none_or(|max| max >= a.gpus.min);
    sets_overlap(&a.skus, &b.skus)
        && sets_overlap(&a.regions, &b.regions)
        && sets_overlap(&a.workloads, &b.workloads)
        && sets_overlap(&a.tags, &b.tags)
        && gpus_overlap
}

fn overlapping_first_refusals(a: &FirstRefusal, b: &FirstRefusal, findings: &mut Vec<Diagnostic>) {
    if !a.term.overlaps(&b.term) || !scopes_overlap(&a.scope, &b.scope) {
        return;
    }
    let diagnostic = if a.holder != b.holder {
        Diagnostic::error(
            "conflicting-first-refusal",
            b.clause.location.clone(),
            format!(
                "two first-refusal rights with different holders (`{}` and `{}`) cover overlapping needs in overlapping terms; a need in both cannot be offered first to both",
                a.holder, b.holder
            ),
        )
        .help("narrow one scope (skus, regions, workloads, tags) or make the terms follow one another")
    } else {
        Diagnostic::warning(
            "overlapping-first-refusal",
            b.clause.location.clone(),
            format!(
                "two first-refusal clauses for `{}` cover overlapping needs; the first listed applies where both match",
                a.holder
            ),
        )
        .help("merge them, or narrow one scope")
    };
    findings.push(diagnostic.clause(a.clause.clone()).clause(b.clause.clone()));
}

fn commitments(deal: &Deal, today: Timestamp, findings: &mut Vec<Diagnostic>) {
    for c in &deal.commitments {
        let key = format!("commitment[{}]", c.clause.index);
        if c.period.until.is_some_and(|until| until <= today) {
            findings.push(
                Diagnostic::warning(
                    "term-expired",
                    c.clause.location.clone(),
                    format!(
                        "the commitment period ended on {}",
                        c.period.until.expect("checked")
                    ),
                )
                .key(format!("{key}.period.until"))
                .clause(c.clause.clone()),
            );
        }
        let (Some(min_gpu_hours), Some(until)) = (c.min_gpu_hours, c.period.until) else {
            continue;
        };
        let period_hours = (until.unix_seconds() - c.period.from.unix_seconds()) as f64 / 3600.0;
        let Some(provider) = deal.provider(&c.provider) else {
            continue;
        };
        if let Some(max) = provider.max_gpus {
            let reachable = f64::from(max.get()) * period_hours;
            if reachable < min_gpu_hours {
                findings.push(
                    Diagnostic::error(
                        "commitment-unreachable",
                        c.clause.location.clone(),
                        format!(
                            "`{}` can hold at most {} GPUs, so at most {:.0} GPU-hours in the period, below the committed {:.0}",
                            provider.id, max, reachable, min_gpu_hours
                        ),
                    )
                    .key(format!("{key}.min_gpu_hours"))
                    .clause(c.clause.clone())
                    .help("lower the commitment, lengthen the period, or correct the provider's `max_gpus`"),
                );
            }
        }
        // With every provider's capacity known, a cap bounds the provider's share of
        // the most that could ever be placed.
        let total_capacity: Option<f64> = deal
            .providers
            .iter()
            .map(|p| p.max_gpus.map(|g| f64::from(g.get()) * period_hours))
            .sum();
        let Some(total_capacity) = total_capacity else {
            continue;
        };
        let holder = deal.holder_at(c.period.from);
        for cap in &deal.caps {
            if !cap.applies_to(&c.provider, holder) {
                continue;
            }
            let ceiling = cap.max_share * total_capacity;
            if ceiling < min_gpu_hours {
                findings.push(
                    Diagnostic::error(
                        "commitment-unreachable",
                        c.clause.location.clone(),
                        format!(
                            "the cap holds `{}` to {:.0}% of at most {:.0} GPU-hours that all providers together could supply in the period, i.e. {:.0}, below the committed {:.0}",
                            c.provider,
                            cap.max_share * 100.0,
                            total_capacity,
                            ceiling,
                            min_gpu_hours
                        ),
                    )
                    .key(format!("{key}.min_gpu_hours"))
                    .clause(c.clause.clone())
                    .clause(cap.clause.clone())
                    .help("raise the cap's `max_share`, exempt the provider, or lower the commitment"),
                );
            }
        }
    }
}

fn caps(deal: &Deal, findings: &mut Vec<Diagnostic>) {
    if deal.providers.is_empty() || deal.caps.is_empty() {
        return;
    }
    // Each provider's tightest share; if they add up to less than one, some demand can
    // never be placed even when every provider has capacity.
    let mut total = 0.0;
    let mut involved = Vec::new();
    for p in &deal.providers {
        // As in the engine: a cap that does not bind the holder exempts any provider
        // that holds a first-refusal right.
        let is_holder = deal.first_refusals.iter().any(|fr| fr.holder == p.id);
        let tightest = deal
            .caps
            .iter()
            .filter(|cap| cap.applies_to(&p.id, is_holder.then_some(&p.id)))
            .inspect(|cap| involved.push(cap.clause.clone()))
            .map(|cap| cap.max_share)
            .fold(1.0_f64, f64::min);
        total += tightest;
    }
    if total < 1.0 - 1e-9 {
        involved.sort_by_key(|c| c.index);
        involved.dedup();
        let mut diagnostic = Diagnostic::error(
            "caps-unsatisfiable",
            involved[0].location.clone(),
            format!(
                "the providers' caps add up to {:.0}% of demand, so some demand can never be placed",
                total * 100.0
            ),
        )
        .help("raise `max_share`, add a provider, or exempt the holder with `binds_holder = false`");
        for clause in involved {
            diagnostic = diagnostic.clause(clause);
        }
        findings.push(diagnostic);
    }
}

fn restrictions_barring_everyone(deal: &Deal, findings: &mut Vec<Diagnostic>) {
    if deal.providers.is_empty() {
        return;
    }
    let tags: BTreeSet<_> = deal
        .restrictions
        .iter()
        .flat_map(|r| r.tags.iter())
        .collect();
    for tag in tags {
        let tagged = BTreeSet::from([tag.clone()]);
        let barring: Vec<_> = deal
            .restrictions
            .iter()
            .filter(|r| r.tags.contains(tag))
            .collect();
        if deal
            .providers
            .iter()
            .all(|p| deal.restriction_forbidding(&p.id, &tagged).is_some())
        {
            let mut diagnostic = Diagnostic::warning(
                "restriction-bars-everyone",
                barring[0].clause.location.clone(),
                format!("workloads tagged \"{tag}\" are barred from every provider and can never be placed"),
            )
            .help("remove a provider from the restriction, or add a provider that may take them");
            for r in barring {
                diagnostic = diagnostic.clause(r.clause.clone());
            }
            findings.push(diagnostic);
        }
    }
}

/// True when any finding is an error.
pub fn has_errors(findings: &[Diagnostic]) -> bool {
    findings.iter().any(|d| d.severity == Severity::Error)
}
