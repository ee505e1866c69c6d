//! Nagios threshold ranges (the plugin guidelines' "THRESHOLDFORMAT").

use std::str::FromStr;

/// Why a threshold range did not parse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RangeError {
    #[error("range is empty")]
    Empty,
    #[error("range has no bounds")]
    NoBounds,
    #[error("'{0}' is not a number")]
    NotANumber(String),
    #[error("start {start} is greater than end {end}")]
    StartAfterEnd { start: String, end: String },
}

/// A Nagios threshold range (guidelines "THRESHOLDFORMAT"), bounds inclusive.
///
/// `N` = 0..N, `N:` = N..inf, `~:N` = -inf..N, `A:B`; the value alerts when
/// outside, or when inside with a leading `@`. `:N` is read as `0:N` like the
/// C monitoring-plugins do. Decimals are accepted; `inf`/`nan`/exponents are
/// not, nor are `@`, `:` or an empty string.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range {
    pub(super) start: f64,
    pub(super) end: f64,
    pub(super) inside: bool,
}

impl Range {
    /// Whether `value` breaches this threshold.
    pub fn alerts(&self, value: f64) -> bool {
        let within = self.start <= value && value <= self.end;
        within == self.inside
    }
}

/// A plain decimal number. Rust's f64 parser would also take `inf`, `NaN`
/// and `1e3`, which no Nagios plugin accepts.
fn parse_number(s: &str) -> Result<f64, RangeError> {
    let bad = || RangeError::NotANumber(s.to_string());
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if int.len() + frac.len() == 0 || !all_digits(int) || !all_digits(frac) {
        return Err(bad());
    }
    s.parse().map_err(|_| bad())
}

impl FromStr for Range {
    type Err = RangeError;

    fn from_str(s: &str) -> Result<Range, RangeError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(RangeError::Empty);
        }
        let (inside, rest) = match s.strip_prefix('@') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        if rest.is_empty() || rest == ":" {
            return Err(RangeError::NoBounds);
        }
        // Without a colon the number is the end and the start is 0.
        let (start_text, end_text) = rest.split_once(':').unwrap_or(("0", rest));
        let start = match start_text {
            "~" => f64::NEG_INFINITY,
            "" => 0.0,
            t => parse_number(t)?,
        };
        let end = match end_text {
            "" => f64::INFINITY,
            t => parse_number(t)?,
        };
        if start > end {
            return Err(RangeError::StartAfterEnd {
                start: start_text.to_string(),
                end: end_text.to_string(),
            });
        }
        Ok(Range { start, end, inside })
    }
}
