//! The window model: a Gaussian mixture over per-window feature vectors.
//!
//! # Method
//!
//! 1. The time-ordered windows are split without shuffling: the first part trains the model, the
//!    last `held_out` fraction (at least [`MIN_VALIDATION`] windows) only sets the threshold, so
//!    the threshold is never fitted to the windows the density was estimated on.
//! 2. Features that are constant in the training part (variance < 1e-12) are not modelled by the
//!    mixture; each gets a fixed-width Gaussian penalty around its training value instead (see
//!    [`Model::score`]).
//! 3. The remaining features are standardised by their training mean and standard deviation.
//! 4. `linfa_clustering::GaussianMixtureModel` (full covariances) is fitted for
//!    k = 1..=min(`max_components`, max(n_train / 5, 1)) and k is chosen by BIC, where the
//!    log-likelihood comes from our own scorer. If linfa fails for every k, a single Gaussian
//!    computed here (mean and regularised covariance) is used: fitting never fails because linfa
//!    did.
//! 5. Only plain parameters are kept (log weight, mean, Cholesky factor of the covariance and
//!    half the log-determinant of the precision per component). Scoring is our own numerically
//!    stable log-sum-exp: linfa's `predict`/`predict_proba` are not used because linfa 0.8.1
//!    computes `ln(Σ exp(·))` without subtracting the maximum, which underflows to `-inf` (and
//!    then NaN) for windows far from every component — exactly the windows we must flag.
//! 6. Scoring is one-sided: for each component, features below its mean count as at the mean
//!    (and a constant feature below its value costs nothing). Benign agents vary by doing less
//!    (idle minutes, a loaded machine); attacks add activity. Every modelled feature also gets at
//!    least [`MIN_FEATURE_STD`] of spread, in the scaler and in each component.

use linfa::DatasetBase;
use linfa::traits::Fit;
use linfa_clustering::GaussianMixtureModel;
use ndarray::{Array2, Axis};
use rand_xoshiro::Xoshiro256Plus;
use rand_xoshiro::rand_core::SeedableRng;
use serde::{Deserialize, Serialize};

/// Windows needed to fit a model.
pub const MIN_WINDOWS: usize = 20;

/// Windows always held out for the threshold, whatever `held_out` says: a threshold set by fewer
/// points would be mostly noise.
pub const MIN_VALIDATION: usize = 3;

/// Largest score [`Model::score`] returns. Scores are clamped to `[-MAX_SCORE, MAX_SCORE]` so
/// they stay finite (and serialisable) even for absurd inputs; non-finite inputs and windows of
/// the wrong length score exactly `MAX_SCORE`, i.e. above any threshold.
pub const MAX_SCORE: f64 = 1e300;

/// Windows always left for training when `held_out` is close to 1.
const MIN_TRAIN: usize = 2;
/// Upper bound applied to `FitOptions::held_out`.
const MAX_HELD_OUT: f64 = 0.9;
/// Training variance below which a feature counts as constant.
const CONSTANT_VARIANCE: f64 = 1e-12;
/// Standard deviation assumed for a feature that was constant in training, in the caller's
/// feature units (log1p space for Custos' window features): a change of 1.0 in such a feature,
/// e.g. CPU time going from 0 to e − 1 units, then costs 0.5 · (1 / 0.5)² = 2 nats, and a change
/// of 5.0 costs 50 nats.
const CONSTANT_FEATURE_STD: f64 = 0.5;
/// Least spread a modelled feature is given (log1p units, so about ±30 % of a count). An
/// agent whose training windows were nearly identical would otherwise make a window with one
/// exec fewer look many standard deviations away: counts that close are the same behaviour.
pub const MIN_FEATURE_STD: f64 = 0.25;
/// Diagonal regularisation of the mixture covariances, in standardised units. It keeps the
/// covariances of tight or collinear components positive-definite.
const REG_COVARIANCE: f64 = 1e-3;
const GMM_TOLERANCE: f64 = 1e-4;
const GMM_MAX_ITERATIONS: u64 = 300;
/// Independently seeded EM starts per k ≥ 2. linfa's own `n_runs` does not re-initialise
/// between runs (it keeps iterating the same model), so restarts are done here instead.
const GMM_STARTS: u64 = 3;
/// Smallest spread used in the threshold, in nats.
const MIN_SPREAD: f64 = 2.0;
/// ln(2π).
const LN_2PI: f64 = 1.837_877_066_409_345_5;

/// Options for [`Model::fit`]. Out-of-range values are clamped rather than rejected (see the
/// field docs) so a bad configuration degrades instead of leaving the agent without a model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitOptions {
    /// Largest number of mixture components tried (default 4; 0 is treated as 1).
    pub max_components: usize,
    /// Seed of the fitting RNG; the same windows and options always give the same model.
    pub seed: u64,
    /// Fraction of the windows, taken from the end, used only to set the threshold (default
    /// 0.25; clamped to [0, 0.9], non-finite means the default; at least [`MIN_VALIDATION`]
    /// windows are held out regardless).
    pub held_out: f64,
    /// Multiplier of the validation spread added above the largest validation score (default
    /// 1.5; negative means 0, non-finite means the default).
    pub margin: f64,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            max_components: 4,
            seed: 1,
            held_out: 0.25,
            margin: 3.0,
        }
    }
}

impl FitOptions {
    /// The options with every field in its usable range.
    fn sanitised(&self) -> Self {
        let default = Self::default();
        Self {
            max_components: self.max_components.max(1),
            seed: self.seed,
            held_out: if self.held_out.is_finite() {
                self.held_out.clamp(0.0, MAX_HELD_OUT)
            } else {
                default.held_out
            },
            margin: if self.margin.is_finite() {
                self.margin.max(0.0)
            } else {
                default.margin
            },
        }
    }
}

/// Why [`Model::fit`] could not produce a model.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    /// Not enough windows yet.
    #[error("too few windows to fit a model: have {have}, need {need}")]
    TooFew {
        /// Windows supplied.
        have: usize,
        /// Windows required ([`MIN_WINDOWS`]).
        need: usize,
    },
    /// Windows have different numbers of features.
    #[error("windows have different numbers of features")]
    Ragged,
    /// A feature value is NaN or infinite, or so large that its training statistics overflow.
    #[error("a window contains a non-finite (or overflowing) feature value")]
    NotFinite,
    /// No mixture could be fitted, not even the single-Gaussian fallback; holds the message of
    /// the last failure.
    #[error("mixture fitting failed: {0}")]
    Linfa(String),
}

/// A fitted window model: everything needed to score windows, as plain numbers (no linfa types),
/// so it can be persisted with serde and scored without linfa.
///
/// Deserialisation validates the parameters (shapes, index ranges, finiteness, positive Cholesky
/// diagonals), so a corrupted or hand-edited model is rejected at load time instead of panicking
/// or scoring garbage later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Params", into = "Params")]
pub struct Model {
    p: Params,
}

/// The persisted form of [`Model`]; see [`Params::check`] for its invariants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Params {
    /// Length of the windows the model accepts.
    n_features: usize,
    /// Original indices of the features modelled by the mixture, increasing.
    kept: Vec<usize>,
    /// Training mean of each kept feature.
    centre: Vec<f64>,
    /// Training standard deviation of each kept feature (> 0).
    scale: Vec<f64>,
    /// Features constant in training, with their training value.
    constants: Vec<ConstantFeature>,
    /// Mixture components over the standardised kept features; empty iff `kept` is empty.
    components: Vec<Component>,
    /// Alert threshold on the score.
    threshold: f64,
    /// Windows used to fit the mixture.
    trained_on: usize,
    /// Windows used to set the threshold.
    held_out: usize,
}

/// A feature that never varied in training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ConstantFeature {
    index: usize,
    value: f64,
}

/// One Gaussian of the mixture, in standardised feature space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Component {
    /// ln of the mixing weight.
    ln_weight: f64,
    /// Mean, one entry per kept feature.
    mean: Vec<f64>,
    /// Lower-triangular L with covariance Σ = L·Lᵀ, row-major d×d (upper part zero).
    cov_chol: Vec<f64>,
    /// ½ ln det(Σ⁻¹) = −Σᵢ ln Lᵢᵢ.
    half_log_det_precision: f64,
}

impl Component {
    /// Builds a component from a covariance matrix (row-major d×d), regularising it until it is
    /// positive-definite. `None` if any parameter is non-finite or regularisation does not help.
    fn new(ln_weight: f64, mean: Vec<f64>, covariance: &[f64]) -> Option<Self> {
        let d = mean.len();
        if !ln_weight.is_finite() || mean.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let cov_chol = regularised_cholesky(covariance, d)?;
        let half_log_det_precision = -(0..d).map(|i| cov_chol[i * d + i].ln()).sum::<f64>();
        half_log_det_precision.is_finite().then_some(Self {
            ln_weight,
            mean,
            cov_chol,
            half_log_det_precision,
        })
    }

    fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Squared Mahalanobis distance of `z` from the mean, by forward substitution L·y = z − μ.
    /// Overflow (absurd inputs) gives +∞, never NaN, so it ranks as "infinitely far".
    fn mahalanobis2(&self, z: &[f64], scratch: &mut Vec<f64>) -> f64 {
        let d = self.dim();
        scratch.clear();
        for (i, (zi, mi)) in z.iter().zip(&self.mean).enumerate() {
            // Row i of L: the strictly-lower part, then the diagonal.
            let row = &self.cov_chol[i * d..i * d + i + 1];
            let partial: f64 = row.iter().zip(scratch.iter()).map(|(l, y)| l * y).sum();
            scratch.push((zi - mi - partial) / row[i]);
        }
        let m: f64 = scratch.iter().map(|y| y * y).sum();
        if m.is_nan() { f64::INFINITY } else { m }
    }

    /// ln(w_k · N(z; μ_k, Σ_k)).
    fn log_joint(&self, z: &[f64], scratch: &mut Vec<f64>) -> f64 {
        let d = self.dim() as f64;
        self.ln_weight + self.half_log_det_precision
            - 0.5 * d * LN_2PI
            - 0.5 * self.mahalanobis2(z, scratch)
    }

    /// Marginal standard deviation of standardised feature `i` under this component:
    /// √Σᵢᵢ = ‖row i of L‖.
    fn marginal_std(&self, i: usize) -> f64 {
        let d = self.dim();
        self.cov_chol[i * d..i * d + i + 1]
            .iter()
            .map(|l| l * l)
            .sum::<f64>()
            .sqrt()
    }

    /// Checks the shape and value invariants scoring relies on (no panics, no NaN).
    fn check(&self, d: usize) -> Result<(), String> {
        let Some(d2) = d.checked_mul(d) else {
            return Err("dimension overflow".into());
        };
        if self.mean.len() != d || self.cov_chol.len() != d2 {
            return Err("component shape does not match the kept features".into());
        }
        let finite = self.ln_weight.is_finite()
            && self.half_log_det_precision.is_finite()
            && self.mean.iter().all(|v| v.is_finite())
            && self.cov_chol.iter().all(|v| v.is_finite());
        if !finite {
            return Err("component has a non-finite parameter".into());
        }
        if (0..d).any(|i| self.cov_chol[i * d + i] <= 0.0) {
            return Err("component Cholesky factor has a non-positive diagonal".into());
        }
        Ok(())
    }
}

impl Params {
    /// The invariants every [`Model`] satisfies; checked when deserialising.
    fn check(&self) -> Result<(), String> {
        let d = self.kept.len();
        if self.centre.len() != d || self.scale.len() != d {
            return Err("standardisation vectors do not match the kept features".into());
        }
        if self.kept.iter().any(|&j| j >= self.n_features)
            || self.kept.windows(2).any(|w| w[0] >= w[1])
        {
            return Err("kept feature indices out of range or not increasing".into());
        }
        if self.kept.len() + self.constants.len() != self.n_features {
            return Err("kept and constant features do not cover the window".into());
        }
        if self.constants.iter().any(|c| c.index >= self.n_features) {
            return Err("constant feature index out of range".into());
        }
        if self.constants.iter().any(|c| !c.value.is_finite())
            || self.centre.iter().any(|v| !v.is_finite())
            || self.scale.iter().any(|s| !(s.is_finite() && *s > 0.0))
            || !self.threshold.is_finite()
        {
            return Err("non-finite standardisation, constant or threshold".into());
        }
        if (d == 0) != self.components.is_empty() {
            return Err("components present without kept features, or missing".into());
        }
        self.components.iter().try_for_each(|c| c.check(d))
    }
}

impl TryFrom<Params> for Model {
    type Error = String;

    fn try_from(p: Params) -> Result<Self, String> {
        p.check().map(|()| Self { p })
    }
}

impl From<Model> for Params {
    fn from(model: Model) -> Self {
        model.p
    }
}

impl Model {
    /// Fits a model on `windows`, time-ordered rows of equal length.
    ///
    /// The first `round((1 − held_out) · n)` windows train the mixture; the rest (at least
    /// [`MIN_VALIDATION`]) only set the threshold. Needs [`MIN_WINDOWS`] windows, all of the same
    /// length, all values finite.
    pub fn fit(windows: &[Vec<f64>], options: &FitOptions) -> Result<Model, FitError> {
        let total = windows.len();
        if total < MIN_WINDOWS {
            return Err(FitError::TooFew {
                have: total,
                need: MIN_WINDOWS,
            });
        }
        let n_features = windows.first().map_or(0, Vec::len);
        if windows.iter().any(|w| w.len() != n_features) {
            return Err(FitError::Ragged);
        }
        if windows.iter().flatten().any(|v| !v.is_finite()) {
            return Err(FitError::NotFinite);
        }
        let options = options.sanitised();

        let n_validation = ((total as f64 * options.held_out).round() as usize)
            .clamp(MIN_VALIDATION, total - MIN_TRAIN);
        let (train, validation) = windows.split_at(total - n_validation);
        let n_train = train.len() as f64;

        let mut kept = Vec::new();
        let mut centre = Vec::new();
        let mut scale = Vec::new();
        let mut constants = Vec::new();
        for j in 0..n_features {
            // Two-pass mean/variance: the one-pass formula cancels badly for large offsets.
            let mean = train.iter().map(|w| w[j]).sum::<f64>() / n_train;
            let var = train.iter().map(|w| (w[j] - mean).powi(2)).sum::<f64>() / n_train;
            if !(mean.is_finite() && var.is_finite()) {
                return Err(FitError::NotFinite);
            }
            if var < CONSTANT_VARIANCE {
                constants.push(ConstantFeature {
                    index: j,
                    value: mean,
                });
            } else {
                kept.push(j);
                centre.push(mean);
                scale.push(var.sqrt().max(MIN_FEATURE_STD));
            }
        }

        let rows: Vec<Vec<f64>> = train
            .iter()
            .map(|w| standardise(w, &kept, &centre, &scale))
            .collect();
        let components = if kept.is_empty() {
            Vec::new()
        } else {
            // Each component's own spread gets the same floor as the features (see
            // MIN_FEATURE_STD), expressed in standardised units.
            let floors: Vec<f64> = scale
                .iter()
                .map(|s| (MIN_FEATURE_STD / s).powi(2))
                .collect();
            floor_variances(fit_mixture(&rows, kept.len(), &options)?, &floors)
        };

        let mut model = Model {
            p: Params {
                n_features,
                kept,
                centre,
                scale,
                constants,
                components,
                threshold: 0.0,
                trained_on: train.len(),
                held_out: validation.len(),
            },
        };
        let mut scores: Vec<f64> = validation.iter().map(|w| model.score(w)).collect();
        model.p.threshold = threshold_from(&mut scores, options.margin);
        debug_assert!(model.p.check().is_ok(), "fit built an invalid model");
        Ok(model)
    }

    /// Anomaly score of one window, in nats: higher is more unusual.
    ///
    /// `score(x) = −ln p(x) + Σ_c [½ z_c² + ln σ_c + ½ ln 2π]` where
    ///
    /// * `p(x)` is the mixture density of the kept features in the caller's units, i.e.
    ///   `ln p(x) = logsumexp_k [ln w_k + ½ ln det P_k − (d/2) ln 2π − ½ (z − μ_k)ᵀ P_k (z − μ_k)]
    ///   − Σᵢ ln sᵢ` with `z` the standardised window, `P_k` the precision and `sᵢ` the training
    ///   standard deviations (the log-sum-exp subtracts its maximum term, so it stays finite far
    ///   from every component);
    /// * the sum over `c` runs over the features that were constant in training: each is treated
    ///   as a Gaussian with its training value as mean and a fixed σ_c = 0.5 (log1p-space units),
    ///   so `z_c = (x_c − value_c) / 0.5`. At its training value a feature adds only the constant
    ///   `ln 0.5 + ½ ln 2π ≈ 0.23`; a CPU feature that was always 0 and reads 5.0 adds ~50.
    ///
    /// The result is clamped to `[-MAX_SCORE, MAX_SCORE]`, so it is finite for every finite
    /// input. A window with a NaN or infinite value, or of the wrong length, scores
    /// [`MAX_SCORE`] (fail closed: it is above any threshold).
    pub fn score(&self, x: &[f64]) -> f64 {
        let p = &self.p;
        if x.len() != p.n_features || x.iter().any(|v| !v.is_finite()) {
            return MAX_SCORE;
        }
        let z = standardise(x, &p.kept, &p.centre, &p.scale);
        let ln_jacobian: f64 = p.scale.iter().map(|s| s.ln()).sum();
        // One-sided: each component sees the window with every feature below its mean raised
        // to the mean. Doing less than usual (an idle minute, a slow machine) is how benign
        // agents vary; what an attack adds (execs, connections, CPU) is what counts.
        let mut scratch = Vec::new();
        let terms: Vec<f64> = p
            .components
            .iter()
            .map(|c| {
                let raised: Vec<f64> = z.iter().zip(&c.mean).map(|(v, m)| v.max(*m)).collect();
                c.log_joint(&raised, &mut scratch)
            })
            .collect();
        let density = if terms.is_empty() {
            0.0
        } else {
            log_sum_exp(&terms)
        };
        let mut score = ln_jacobian - density;
        for c in &p.constants {
            let dz = ((x[c.index] - c.value) / CONSTANT_FEATURE_STD).max(0.0);
            score += 0.5 * dz * dz + CONSTANT_FEATURE_STD.ln() + 0.5 * LN_2PI;
        }
        clamp_score(score)
    }

    /// The alert threshold on [`Model::score`], in nats:
    ///
    /// `threshold = max(v) + margin · max(p95(v) − p50(v), 1.0)`
    ///
    /// where `v` are the scores of the held-out (validation) windows — never the training
    /// windows — and the percentiles interpolate linearly between order statistics. Every
    /// validation window is therefore below the threshold; the spread term, floored at 1 nat,
    /// leaves headroom proportional to how variable normal windows are.
    pub fn threshold(&self) -> f64 {
        self.p.threshold
    }

    /// Number of mixture components chosen (k); 0 when every feature was constant in training
    /// (then the score is only the constant-feature penalty).
    pub fn components(&self) -> usize {
        self.p.components.len()
    }

    /// Indices (into the original window) of the features modelled by the mixture, i.e. those
    /// not constant in training, increasing.
    pub fn kept_features(&self) -> &[usize] {
        &self.p.kept
    }

    /// Number of windows the mixture was fitted on.
    pub fn trained_on(&self) -> usize {
        self.p.trained_on
    }

    /// Number of windows held out to set the threshold.
    pub fn held_out(&self) -> usize {
        self.p.held_out
    }

    /// Length of the windows this model scores.
    pub fn n_features(&self) -> usize {
        self.p.n_features
    }

    /// The features of `x` that deviate most, largest |z| first, at most `n`, as
    /// `(index into the original window, signed z)`.
    ///
    /// For kept features `z` is the deviation from the mean of the component most responsible
    /// for `x` (largest `ln w_k + ln N(x; μ_k, Σ_k)`), in that component's marginal standard
    /// deviations. For features constant in training it is `(x − value) / 0.5`, as in
    /// [`Model::score`]. Non-finite values report `±MAX_SCORE` (NaN as `+MAX_SCORE`); ties keep
    /// feature order. Returns nothing if `x` has the wrong length.
    pub fn explain(&self, x: &[f64], n: usize) -> Vec<(usize, f64)> {
        let p = &self.p;
        if n == 0 || x.len() != p.n_features {
            return Vec::new();
        }
        let z = standardise(x, &p.kept, &p.centre, &p.scale);
        let mut scratch = Vec::new();
        let closest = p.components.iter().max_by(|a, b| {
            let la = finite_or_neg_inf(a.log_joint(&z, &mut scratch));
            let lb = finite_or_neg_inf(b.log_joint(&z, &mut scratch));
            // Far from everything all joints are −∞: prefer the heavier component then.
            la.total_cmp(&lb).then(a.ln_weight.total_cmp(&b.ln_weight))
        });

        let mut out = Vec::with_capacity(p.n_features);
        if let Some(c) = closest {
            for (i, &j) in p.kept.iter().enumerate() {
                out.push((j, clamp_score((z[i] - c.mean[i]) / c.marginal_std(i))));
            }
        }
        for c in &p.constants {
            out.push((
                c.index,
                clamp_score((x[c.index] - c.value) / CONSTANT_FEATURE_STD),
            ));
        }
        // Only excesses count in the score, so they are what explains it.
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out.truncate(n);
        out
    }
}

/// The kept features of `x`, standardised.
fn standardise(x: &[f64], kept: &[usize], centre: &[f64], scale: &[f64]) -> Vec<f64> {
    kept.iter()
        .zip(centre.iter().zip(scale))
        .map(|(&j, (m, s))| (x[j] - m) / s)
        .collect()
}

/// ln Σ exp(tᵢ), subtracting the maximum first so that very negative terms (windows far from
/// every component) neither underflow to ln 0 nor turn into NaN.
fn log_sum_exp(terms: &[f64]) -> f64 {
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max.is_infinite() {
        // All terms −∞ (or one +∞): the sum is that infinity; avoid ∞ − ∞.
        return max;
    }
    max + terms.iter().map(|t| (t - max).exp()).sum::<f64>().ln()
}

/// ln of the mixture density at standardised `z` (0 for an empty mixture, i.e. no kept
/// features).
fn mixture_log_density(components: &[Component], z: &[f64], scratch: &mut Vec<f64>) -> f64 {
    if components.is_empty() {
        return 0.0;
    }
    let terms: Vec<f64> = components.iter().map(|c| c.log_joint(z, scratch)).collect();
    log_sum_exp(&terms)
}

fn clamp_score(s: f64) -> f64 {
    if s.is_nan() {
        MAX_SCORE
    } else {
        s.clamp(-MAX_SCORE, MAX_SCORE)
    }
}

fn finite_or_neg_inf(v: f64) -> f64 {
    if v.is_nan() { f64::NEG_INFINITY } else { v }
}

/// `threshold = max + margin · max(p95 − p50, MIN_SPREAD)` over the validation scores.
fn threshold_from(scores: &mut [f64], margin: f64) -> f64 {
    scores.sort_by(f64::total_cmp);
    let Some(&max) = scores.last() else {
        // Unreachable: at least MIN_VALIDATION windows are held out. Fail closed anyway.
        return MAX_SCORE;
    };
    let spread = (percentile(scores, 0.95) - percentile(scores, 0.5)).max(MIN_SPREAD);
    clamp_score(max + margin * spread)
}

/// Linear-interpolation percentile of sorted, non-empty `v` (`q` in [0, 1]).
fn percentile(v: &[f64], q: f64) -> f64 {
    let pos = q * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// Free parameters of a k-component full-covariance mixture in d dimensions.
fn parameter_count(k: usize, d: usize) -> f64 {
    ((k - 1) + k * d + k * d * (d + 1) / 2) as f64
}

/// Seed of EM start `start`: distinct per start, and start 0 uses the configured seed itself.
fn start_seed(seed: u64, start: u64) -> u64 {
    seed.wrapping_add(start.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Fits the mixture on standardised training rows and picks k by BIC (own log-likelihood).
/// Falls back to a single Gaussian computed here if linfa fails for every k.
fn fit_mixture(
    rows: &[Vec<f64>],
    d: usize,
    options: &FitOptions,
) -> Result<Vec<Component>, FitError> {
    let n = rows.len();
    let data = Array2::from_shape_fn((n, d), |(r, i)| rows[r][i]);
    let dataset = DatasetBase::from(data.view());
    let k_max = options.max_components.min((n / 5).max(1));
    let mut scratch = Vec::new();
    let mut log_likelihood = |components: &[Component]| -> f64 {
        rows.iter()
            .map(|z| mixture_log_density(components, z, &mut scratch))
            .sum()
    };

    let mut best: Option<(f64, Vec<Component>)> = None;
    let mut last_error = None;
    for k in 1..=k_max {
        // With k = 1 every start is identical (one cluster holds all points).
        let starts = if k == 1 { 1 } else { GMM_STARTS };
        let mut best_k: Option<(f64, Vec<Component>)> = None;
        for start in 0..starts {
            match fit_linfa(&dataset, k, start_seed(options.seed, start)) {
                Ok(components) => {
                    let ll = log_likelihood(&components);
                    if ll.is_finite() && best_k.as_ref().is_none_or(|(b, _)| ll > *b) {
                        best_k = Some((ll, components));
                    }
                }
                Err(message) => last_error = Some(message),
            }
        }
        if let Some((ll, components)) = best_k {
            let bic = -2.0 * ll + parameter_count(k, d) * (n as f64).ln();
            // Strictly better only: on a tie the smaller k (seen first) wins.
            if best.as_ref().is_none_or(|(b, _)| bic < *b) {
                best = Some((bic, components));
            }
        }
    }
    if let Some((_, components)) = best {
        return Ok(components);
    }
    single_gaussian(rows, d).map(|c| vec![c]).ok_or_else(|| {
        FitError::Linfa(last_error.unwrap_or_else(|| "single-Gaussian fallback failed".into()))
    })
}

/// One linfa fit with k components, exported into our own parameters.
fn fit_linfa(
    dataset: &DatasetBase<ndarray::ArrayView2<'_, f64>, ndarray::Array1<()>>,
    k: usize,
    seed: u64,
) -> Result<Vec<Component>, String> {
    let gmm = GaussianMixtureModel::<f64>::params_with_rng(k, Xoshiro256Plus::seed_from_u64(seed))
        .n_runs(1)
        .tolerance(GMM_TOLERANCE)
        .max_n_iterations(GMM_MAX_ITERATIONS)
        .reg_covariance(REG_COVARIANCE)
        .fit(dataset)
        .map_err(|e| format!("k={k}: {e}"))?;
    let (weights, means, covariances) = (gmm.weights(), gmm.means(), gmm.covariances());
    (0..k)
        .map(|c| {
            // An empty component would be an error in linfa already; a weight that underflowed
            // to 0 is floored rather than making ln w = −∞ (which JSON cannot carry).
            let w = weights[c];
            let ln_weight = if w.is_nan() {
                w
            } else {
                w.max(f64::MIN_POSITIVE).ln()
            };
            let covariance: Vec<f64> = covariances.index_axis(Axis(0), c).iter().copied().collect();
            Component::new(ln_weight, means.row(c).to_vec(), &covariance).ok_or_else(|| {
                format!("k={k}: component {c} has non-finite or unusable parameters")
            })
        })
        .collect()
}

/// Raises each component's variances to at least `floors` (standardised units), so that a
/// tight cluster of nearly identical training windows does not make small differences look
/// extreme.
fn floor_variances(components: Vec<Component>, floors: &[f64]) -> Vec<Component> {
    let d = floors.len();
    components
        .into_iter()
        .map(|c| {
            let l = &c.cov_chol;
            let mut cov = vec![0.0; d * d];
            for i in 0..d {
                for j in 0..d {
                    cov[i * d + j] = (0..=i.min(j)).map(|k| l[i * d + k] * l[j * d + k]).sum();
                }
            }
            for (i, floor) in floors.iter().enumerate() {
                cov[i * d + i] = cov[i * d + i].max(*floor);
            }
            Component::new(c.ln_weight, c.mean.clone(), &cov).unwrap_or(c)
        })
        .collect()
}

/// The k = 1 model computed directly: sample mean and covariance (+ `REG_COVARIANCE` on the
/// diagonal, as linfa would), i.e. a Mahalanobis model.
fn single_gaussian(rows: &[Vec<f64>], d: usize) -> Option<Component> {
    let n = rows.len() as f64;
    let mut mean = vec![0.0; d];
    for row in rows {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += v / n;
        }
    }
    let mut covariance = vec![0.0; d * d];
    for row in rows {
        for i in 0..d {
            for j in 0..=i {
                covariance[i * d + j] += (row[i] - mean[i]) * (row[j] - mean[j]) / n;
            }
        }
    }
    for i in 0..d {
        covariance[i * d + i] += REG_COVARIANCE;
        for j in 0..i {
            covariance[j * d + i] = covariance[i * d + j];
        }
    }
    Component::new(0.0, mean, &covariance)
}

/// Cholesky factor of the symmetrised `a` (row-major d×d), adding growing diagonal jitter until
/// the matrix is numerically positive-definite. `None` if it never is (e.g. non-finite entries).
fn regularised_cholesky(a: &[f64], d: usize) -> Option<Vec<f64>> {
    if a.len() != d.checked_mul(d)? || a.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let mut sym = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..d {
            sym[i * d + j] = 0.5 * (a[i * d + j] + a[j * d + i]);
        }
    }
    let mean_diag = (0..d).map(|i| sym[i * d + i].abs()).sum::<f64>() / d.max(1) as f64;
    let base = if mean_diag > 0.0 { mean_diag } else { 1.0 };
    let mut jitter = 0.0;
    for _ in 0..16 {
        let mut m = sym.clone();
        for i in 0..d {
            m[i * d + i] += jitter;
        }
        if let Some(l) = cholesky(&m, d) {
            return Some(l);
        }
        jitter = if jitter == 0.0 {
            1e-10 * base
        } else {
            jitter * 10.0
        };
    }
    None
}

/// Plain Cholesky–Banachiewicz: lower-triangular L with a = L·Lᵀ. `None` unless every pivot is
/// positive and not negligible next to its diagonal entry (a near-zero pivot would give a
/// useless, huge precision).
fn cholesky(a: &[f64], d: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            let dot: f64 = (0..j).map(|m| l[i * d + m] * l[j * d + m]).sum();
            let s = a[i * d + j] - dot;
            if i == j {
                if !(s.is_finite() && s > 1e-12 * a[i * d + i].abs()) {
                    return None;
                }
                l[i * d + i] = s.sqrt();
            } else {
                l[i * d + j] = s / l[j * d + j];
            }
        }
    }
    Some(l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_xoshiro::rand_core::RngCore;

    /// Deterministic standard-normal source (Box–Muller over xoshiro256+).
    struct Normal(Xoshiro256Plus);

    impl Normal {
        fn new(seed: u64) -> Self {
            Self(Xoshiro256Plus::seed_from_u64(seed))
        }

        /// Uniform in (0, 1), never 0 (so ln is finite).
        fn uniform(&mut self) -> f64 {
            ((self.0.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }

        fn sample(&mut self) -> f64 {
            let (u1, u2) = (self.uniform(), self.uniform());
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        }
    }

    /// `n` windows around `means` with per-feature `sds`; `sds[i] == 0` makes feature i constant.
    fn gaussian_windows(n: usize, means: &[f64], sds: &[f64], seed: u64) -> Vec<Vec<f64>> {
        let mut rng = Normal::new(seed);
        (0..n)
            .map(|_| {
                means
                    .iter()
                    .zip(sds)
                    .map(|(m, s)| m + s * rng.sample())
                    .collect()
            })
            .collect()
    }

    const MEANS: [f64; 3] = [1.0, 2.0, 3.0];
    const SDS: [f64; 3] = [0.5, 1.0, 0.3];

    fn one_cluster() -> Model {
        let windows = gaussian_windows(200, &MEANS, &SDS, 7);
        Model::fit(&windows, &FitOptions::default()).expect("fit one cluster")
    }

    #[test]
    fn one_cluster_centre_normal_far_point_anomalous() {
        let model = one_cluster();
        assert_eq!(model.components(), 1, "BIC should pick k = 1");
        assert_eq!(model.kept_features(), &[0, 1, 2]);
        assert_eq!(model.n_features(), 3);
        assert_eq!((model.trained_on(), model.held_out()), (150, 50));
        assert!(model.threshold().is_finite());

        let centre = model.score(&MEANS);
        assert!(
            centre < model.threshold(),
            "{centre} vs {}",
            model.threshold()
        );
        for i in 0..3 {
            let mut far = MEANS.to_vec();
            far[i] += 10.0 * SDS[i];
            let s = model.score(&far);
            assert!(
                s > model.threshold(),
                "feature {i}: {s} vs {}",
                model.threshold()
            );
            assert!(
                s > centre + 40.0,
                "10 sd should cost ~50 nats: {s} vs {centre}"
            );
        }
    }

    #[test]
    fn scores_are_finite_for_extreme_inputs() {
        let model = one_cluster();
        for x in [
            [1e6, -1e6, 1e6],
            [-1e6, 1e6, -1e6],
            [1e150, -1e150, 1e150],
            [1e300, -1e300, f64::MAX],
            [f64::MAX, f64::MIN, f64::MAX],
        ] {
            let s = model.score(&x);
            assert!(s.is_finite(), "{x:?} scored {s}");
            assert!(s > model.threshold(), "{x:?} scored {s}");
        }
        // 1e6 is far but representable: its score must reflect the distance, not just the cap.
        assert!(model.score(&[1e6, -1e6, 1e6]) < MAX_SCORE);
        // Non-finite or mis-sized windows fail closed.
        assert_eq!(model.score(&[f64::NAN, 2.0, 3.0]), MAX_SCORE);
        assert_eq!(model.score(&[f64::INFINITY, 2.0, 3.0]), MAX_SCORE);
        assert_eq!(model.score(&[1.0, 2.0]), MAX_SCORE);
    }

    #[test]
    fn log_sum_exp_is_stable() {
        // Naive ln(Σ exp) gives ln 0 = −∞ here (linfa 0.8.1's bug).
        let v = log_sum_exp(&[-1e6, -1e6]);
        assert!((v - (-1e6 + 2f64.ln())).abs() < 1e-6, "{v}");
        assert!((log_sum_exp(&[1000.0, 1000.0]) - (1000.0 + 2f64.ln())).abs() < 1e-9);
        assert_eq!(log_sum_exp(&[f64::NEG_INFINITY; 2]), f64::NEG_INFINITY);
        assert_eq!(log_sum_exp(&[f64::NEG_INFINITY, 0.0]), 0.0);
    }

    fn two_clusters() -> (Vec<Vec<f64>>, [f64; 2], [f64; 2]) {
        // Two behaviours that trade one feature for the other (scoring is one-sided, so the
        // point between them must exceed each in some feature to be unusual).
        let a = [0.0, 8.0];
        let b = [8.0, 0.0];
        let mut ra = gaussian_windows(150, &a, &[0.5, 0.5], 11).into_iter();
        let mut rb = gaussian_windows(150, &b, &[0.5, 0.5], 12).into_iter();
        // Interleave so both the training and the held-out part see both behaviours.
        let windows = (0..300)
            .filter_map(|i| if i % 2 == 0 { ra.next() } else { rb.next() })
            .collect();
        (windows, a, b)
    }

    #[test]
    fn two_clusters_bic_picks_two_and_midpoint_is_anomalous() {
        let (windows, a, b) = two_clusters();
        let model = Model::fit(&windows, &FitOptions::default()).expect("fit two clusters");
        assert_eq!(model.components(), 2, "BIC should pick k = 2");
        let t = model.threshold();
        assert!(model.score(&a) < t, "{} vs {t}", model.score(&a));
        assert!(model.score(&b) < t, "{} vs {t}", model.score(&b));
        let mid = model.score(&[4.0, 4.0]);
        assert!(mid > t, "midpoint {mid} vs {t}");
        // Doing less than either behaviour is not unusual.
        let less = model.score(&[-4.0, -4.0]);
        assert!(less < t, "below both {less} vs {t}");
    }

    #[test]
    fn feature_constant_in_training_is_penalised() {
        // CPU-like feature 2: always 0 while learning.
        let windows = gaussian_windows(120, &[1.0, 2.0, 0.0], &[0.5, 1.0, 0.0], 3);
        let model = Model::fit(&windows, &FitOptions::default()).expect("fit");
        assert_eq!(model.kept_features(), &[0, 1]);
        let t = model.threshold();
        let quiet = model.score(&[1.0, 2.0, 0.0]);
        let busy = model.score(&[1.0, 2.0, 5.0]);
        assert!(quiet < t, "{quiet} vs {t}");
        assert!(busy > t, "{busy} vs {t}");
        // 5.0 with σ = 0.5 is z = 10: 50 nats more.
        assert!((busy - quiet - 50.0).abs() < 1e-9, "{busy} - {quiet}");

        let top = model.explain(&[1.0, 2.0, 5.0], 2);
        assert_eq!(top.len(), 2);
        assert_eq!(top[0].0, 2);
        assert!((top[0].1 - 10.0).abs() < 1e-12, "{top:?}");
    }

    #[test]
    fn all_features_constant_uses_only_the_penalty() {
        let windows = vec![vec![1.0, 0.0]; 40];
        let model = Model::fit(&windows, &FitOptions::default()).expect("fit");
        assert_eq!(model.components(), 0);
        assert!(model.kept_features().is_empty());
        let t = model.threshold();
        assert!(model.score(&[1.0, 0.0]) < t);
        assert!(model.score(&[1.0, 5.0]) > t);
        assert!(model.score(&[1.0, 0.1]) < t, "tiny changes stay normal");
        assert_eq!(model.explain(&[1.0, 5.0], 5)[0], (1, 10.0));
    }

    #[test]
    fn discrete_features_with_duplicate_rows_fit() {
        // A 0/1 feature gives many identical coordinates: larger k may hit empty clusters in
        // linfa, which must be skipped rather than fail the fit.
        let noise = gaussian_windows(200, &[0.5], &[0.1], 17);
        let windows: Vec<Vec<f64>> = noise
            .iter()
            .enumerate()
            .map(|(i, n)| vec![(i % 2) as f64, n[0]])
            .collect();
        let model = Model::fit(&windows, &FitOptions::default()).expect("fit");
        let t = model.threshold();
        assert!(model.score(&[0.0, 0.5]) < t);
        assert!(model.score(&[1.0, 0.5]) < t);
        // Values between the two are within the features' floor spread (MIN_FEATURE_STD);
        // a value far from both is not.
        assert!(
            model.score(&[3.0, 0.5]) > t,
            "an unseen value of a 0/1 feature"
        );
    }

    #[test]
    fn explain_ranks_the_deviating_feature_first() {
        let model = one_cluster();
        let mut x = MEANS.to_vec();
        x[1] += 10.0 * SDS[1];
        x[2] -= 10.0 * SDS[2];
        let top = model.explain(&x, 2);
        assert_eq!(top.len(), 2);
        // Excesses explain a score (a deficit does not count): feature 1 first.
        assert_eq!(top[0].0, 1);
        assert!((8.0..12.0).contains(&top[0].1), "{top:?}");
        assert!(top[0].1 >= top[1].1);
        assert!(model.explain(&x, 0).is_empty());
        assert_eq!(model.explain(&x, 10).len(), 3);
        assert!(model.explain(&[1.0], 3).is_empty());
        assert_eq!(model.explain(&[f64::NAN, 2.0, 3.0], 1)[0], (0, MAX_SCORE));
    }

    #[test]
    fn threshold_comes_from_held_out_windows() {
        let mut windows = gaussian_windows(100, &MEANS, &SDS, 5);
        // An outlier among the held-out windows: the threshold must sit above its score,
        // max(validation) being part of the formula.
        windows[97] = vec![1.0, 2.0 + 6.0, 3.0];
        let model = Model::fit(&windows, &FitOptions::default()).expect("fit");
        assert_eq!((model.trained_on(), model.held_out()), (75, 25));
        assert!(model.score(&windows[97]) < model.threshold());

        // Explicit formula check with margin 0: the threshold is exactly the max held-out score.
        let options = FitOptions {
            margin: 0.0,
            ..FitOptions::default()
        };
        let model = Model::fit(&windows, &options).expect("fit");
        let max = windows[75..]
            .iter()
            .map(|w| model.score(w))
            .fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(model.threshold(), max);
    }

    #[test]
    fn split_sizes_and_option_clamping() {
        let windows = gaussian_windows(21, &MEANS, &SDS, 9);
        let model = Model::fit(&windows, &FitOptions::default()).expect("fit");
        assert_eq!((model.trained_on(), model.held_out()), (16, 5));
        for (held_out, expect_val) in [(0.0, 3), (f64::NAN, 5), (5.0, 19)] {
            let options = FitOptions {
                held_out,
                max_components: 0,
                margin: f64::INFINITY,
                ..FitOptions::default()
            };
            let model = Model::fit(&windows, &options).expect("fit");
            assert_eq!(model.held_out(), expect_val, "held_out {held_out}");
            assert_eq!(model.trained_on() + model.held_out(), 21);
            assert!(model.threshold().is_finite());
        }
    }

    #[test]
    fn input_errors() {
        let windows = gaussian_windows(19, &MEANS, &SDS, 1);
        assert!(matches!(
            Model::fit(&windows, &FitOptions::default()),
            Err(FitError::TooFew { have: 19, need: 20 })
        ));
        assert!(matches!(
            Model::fit(&[], &FitOptions::default()),
            Err(FitError::TooFew { have: 0, need: 20 })
        ));

        let mut windows = gaussian_windows(30, &MEANS, &SDS, 1);
        windows[4].push(1.0);
        assert!(matches!(
            Model::fit(&windows, &FitOptions::default()),
            Err(FitError::Ragged)
        ));

        let mut windows = gaussian_windows(30, &MEANS, &SDS, 1);
        windows[28][1] = f64::NAN;
        assert!(matches!(
            Model::fit(&windows, &FitOptions::default()),
            Err(FitError::NotFinite)
        ));
        windows[28][1] = f64::INFINITY;
        assert!(matches!(
            Model::fit(&windows, &FitOptions::default()),
            Err(FitError::NotFinite)
        ));
        // Finite values whose statistics overflow are rejected too, not turned into NaN.
        let mut windows = gaussian_windows(30, &MEANS, &SDS, 1);
        windows[0][0] = f64::MAX;
        windows[1][0] = f64::MAX;
        assert!(matches!(
            Model::fit(&windows, &FitOptions::default()),
            Err(FitError::NotFinite)
        ));
    }

    #[test]
    fn serde_round_trip_scores_the_same() {
        let (windows, a, b) = two_clusters();
        let model = Model::fit(&windows, &FitOptions::default()).expect("fit");
        let json = serde_json::to_string(&model).expect("serialise");
        let back: Model = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(back.components(), model.components());
        assert_eq!(back.kept_features(), model.kept_features());
        // serde_json's default float parser may be off by one ulp, so compare closely rather
        // than bitwise.
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * (1.0 + x.abs());
        assert!(close(back.threshold(), model.threshold()));
        for x in [a.to_vec(), b.to_vec(), vec![4.0, 4.0], vec![1e6, -1e6]] {
            assert!(close(back.score(&x), model.score(&x)), "{x:?}");
        }
        // A reloaded model can be saved and loaded again.
        let again: Model =
            serde_json::from_str(&serde_json::to_string(&back).expect("ser")).expect("de");
        assert!(close(again.score(&a), model.score(&a)));
    }

    #[test]
    fn corrupted_model_is_rejected_on_load() {
        let model = one_cluster();
        let json = serde_json::to_value(&model).expect("serialise");

        let mut bad = json.clone();
        bad["kept"] = serde_json::json!([0, 1, 7]);
        assert!(serde_json::from_value::<Model>(bad).is_err());

        let mut bad = json.clone();
        bad["components"][0]["mean"] = serde_json::json!([0.0]);
        assert!(serde_json::from_value::<Model>(bad).is_err());

        let mut bad = json.clone();
        bad["components"][0]["cov_chol"][0] = serde_json::json!(-1.0);
        assert!(serde_json::from_value::<Model>(bad).is_err());

        let mut bad = json;
        bad["threshold"] = serde_json::Value::Null;
        assert!(serde_json::from_value::<Model>(bad).is_err());
    }

    #[test]
    fn fitting_is_deterministic() {
        let (windows, _, _) = two_clusters();
        let first = Model::fit(&windows, &FitOptions::default()).expect("fit");
        let second = Model::fit(&windows, &FitOptions::default()).expect("fit");
        assert_eq!(first, second);
    }

    #[test]
    fn single_gaussian_fallback_matches_data() {
        let windows = gaussian_windows(500, &[0.0, 0.0], &[1.0, 2.0], 21);
        let c = single_gaussian(&windows, 2).expect("fallback");
        assert!(c.mean.iter().all(|m| m.abs() < 0.3), "{:?}", c.mean);
        assert!((c.marginal_std(0) - 1.0).abs() < 0.15);
        assert!((c.marginal_std(1) - 2.0).abs() < 0.3);
    }

    #[test]
    fn cholesky_regularises_singular_matrices() {
        // Rank 1: plain Cholesky fails, the regularised one adds just enough jitter.
        let a = [1.0, 1.0, 1.0, 1.0];
        assert!(cholesky(&a, 2).is_none());
        let l = regularised_cholesky(&a, 2).expect("regularised");
        let rebuilt = [
            l[0] * l[0],
            l[2] * l[0],
            l[2] * l[0],
            l[2] * l[2] + l[3] * l[3],
        ];
        for (r, x) in rebuilt.iter().zip(a) {
            assert!((r - x).abs() < 1e-3, "{rebuilt:?}");
        }
        assert!(regularised_cholesky(&[f64::NAN, 0.0, 0.0, 1.0], 2).is_none());
        assert_eq!(
            cholesky(&[4.0, 2.0, 2.0, 5.0], 2),
            Some(vec![2.0, 0.0, 1.0, 2.0])
        );
    }
}
