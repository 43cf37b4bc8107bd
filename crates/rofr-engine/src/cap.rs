//! The concentration-cap rule, judged in exact integers: a provider's usage under a
//! cap keeps a share of at most `max_share` of everyone's. Usage is counted in
//! ten-thousandths of a GPU-hour or of a dollar (the scale prices are kept in), and a
//! share in billionths, so no rounding decides whether an award keeps a cap.
//!
//! The solver works in floating dollars and judges its own plans with a tolerance
//! (`rofr_solver::keeps_share`); the engine judges each award by this rule before it
//! is made.

use crate::types::Price;

/// Usage under a cap: GPU-hours or dollars, in ten-thousandths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Amount(pub i128);

impl Amount {
    /// Ten-thousandths in one GPU-hour or one dollar: the scale of [`Price`].
    pub const SCALE: i128 = 10_000;

    pub fn gpu_hours(hours: i64) -> Amount {
        Amount(i128::from(hours) * Self::SCALE)
    }

    /// A base from the deal, in GPU-hours or dollars, to the nearest ten-thousandth.
    pub fn from_f64(value: f64) -> Amount {
        let scaled = (value * Self::SCALE as f64).round();
        // Through i64 where it fits: the processor converts that, not a library routine.
        if scaled.abs() < 9e18 {
            Amount(i128::from(scaled as i64))
        } else {
            Amount(scaled as i128)
        }
    }

    /// What one GPU for `hours` adds: GPU-hours, or its spend at `price`.
    pub fn per_gpu(hours: u32, spend: Option<Price>) -> Amount {
        match spend {
            None => Amount::gpu_hours(i64::from(hours)),
            Some(price) => Amount(i128::from(hours) * i128::from(price.units())),
        }
    }

    /// In GPU-hours or dollars, for the solver and for reports.
    pub fn as_f64(self) -> f64 {
        let value = match i64::try_from(self.0) {
            Ok(small) => small as f64,
            Err(_) => self.0 as f64,
        };
        value / Self::SCALE as f64
    }

    pub fn times(self, gpus: u32) -> Amount {
        Amount(mul(self.0, i128::from(gpus)))
    }
}

impl std::ops::Add for Amount {
    type Output = Amount;
    fn add(self, other: Amount) -> Amount {
        Amount(self.0.saturating_add(other.0))
    }
}

impl std::ops::AddAssign for Amount {
    fn add_assign(&mut self, other: Amount) {
        *self = *self + other;
    }
}

impl std::iter::Sum for Amount {
    fn sum<I: Iterator<Item = Amount>>(amounts: I) -> Amount {
        amounts.fold(Amount::default(), |a, b| a + b)
    }
}

/// A cap's largest share, in billionths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share(i128);

impl Share {
    const WHOLE: i128 = 1_000_000_000;

    /// `max_share` (a fraction in [0, 1]) to the nearest billionth.
    pub fn of(max_share: f64) -> Share {
        Share((max_share.clamp(0.0, 1.0) * Self::WHOLE as f64).round() as i128)
    }
}

/// `a · b`, saturating. Usage fits 64 bits in practice, and a product of two 64-bit
/// numbers is one instruction where a checked 128-bit one is a library call: the rule
/// is judged for every quote of every round.
fn mul(a: i128, b: i128) -> i128 {
    match (i64::try_from(a), i64::try_from(b)) {
        (Ok(a), Ok(b)) => i128::from(a) * i128::from(b),
        _ => a.saturating_mul(b),
    }
}

/// Whether `own` keeps a share of at most `share` of `total`.
pub fn keeps(own: Amount, share: Share, total: Amount) -> bool {
    mul(own.0, Share::WHOLE) <= mul(share.0, total.0)
}

/// How many more GPUs, each adding `per_gpu` to `own` and to `total`, keep the share:
/// the largest `g` with `own + g·w ≤ share · (total + g·w)`. Unbounded (`u32::MAX`)
/// where a GPU adds nothing or the share is whole and kept.
pub fn room(own: Amount, share: Share, total: Amount, per_gpu: Amount) -> u32 {
    if per_gpu.0 <= 0 {
        return u32::MAX;
    }
    // g·w·(1 − s) ≤ s·total − own, in billionths.
    let slack = mul(share.0, total.0).saturating_sub(mul(own.0, Share::WHOLE));
    if slack < 0 {
        return 0;
    }
    let per = mul(per_gpu.0, Share::WHOLE - share.0);
    if per == 0 {
        return u32::MAX;
    }
    // As above: a 64-bit division where the numbers fit.
    let gpus = match (u64::try_from(slack), u64::try_from(per)) {
        (Ok(slack), Ok(per)) => u128::from(slack / per),
        _ => (slack / per) as u128,
    };
    u32::try_from(gpus).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_at_its_limit_keeps_and_one_unit_more_does_not() {
        let total = Amount::gpu_hours(1_000_000);
        let share = Share::of(0.4);
        assert!(keeps(Amount::gpu_hours(400_000), share, total));
        assert!(!keeps(
            Amount(Amount::gpu_hours(400_000).0 + 1),
            share,
            total
        ));
        assert!(keeps(Amount::default(), Share::of(0.0), Amount::default()));
        assert!(!keeps(Amount(1), Share::of(0.0), Amount::default()));
    }

    #[test]
    fn room_is_the_most_gpus_that_keep_the_share() {
        // 10-hour GPUs under 30% of a base of 100 GPU-hours held by another: 10·g ≤
        // 0.3·(100 + 10·g) → g ≤ 4.28….
        let w = Amount::per_gpu(10, None);
        let total = Amount::gpu_hours(100);
        let share = Share::of(0.3);
        let g = room(Amount::default(), share, total, w);
        assert_eq!(g, 4);
        assert!(keeps(w.times(g), share, total + w.times(g)));
        assert!(!keeps(w.times(g + 1), share, total + w.times(g + 1)));
        assert_eq!(room(Amount::gpu_hours(50), share, total, w), 0);
        assert_eq!(room(Amount::default(), Share::of(1.0), total, w), u32::MAX);
        assert_eq!(
            room(Amount::default(), share, total, Amount::default()),
            u32::MAX
        );
    }

    #[test]
    fn the_largest_amounts_saturate_rather_than_wrap() {
        let huge = Amount(i128::MAX);
        assert!(!keeps(huge, Share::of(0.5), Amount::gpu_hours(1)));
        assert_eq!(
            room(huge, Share::of(0.5), Amount::gpu_hours(1), Amount(1)),
            0
        );
        assert_eq!(Amount::from_f64(1e300), Amount(i128::MAX));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// `room` is the most GPUs that keep the share, whatever the usage, up to the
        /// largest a need and a deal allow (a million GPUs for 87,600 hours at the
        /// highest price; bases of 10^15).
        #[test]
        fn room_is_exactly_the_most_that_keep(
            own in 0i128..=10_000_000_000_000_000_000,
            others in 0i128..=10_000_000_000_000_000_000,
            share in 0.0f64..=1.0,
            hours in 1u32..=87_600,
            price in prop::option::of(1u64..=10_000_000_000),
        ) {
            let (own, total) = (Amount(own), Amount(own + others));
            let share = Share::of(share);
            let w = Amount::per_gpu(hours, price.map(Price::from_ten_thousandths));
            let g = room(own, share, total, w);
            if g < u32::MAX {
                let more = w.times(g + 1);
                prop_assert!(!keeps(own + more, share, total + more));
            }
            if g > 0 {
                let placed = w.times(g.min(1_000_000));
                prop_assert!(keeps(own + placed, share, total + placed));
            }
        }
    }
}
