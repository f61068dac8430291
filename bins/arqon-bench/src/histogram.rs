//! A small log-linear latency histogram: constant-time recording, mergeable,
//! within 0.8% of the true value at any percentile.

/// Sub-buckets per power of two, as a power of two: 2^7 = 128 buckets per
/// octave bound the relative error of a reported percentile by 1/128.
const SUB_BITS: u32 = 7;
const SUB_COUNT: usize = 1 << SUB_BITS;

/// Counts of nanosecond values in log-linear buckets.
///
/// Values below 128 ns are exact; above, each power of two is split into 128
/// equal buckets. The bucket vector grows only as far as the largest value
/// seen (about 3,300 buckets, 26 KiB, for values up to a few seconds), so a
/// histogram per subscriber is cheap and recording never locks.
#[derive(Debug, Clone, Default)]
pub(crate) struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

fn index_of(value: u64) -> usize {
    if value < SUB_COUNT as u64 {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros();
    let shift = exponent - SUB_BITS;
    // The top SUB_BITS + 1 bits: in [SUB_COUNT, 2 * SUB_COUNT).
    let mantissa = (value >> shift) as usize;
    ((shift as usize + 1) << SUB_BITS) + (mantissa - SUB_COUNT)
}

/// The largest value that falls in bucket `index`.
fn upper_bound(index: usize) -> u64 {
    if index < SUB_COUNT {
        return index as u64;
    }
    let shift = (index >> SUB_BITS) - 1;
    let mantissa = (index & (SUB_COUNT - 1)) as u64 + SUB_COUNT as u64;
    ((mantissa + 1) << shift) - 1
}

impl Histogram {
    /// Records one value (nanoseconds).
    pub(crate) fn record(&mut self, value: u64) {
        let index = index_of(value);
        if index >= self.buckets.len() {
            self.buckets.resize(index + 1, 0);
        }
        self.buckets[index] += 1;
        if self.count == 0 || value < self.min {
            self.min = value;
        }
        self.max = self.max.max(value);
        self.count += 1;
        self.sum += u128::from(value);
    }

    /// Adds every value recorded in `other`.
    pub(crate) fn merge(&mut self, other: &Histogram) {
        if other.count == 0 {
            return;
        }
        if other.buckets.len() > self.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        if self.count == 0 || other.min < self.min {
            self.min = other.min;
        }
        self.max = self.max.max(other.max);
        self.count += other.count;
        self.sum += other.sum;
    }

    /// Values recorded.
    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    /// The exact largest value.
    pub(crate) fn max(&self) -> u64 {
        self.max
    }

    /// The mean value, if any was recorded.
    pub(crate) fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }

    /// The value at quantile `q` (0..=1): the upper bound of the bucket that
    /// holds the `ceil(q * count)`-th smallest value, never above the exact
    /// maximum. `None` when empty.
    pub(crate) fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (index, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(upper_bound(index).min(self.max));
            }
        }
        Some(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        let mut previous = None;
        for value in (0..100_000u64).chain([1 << 20, (1 << 33) + 12_345, u64::MAX / 2]) {
            let index = index_of(value);
            assert!(upper_bound(index) >= value, "{value} above its bucket");
            if index > 0 {
                assert!(upper_bound(index - 1) < value, "{value} belongs lower");
            }
            // Relative width of a bucket is at most 1/128.
            let width = upper_bound(index) - if index == 0 { 0 } else { upper_bound(index - 1) };
            assert!(value < 128 || (width as f64) <= value as f64 / 127.0, "{value}: width {width}");
            if let Some(p) = previous {
                assert!(index >= p);
            }
            previous = Some(index);
        }
    }

    #[test]
    fn quantiles_of_a_uniform_range() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5).unwrap() as f64;
        let p99 = h.quantile(0.99).unwrap() as f64;
        assert!((p50 / 5_000_000.0 - 1.0).abs() < 0.01, "{p50}");
        assert!((p99 / 9_900_000.0 - 1.0).abs() < 0.01, "{p99}");
        assert_eq!(h.quantile(1.0), Some(10_000_000));
        assert_eq!(h.max(), 10_000_000);
        assert_eq!(h.count(), 10_000);
    }

    #[test]
    fn merge_equals_recording_together() {
        let (mut a, mut b, mut all) = (Histogram::default(), Histogram::default(), Histogram::default());
        for v in 0..5000u64 {
            let value = v * v;
            if v % 3 == 0 {
                a.record(value)
            } else {
                b.record(value)
            }
            all.record(value);
        }
        a.merge(&b);
        for q in [0.0, 0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(a.quantile(q), all.quantile(q));
        }
        assert_eq!(a.mean(), all.mean());
        assert_eq!(Histogram::default().quantile(0.5), None);
    }
}
