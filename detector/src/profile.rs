//! A baseline: what one version of one agent was seen to do while learning, its window model,
//! and where it is in its lifecycle. Profiles are persisted (versioned, see [`Saved`]) so a
//! restart neither forgets a baseline nor restarts learning.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    features::FEATURES,
    items::{Category, Item},
    model::{FitOptions, Model},
};

/// Format version of [`Saved`]. Bump it when the layout changes; older files are refused with a
/// clear message rather than misread.
pub const FORMAT: u32 = 1;

/// Where a profile is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Learning what is normal: new items join the baseline; only sensitive resources alert.
    Learning,
    /// Baseline settled: novelty and unusual windows alert; containment is only logged as what
    /// would have been done.
    Stable,
    /// Stable and configured to enforce: High incidents are contained.
    Enforcing,
}

impl Stage {
    /// The name used in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Learning => "learning",
            Stage::Stable => "stable",
            Stage::Enforcing => "enforcing",
        }
    }
}

/// What is known of one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// First seen (ms).
    pub first_ms: u64,
    /// Last seen (ms).
    pub last_ms: u64,
    /// Times seen.
    pub count: u64,
}

/// One agent version's baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// The agent's name.
    pub agent: String,
    /// What names this version of the agent (configuration and executable hashes): a different
    /// fingerprint starts a new profile.
    pub fingerprint: String,
    /// Where it is in its life.
    pub stage: Stage,
    /// When it was created (ms).
    pub created_ms: u64,
    /// When it entered its stage (ms).
    pub stage_since_ms: u64,
    /// When the last new item was learned (ms).
    pub last_new_ms: u64,
    /// Learned items by category.
    pub items: BTreeMap<Category, BTreeMap<String, Seen>>,
    /// Items not learned because their category was full.
    pub overflow: u64,
    /// Learning windows (feature vectors, oldest first).
    pub history: Vec<Vec<f64>>,
    /// The window model, fitted when the profile became stable (absent with too few windows).
    pub model: Option<Model>,
    /// Why there is no model, when there is none.
    pub model_note: Option<String>,
}

/// The persisted form of every profile.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    /// [`FORMAT`].
    pub format: u32,
    /// Next incident id.
    pub next_incident: u64,
    /// The profiles.
    pub profiles: Vec<Profile>,
}

/// Why a saved file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Written by another version of the format.
    #[error("baseline format {found} is not supported (this build reads format {FORMAT})")]
    Format {
        /// The format found.
        found: u32,
    },
    /// A profile's windows do not have [`FEATURES`] values.
    #[error("profile {agent:?}: a window has {len} features, expected {FEATURES}")]
    Features {
        /// The agent.
        agent: String,
        /// Features found.
        len: usize,
    },
}

impl Saved {
    /// Checks what was read before it is trusted.
    pub fn check(&self) -> Result<(), LoadError> {
        if self.format != FORMAT {
            return Err(LoadError::Format { found: self.format });
        }
        for profile in &self.profiles {
            if let Some(bad) = profile.history.iter().find(|w| w.len() != FEATURES) {
                return Err(LoadError::Features {
                    agent: profile.agent.clone(),
                    len: bad.len(),
                });
            }
        }
        Ok(())
    }
}

/// Lifecycle settings.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    /// Least time spent learning (ms).
    pub min_learning_ms: u64,
    /// Time without a new item before the baseline is stable (ms).
    pub quiet_ms: u64,
    /// Time stable (alerting, containment logged only) before enforcing, when configured (ms).
    pub shadow_ms: u64,
    /// Active windows needed before stable.
    pub min_windows: usize,
    /// Items kept per category.
    pub max_items: usize,
    /// Windows kept for fitting.
    pub max_history: usize,
    /// Model fitting.
    pub fit: FitOptions,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            min_learning_ms: 24 * 3_600_000,
            quiet_ms: 48 * 3_600_000,
            shadow_ms: 0,
            min_windows: 60,
            max_items: 10_000,
            max_history: 10_080,
            fit: FitOptions::default(),
        }
    }
}

/// A stage change, with why.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// From (`None`: a new profile).
    pub from: Option<Stage>,
    /// To.
    pub to: Stage,
    /// Why, in words.
    pub reason: String,
}

impl Profile {
    /// A new profile, learning.
    pub fn new(agent: &str, fingerprint: &str, now_ms: u64) -> Self {
        Self {
            agent: agent.to_owned(),
            fingerprint: fingerprint.to_owned(),
            stage: Stage::Learning,
            created_ms: now_ms,
            stage_since_ms: now_ms,
            last_new_ms: now_ms,
            items: BTreeMap::new(),
            overflow: 0,
            history: Vec::new(),
            model: None,
            model_note: None,
        }
    }

    /// A profile for a new version of the same agent: learning again, from the old items (the
    /// new version most likely does what the old one did) but without its windows or model.
    pub fn successor(&self, fingerprint: &str, now_ms: u64) -> Self {
        let mut next = Self::new(&self.agent, fingerprint, now_ms);
        next.items = self.items.clone();
        next
    }

    /// Whether `item` is in the baseline.
    pub fn knows(&self, item: &Item) -> bool {
        self.items
            .get(&item.category)
            .is_some_and(|set| set.contains_key(&item.value))
    }

    /// Learns `item` (while learning); returns whether it was new.
    pub fn learn(&mut self, item: &Item, now_ms: u64, max_items: usize) -> bool {
        let set = self.items.entry(item.category).or_default();
        if let Some(seen) = set.get_mut(&item.value) {
            seen.last_ms = now_ms;
            seen.count += 1;
            return false;
        }
        if set.len() >= max_items {
            self.overflow += 1;
            return false;
        }
        set.insert(
            item.value.clone(),
            Seen {
                first_ms: now_ms,
                last_ms: now_ms,
                count: 1,
            },
        );
        self.last_new_ms = now_ms;
        true
    }

    /// Records a learning window.
    pub fn push_window(&mut self, vector: Vec<f64>, max_history: usize) {
        if self.history.len() >= max_history {
            self.history.remove(0);
        }
        self.history.push(vector);
    }

    /// Items per category.
    pub fn item_counts(&self) -> Vec<(Category, usize)> {
        self.items.iter().map(|(c, s)| (*c, s.len())).collect()
    }

    /// Moves the profile along its lifecycle; `enforce` says whether the agent is configured to
    /// enforce. Becoming stable fits the window model.
    pub fn advance(
        &mut self,
        now_ms: u64,
        enforce: bool,
        settings: &Lifecycle,
    ) -> Option<Transition> {
        let from = self.stage;
        let (to, reason) = match self.stage {
            Stage::Learning => {
                let learned_for = now_ms.saturating_sub(self.created_ms);
                let quiet_for = now_ms.saturating_sub(self.last_new_ms);
                if learned_for < settings.min_learning_ms
                    || quiet_for < settings.quiet_ms
                    || self.history.len() < settings.min_windows
                {
                    return None;
                }
                self.fit(&settings.fit);
                (
                    Stage::Stable,
                    format!(
                        "learned for {} s, no new item for {} s, {} windows",
                        learned_for / 1000,
                        quiet_for / 1000,
                        self.history.len()
                    ),
                )
            }
            Stage::Stable if enforce => {
                if now_ms.saturating_sub(self.stage_since_ms) < settings.shadow_ms {
                    return None;
                }
                (
                    Stage::Enforcing,
                    "stable and configured to enforce".to_owned(),
                )
            }
            Stage::Enforcing if !enforce => {
                (Stage::Stable, "no longer configured to enforce".to_owned())
            }
            _ => return None,
        };
        self.stage = to;
        self.stage_since_ms = now_ms;
        Some(Transition {
            from: Some(from),
            to,
            reason,
        })
    }

    /// Back to learning (an operator asked for it), keeping the items learned so far.
    pub fn relearn(&mut self, now_ms: u64) -> Transition {
        let from = self.stage;
        self.stage = Stage::Learning;
        self.created_ms = now_ms;
        self.stage_since_ms = now_ms;
        self.last_new_ms = now_ms;
        self.history.clear();
        self.model = None;
        self.model_note = None;
        Transition {
            from: Some(from),
            to: Stage::Learning,
            reason: "relearning on an operator's request".to_owned(),
        }
    }

    fn fit(&mut self, options: &FitOptions) {
        match Model::fit(&self.history, options) {
            Ok(model) => {
                self.model = Some(model);
                self.model_note = None;
            }
            Err(err) => {
                self.model = None;
                self.model_note = Some(format!("no window model: {err}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::items::Category;

    fn settings() -> Lifecycle {
        Lifecycle {
            min_learning_ms: 10_000,
            quiet_ms: 5_000,
            shadow_ms: 3_000,
            min_windows: 4,
            ..Lifecycle::default()
        }
    }

    fn item(v: &str) -> Item {
        Item {
            category: Category::Exe,
            value: v.into(),
        }
    }

    #[test]
    fn learning_becomes_stable_after_quiet_time_then_enforcing() {
        let s = settings();
        let mut p = Profile::new("a", "f1", 0);
        assert!(p.learn(&item("/bin/sh"), 1_000, 100));
        assert!(!p.learn(&item("/bin/sh"), 2_000, 100));
        for i in 0..4 {
            p.push_window(vec![i as f64; FEATURES], 100);
        }
        // Too early: learning lasts at least 10 s.
        assert_eq!(p.advance(9_000, true, &s), None);
        // A new item at 9 s restarts the quiet period.
        assert!(p.learn(&item("/bin/ls"), 9_000, 100));
        assert_eq!(p.advance(13_000, true, &s), None);
        let t = p.advance(14_000, true, &s).expect("stable");
        assert_eq!((t.from, t.to), (Some(Stage::Learning), Stage::Stable));
        // Too few windows for a model: said so, not failed.
        assert!(p.model.is_none());
        assert!(p.model_note.as_deref().unwrap().contains("no window model"));
        // Shadow period before enforcing.
        assert_eq!(p.advance(16_000, true, &s), None);
        let t = p.advance(17_000, true, &s).expect("enforcing");
        assert_eq!(t.to, Stage::Enforcing);
        let t = p.advance(18_000, false, &s).expect("back to stable");
        assert_eq!(t.to, Stage::Stable);
        assert_eq!(p.advance(19_000, false, &s), None);
    }

    #[test]
    fn windows_are_required() {
        let s = settings();
        let mut p = Profile::new("a", "f1", 0);
        assert_eq!(p.advance(100_000, false, &s), None);
        for _ in 0..4 {
            p.push_window(vec![0.0; FEATURES], 100);
        }
        assert!(p.advance(100_000, false, &s).is_some());
    }

    #[test]
    fn successor_keeps_items_and_learns_again() {
        let mut p = Profile::new("a", "f1", 0);
        p.learn(&item("/bin/sh"), 0, 100);
        p.stage = Stage::Enforcing;
        p.push_window(vec![0.0; FEATURES], 100);
        let next = p.successor("f2", 50);
        assert_eq!(next.stage, Stage::Learning);
        assert_eq!(next.fingerprint, "f2");
        assert!(next.knows(&item("/bin/sh")));
        assert!(next.history.is_empty());
    }

    #[test]
    fn categories_are_capped() {
        let mut p = Profile::new("a", "f", 0);
        assert!(p.learn(&item("1"), 0, 2));
        assert!(p.learn(&item("2"), 0, 2));
        assert!(!p.learn(&item("3"), 0, 2));
        assert_eq!(p.overflow, 1);
        assert!(!p.knows(&item("3")));
    }

    #[test]
    fn saved_format_is_checked() {
        let saved = Saved {
            format: FORMAT + 1,
            next_incident: 1,
            profiles: vec![],
        };
        assert!(matches!(saved.check(), Err(LoadError::Format { .. })));
        let mut p = Profile::new("a", "f", 0);
        p.history.push(vec![0.0; 3]);
        let saved = Saved {
            format: FORMAT,
            next_incident: 1,
            profiles: vec![p],
        };
        assert!(matches!(saved.check(), Err(LoadError::Features { .. })));
    }
}
