//! A few minutes of past windows per pod, for the IOEye `trend` and
//! `anomaly` fields.
//!
//! * **trend** compares the mean latency of the newest minute with that of
//!   the oldest minute inside the period (5 minutes): more than 10 % higher
//!   is `increasing`, more than 10 % lower `decreasing`, else `stable`.
//! * **anomaly** is a window whose mean latency lies more than three
//!   standard deviations above the mean of the earlier windows in the period
//!   and is also at least 1.5× that mean (so a pod with very steady latency
//!   is not flagged for a jitter of a few microseconds); it needs 10 earlier
//!   windows to judge.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use iogate_api::Trend;

use crate::window::GroupKey;

pub const PERIOD: Duration = Duration::from_secs(300);
const MINUTE: Duration = Duration::from_secs(60);
const MIN_POINTS_FOR_ANOMALY: usize = 10;

#[derive(Debug, Clone, Copy)]
struct Point {
    at: Instant,
    latency_ns: f64,
}

#[derive(Debug, Default)]
pub struct History {
    points: HashMap<GroupKey, VecDeque<Point>>,
}

impl History {
    /// Records one window's mean latency for a group (windows without I/O
    /// carry no latency and are not recorded). Returns whether it is an
    /// anomaly against the earlier windows.
    pub fn record(&mut self, key: &GroupKey, at: Instant, latency_ns: Option<f64>) -> bool {
        let Some(latency_ns) = latency_ns else {
            return false;
        };
        let points = self.points.entry(key.clone()).or_default();
        while points.front().is_some_and(|p| at.saturating_duration_since(p.at) > PERIOD) {
            points.pop_front();
        }
        let anomaly = is_anomaly(points, latency_ns);
        points.push_back(Point { at, latency_ns });
        anomaly
    }

    /// Forgets groups with nothing recorded inside the period.
    pub fn expire(&mut self, now: Instant) {
        self.points.retain(|_, points| points.back().is_some_and(|p| now.saturating_duration_since(p.at) <= PERIOD));
    }

    pub fn trend(&self, key: &GroupKey) -> Option<Trend> {
        let points = self.points.get(key)?;
        let (first, last) = (points.front()?, points.back()?);
        if last.at.saturating_duration_since(first.at) < MINUTE {
            return None;
        }
        let oldest = mean(points.iter().filter(|p| p.at.saturating_duration_since(first.at) <= MINUTE))?;
        let newest = mean(points.iter().filter(|p| last.at.saturating_duration_since(p.at) <= MINUTE))?;
        if oldest <= 0.0 {
            return None;
        }
        let change = (newest - oldest) / oldest * 100.0;
        let direction = if change > 10.0 {
            "increasing"
        } else if change < -10.0 {
            "decreasing"
        } else {
            "stable"
        };
        Some(Trend {
            direction: direction.to_string(),
            change_percent: (change * 10.0).round() / 10.0,
            period: "5m".to_string(),
        })
    }
}

fn mean<'a>(points: impl Iterator<Item = &'a Point>) -> Option<f64> {
    let (sum, n) = points.fold((0.0, 0usize), |(s, n), p| (s + p.latency_ns, n + 1));
    (n > 0).then(|| sum / n as f64)
}

fn is_anomaly(earlier: &VecDeque<Point>, latency_ns: f64) -> bool {
    if earlier.len() < MIN_POINTS_FOR_ANOMALY {
        return false;
    }
    let n = earlier.len() as f64;
    let mean = earlier.iter().map(|p| p.latency_ns).sum::<f64>() / n;
    let var = earlier.iter().map(|p| (p.latency_ns - mean).powi(2)).sum::<f64>() / n;
    latency_ns > mean + 3.0 * var.sqrt() && latency_ns >= 1.5 * mean
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> GroupKey {
        GroupKey::Pod { namespace: "ns".into(), name: "p".into() }
    }

    #[test]
    fn a_spike_after_steady_windows_is_an_anomaly_and_steady_ones_are_not() {
        let mut h = History::default();
        let t0 = Instant::now();
        for i in 0..12 {
            let jitter = if i % 2 == 0 { 1_000.0 } else { -1_000.0 };
            assert!(!h.record(&key(), t0 + Duration::from_secs(5 * i), Some(100_000.0 + jitter)));
        }
        assert!(!h.record(&key(), t0 + Duration::from_secs(65), Some(103_000.0)));
        assert!(h.record(&key(), t0 + Duration::from_secs(70), Some(400_000.0)));
    }

    #[test]
    fn trend_compares_the_newest_minute_with_the_oldest() {
        let mut h = History::default();
        let t0 = Instant::now();
        assert_eq!(h.trend(&key()), None);
        for i in 0..=24 {
            // 1 ms for the first two minutes, 2 ms afterwards.
            let latency = if i < 24 - 12 { 1_000_000.0 } else { 2_000_000.0 };
            h.record(&key(), t0 + Duration::from_secs(10 * i), Some(latency));
        }
        let trend = h.trend(&key()).unwrap();
        assert_eq!(trend.direction, "increasing");
        assert!((trend.change_percent - 100.0).abs() < 0.01, "{trend:?}");
        assert_eq!(trend.period, "5m");
    }

    #[test]
    fn windows_older_than_the_period_drop_out() {
        let mut h = History::default();
        let t0 = Instant::now();
        h.record(&key(), t0, Some(1.0));
        h.expire(t0 + PERIOD + Duration::from_secs(1));
        assert_eq!(h.points.len(), 0);
    }
}
