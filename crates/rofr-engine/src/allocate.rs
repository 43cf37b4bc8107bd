//! The greedy allocation the engine falls back on should the exact solver ever fail:
//! cheapest conforming quotes first, each as far as caps allow.

use std::cmp::Ordering;

use crate::types::{Gpus, Price, ProviderId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteOffer {
    pub provider: ProviderId,
    pub gpus: Gpus,
    pub price: Price,
}

/// A planned award: who gets how many GPUs at what price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub provider: ProviderId,
    pub gpus: Gpus,
    pub price: Price,
}

/// A quote and its place among the quotes given.
pub type Ranked<'a> = (usize, &'a QuoteOffer);

/// Quotes of one price from the provider first by id.
pub fn by_provider(a: Ranked<'_>, b: Ranked<'_>) -> Ordering {
    a.1.provider.cmp(&b.1.provider)
}

/// Places up to `wanted` more GPUs on `quotes`, cheapest first, after `plans`: the one
/// greedy rule of the engine. Quotes of one price are taken in the order
/// `tie` gives, which each caller names. `room(quote, plans)` says how many
/// GPUs the caps (and anything else) let that quote take, given the plans so far. A
/// quote's GPUs join the last plan where it is the same provider's, else make a new
/// one. Returns how many of the wanted GPUs are left unplaced.
pub fn cheapest_first(
    wanted: Gpus,
    quotes: &[QuoteOffer],
    tie: impl Fn(Ranked<'_>, Ranked<'_>) -> Ordering,
    plans: &mut Vec<Plan>,
    mut room: impl FnMut(&QuoteOffer, &[Plan]) -> Gpus,
) -> Gpus {
    let mut ordered: Vec<Ranked<'_>> = quotes.iter().enumerate().collect();
    ordered.sort_by(|&a, &b| a.1.price.cmp(&b.1.price).then_with(|| tie(a, b)));
    let mut left = wanted;
    for (_, quote) in ordered {
        if left == Gpus::ZERO {
            break;
        }
        let room = room(quote, plans);
        let take = Gpus(quote.gpus.get().min(left.get()).min(room.get()));
        if take == Gpus::ZERO {
            continue;
        }
        left = left.saturating_sub(take);
        match plans.last_mut() {
            Some(last) if last.provider == quote.provider => last.gpus += take,
            _ => plans.push(Plan {
                provider: quote.provider.clone(),
                gpus: take,
                price: quote.price,
            }),
        }
    }
    left
}
