//! How a service moves from one revision to the next: `update:` settings for a deploy, and
//! `rollback:` settings of the same shape for going back (Swarm's `update_config` and
//! `rollback_config`, which Compose's `deploy:` maps to).

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `update:` and `rollback:` settings, with Swarm's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSpec {
    /// How many tasks are replaced at once.
    #[serde(default = "one")]
    pub parallelism: u32,
    /// The wait after one batch is updated before the next starts.
    #[serde(with = "crate::types::duration_str", default)]
    #[schema(value_type = String, example = "0s")]
    pub delay: Duration,
    /// `start-first`: a new task starts, and the old one of its slot stops once the new one
    /// is updated (never fewer ready tasks than wanted). `stop-first`: the old one stops
    /// first (never more tasks than wanted).
    #[serde(default)]
    pub order: UpdateOrder,
    /// How long a new task must stay ready and unbroken to count as updated; a crash, a
    /// restart or a lost readiness within it counts as a failure.
    #[serde(with = "crate::types::duration_str", default = "default_monitor")]
    #[schema(value_type = String, example = "5s")]
    pub monitor: Duration,
    /// What happens once failures are over `max_failure_ratio`.
    #[serde(default)]
    pub failure_action: FailureAction,
    /// The share of the replicas that may fail before `failure_action`, from 0 to 1.
    #[serde(default)]
    #[schema(value_type = f64, example = 0.0)]
    pub max_failure_ratio: Ratio,
    /// Stop after this many new tasks until `outpost rollout promote` (0: no canary).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub canary: u32,
}

fn one() -> u32 {
    1
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn default_monitor() -> Duration {
    DEFAULT_MONITOR
}

/// 5 s: Swarm's default monitor; a task that crashes at start does so well within it.
pub const DEFAULT_MONITOR: Duration = Duration::from_secs(5);

impl Default for UpdateSpec {
    fn default() -> Self {
        UpdateSpec {
            parallelism: 1,
            delay: Duration::ZERO,
            order: UpdateOrder::StartFirst,
            monitor: DEFAULT_MONITOR,
            failure_action: FailureAction::Rollback,
            max_failure_ratio: Ratio::ZERO,
            canary: 0,
        }
    }
}

impl UpdateSpec {
    /// The defaults of `rollback:`: as `update:`, but a rollback that fails pauses (there is
    /// nothing further back to go to on its own).
    pub fn rollback_default() -> UpdateSpec {
        UpdateSpec {
            failure_action: FailureAction::Pause,
            ..UpdateSpec::default()
        }
    }

    pub fn is_default(&self) -> bool {
        *self == UpdateSpec::default()
    }

    pub fn is_rollback_default(&self) -> bool {
        *self == UpdateSpec::rollback_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    #[default]
    StartFirst,
    StopFirst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    /// Bring the previous revision back, with the `rollback:` settings.
    #[default]
    Rollback,
    /// Stop starting new tasks until `outpost rollout resume`.
    Pause,
    /// Carry on regardless.
    Continue,
}

/// A fraction from 0 to 1, kept in thousandths so that specs compare exactly; written as a
/// number (`0.25`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Ratio(u16);

impl Ratio {
    pub const ZERO: Ratio = Ratio(0);

    /// `value` rounded to thousandths; `None` outside 0..=1 (or not a number).
    pub fn new(value: f64) -> Option<Ratio> {
        (0.0..=1.0)
            .contains(&value)
            .then(|| Ratio((value * 1000.0).round() as u16))
    }

    pub fn value(self) -> f64 {
        f64::from(self.0) / 1000.0
    }

    /// Whether `failed` of `total` is over this share.
    pub fn exceeded_by(self, failed: u32, total: u32) -> bool {
        u64::from(failed) * 1000 > u64::from(self.0) * u64::from(total.max(1))
    }
}

impl Serialize for Ratio {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.value())
    }
}

impl<'de> Deserialize<'de> for Ratio {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Ratio, D::Error> {
        let value = f64::deserialize(d)?;
        Ratio::new(value)
            .ok_or_else(|| serde::de::Error::custom(format!("{value} is not a ratio from 0 to 1")))
    }
}

/// 10: revisions kept per service for `rollout undo` (Kubernetes' default history limit).
pub const DEFAULT_REVISION_HISTORY: u32 = 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ratio_compares_failures_exactly() {
        let quarter = Ratio::new(0.25).unwrap();
        assert!(!quarter.exceeded_by(1, 4));
        assert!(quarter.exceeded_by(2, 4));
        assert!(Ratio::ZERO.exceeded_by(1, 10));
        assert!(!Ratio::ZERO.exceeded_by(0, 10));
        assert_eq!(Ratio::new(1.5), None);
        assert_eq!(Ratio::new(-0.1), None);
        assert_eq!(serde_json::to_string(&quarter).unwrap(), "0.25");
    }
}
