//! The greedy allocation the engine falls back on should the exact solver ever fail:
//! cheapest conforming quotes first, each as far as caps allow.

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

/// Places up to `wanted` GPUs on the cheapest quotes first (ties by provider id).
/// `allowance(provider, price, planned)` says how many more GPUs the caps let that
/// provider take, given what is already planned in this round.
pub fn cheapest_first(
    wanted: Gpus,
    quotes: &[QuoteOffer],
    mut allowance: impl FnMut(&ProviderId, Price, &[Plan]) -> Gpus,
) -> Vec<Plan> {
    let mut ordered: Vec<&QuoteOffer> = quotes.iter().collect();
    ordered.sort_by(|a, b| (a.price, &a.provider).cmp(&(b.price, &b.provider)));
    let mut plans: Vec<Plan> = Vec::new();
    let mut left = wanted;
    for quote in ordered {
        if left == Gpus::ZERO {
            break;
        }
        let cap_room = allowance(&quote.provider, quote.price, &plans);
        let take = Gpus(quote.gpus.get().min(left.get()).min(cap_room.get()));
        if take > Gpus::ZERO {
            plans.push(Plan {
                provider: quote.provider.clone(),
                gpus: take,
                price: quote.price,
            });
            left = left.saturating_sub(take);
        }
    }
    plans
}
