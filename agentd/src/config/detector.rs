//! `[detector]`: behaviour baselines, alerts and containment.
//!
//! ```toml
//! [detector]
//! enabled = true                 # learn and alert (containment needs detection = "enforce")
//! window_seconds = 60            # numeric window length
//! min_learning_seconds = 86400   # least time learning
//! quiet_seconds = 172800         # no new behaviour for this long: the baseline is stable
//! shadow_seconds = 0             # stable (alerting only) this long before enforcing
//! min_windows = 60               # active windows needed before stable
//! incident_gap_seconds = 600     # an alert-only incident closes after this long without findings
//! sustained_windows = 3          # unusual windows in a row that make a High finding
//! max_actions_per_hour = 20      # containment actions on the host per hour; more are logged only
//! dry_run = false                # log what would be contained, contain nothing
//! baselines = "/var/lib/custos/state/detector/baselines.json"
//!
//! [detector.ladder]              # furthest containment step per trust tier
//! low = "freeze"                 # alert, quarantine, freeze or kill
//! medium = "quarantine"
//! high = "alert"
//!
//! [detector.webhook]             # alerts as signed JSON POSTs
//! url = "https://siem.example.org/custos"
//! ca = "/etc/custos/webhook-ca.pem"   # trust roots for https
//! timeout_seconds = 5
//! attempts = 5
//! ```
//!
//! Per agent, `detection = "monitor"` (the default: learn, alert, log what containment would
//! do), `"enforce"` (contain High incidents once the baseline is stable) or `"off"`.

use std::path::{Path, PathBuf};

use detector::incident::{Ladder, Step};
use toml::Spanned;

use super::{ConfigError, Validator};

/// What the detector does for one agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Detection {
    /// Not watched.
    Off,
    /// Learn and alert; containment is logged as what would be done.
    #[default]
    Monitor,
    /// Learn, alert and contain.
    Enforce,
}

impl Detection {
    /// The name used in the configuration and records.
    pub fn as_str(self) -> &'static str {
        match self {
            Detection::Off => "off",
            Detection::Monitor => "monitor",
            Detection::Enforce => "enforce",
        }
    }
}

/// `[detector.webhook]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// Where alerts are posted.
    pub url: String,
    /// Trust roots for https (PEM).
    pub ca: Option<PathBuf>,
    /// Per attempt.
    pub timeout: std::time::Duration,
    /// Attempts per alert.
    pub attempts: u32,
}

/// `[detector]`.
#[derive(Debug, Clone)]
pub struct DetectorSettings {
    /// Whether the detector runs at all.
    pub enabled: bool,
    /// The detector's own settings.
    pub detector: detector::Settings,
    /// Where baselines are kept (`None`: under the state directory).
    pub baselines: Option<PathBuf>,
    /// The webhook, if any.
    pub webhook: Option<WebhookSettings>,
}

impl Default for DetectorSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            detector: detector::Settings::default(),
            baselines: None,
            webhook: None,
        }
    }
}

impl DetectorSettings {
    /// Where baselines are kept.
    pub fn baselines_path(&self, state_dir: &Path) -> PathBuf {
        self.baselines
            .clone()
            .unwrap_or_else(|| state_dir.join("detector").join("baselines.json"))
    }
}

/// `[detector]` as written.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawDetector {
    pub(crate) enabled: Option<bool>,
    pub(crate) window_seconds: Option<Spanned<u64>>,
    pub(crate) min_learning_seconds: Option<Spanned<u64>>,
    pub(crate) quiet_seconds: Option<Spanned<u64>>,
    pub(crate) shadow_seconds: Option<Spanned<u64>>,
    pub(crate) min_windows: Option<Spanned<u64>>,
    pub(crate) incident_gap_seconds: Option<Spanned<u64>>,
    pub(crate) sustained_windows: Option<Spanned<u64>>,
    pub(crate) max_actions_per_hour: Option<Spanned<u64>>,
    pub(crate) dry_run: Option<bool>,
    pub(crate) baselines: Option<Spanned<String>>,
    pub(crate) ladder: RawLadder,
    pub(crate) webhook: Option<RawWebhook>,
}

/// `[detector.ladder]` as written.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawLadder {
    pub(crate) low: Option<Spanned<String>>,
    pub(crate) medium: Option<Spanned<String>>,
    pub(crate) high: Option<Spanned<String>>,
}

/// `[detector.webhook]` as written.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWebhook {
    pub(crate) url: Spanned<String>,
    #[serde(default)]
    pub(crate) ca: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) timeout_seconds: Option<Spanned<u64>>,
    #[serde(default)]
    pub(crate) attempts: Option<Spanned<u64>>,
}

const DAY: u64 = 86_400;

impl Validator<'_> {
    pub(super) fn detector(&self, raw: &RawDetector) -> Result<DetectorSettings, ConfigError> {
        let mut out = DetectorSettings::default();
        let d = &mut out.detector;
        out.enabled = raw.enabled.unwrap_or(true);
        let secs = |v: &Option<Spanned<u64>>, field: &str, min: u64, max: u64| {
            self.range(v, field, min, max).map(|v| v.map(|s| s * 1000))
        };
        if let Some(ms) = secs(&raw.window_seconds, "detector.window_seconds", 1, 3600)? {
            d.window_ms = ms;
        }
        let l = &mut d.lifecycle;
        if let Some(ms) = secs(
            &raw.min_learning_seconds,
            "detector.min_learning_seconds",
            0,
            90 * DAY,
        )? {
            l.min_learning_ms = ms;
        }
        if let Some(ms) = secs(&raw.quiet_seconds, "detector.quiet_seconds", 0, 90 * DAY)? {
            l.quiet_ms = ms;
        }
        if let Some(ms) = secs(&raw.shadow_seconds, "detector.shadow_seconds", 0, 90 * DAY)? {
            l.shadow_ms = ms;
        }
        if let Some(n) = self.range(&raw.min_windows, "detector.min_windows", 0, 100_000)? {
            l.min_windows = n as usize;
        }
        if let Some(ms) = secs(
            &raw.incident_gap_seconds,
            "detector.incident_gap_seconds",
            1,
            7 * DAY,
        )? {
            d.incident_gap_ms = ms;
        }
        if let Some(n) = self.range(
            &raw.sustained_windows,
            "detector.sustained_windows",
            1,
            1000,
        )? {
            d.sustained = n as u32;
        }
        if let Some(n) = self.range(
            &raw.max_actions_per_hour,
            "detector.max_actions_per_hour",
            0,
            10_000,
        )? {
            d.max_actions_per_hour = n as usize;
        }
        d.dry_run = raw.dry_run.unwrap_or(false);
        let step = |v: &Option<Spanned<String>>, field: &str, default: Step| match v {
            None => Ok(default),
            Some(v) => Step::parse(v.get_ref()).ok_or_else(|| {
                self.error(
                    v.span(),
                    field,
                    format!(
                        "{:?} is not a containment step (alert, quarantine, freeze, kill)",
                        v.get_ref()
                    ),
                )
            }),
        };
        let defaults = Ladder::default();
        d.ladder = Ladder {
            low: step(&raw.ladder.low, "detector.ladder.low", defaults.low)?,
            medium: step(
                &raw.ladder.medium,
                "detector.ladder.medium",
                defaults.medium,
            )?,
            high: step(&raw.ladder.high, "detector.ladder.high", defaults.high)?,
        };
        if let Some(path) = &raw.baselines {
            if !Path::new(path.get_ref()).is_absolute() {
                return Err(self.error(
                    path.span(),
                    "detector.baselines",
                    "must be an absolute path",
                ));
            }
            out.baselines = Some(PathBuf::from(path.get_ref()));
        }
        if let Some(hook) = &raw.webhook {
            let url = hook.url.get_ref();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(self.error(
                    hook.url.span(),
                    "detector.webhook.url",
                    format!("{url:?} is not an http:// or https:// URL"),
                ));
            }
            let ca = match &hook.ca {
                None => None,
                Some(ca) if Path::new(ca.get_ref()).is_absolute() => {
                    Some(PathBuf::from(ca.get_ref()))
                }
                Some(ca) => {
                    return Err(self.error(
                        ca.span(),
                        "detector.webhook.ca",
                        "must be an absolute path",
                    ));
                }
            };
            if url.starts_with("https://") && ca.is_none() {
                return Err(self.error(
                    hook.url.span(),
                    "detector.webhook.ca",
                    "an https webhook needs `ca`, the PEM file of the roots its certificate chains to",
                ));
            }
            out.webhook = Some(WebhookSettings {
                url: url.clone(),
                ca,
                timeout: std::time::Duration::from_secs(
                    self.range(
                        &hook.timeout_seconds,
                        "detector.webhook.timeout_seconds",
                        1,
                        300,
                    )?
                    .unwrap_or(5),
                ),
                attempts: self
                    .range(&hook.attempts, "detector.webhook.attempts", 1, 100)?
                    .unwrap_or(5) as u32,
            });
        }
        Ok(out)
    }

    pub(super) fn detection(
        &self,
        value: &Option<Spanned<String>>,
        field: &str,
    ) -> Result<Detection, ConfigError> {
        match value {
            None => Ok(Detection::Monitor),
            Some(v) => match v.get_ref().as_str() {
                "off" => Ok(Detection::Off),
                "monitor" => Ok(Detection::Monitor),
                "enforce" => Ok(Detection::Enforce),
                other => Err(self.error(
                    v.span(),
                    field,
                    format!(
                        "unknown detection {other:?}: expected \"off\", \"monitor\" or \"enforce\""
                    ),
                )),
            },
        }
    }
}
