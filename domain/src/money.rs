//! Money in integer minor units inside, decimal strings outside. Never a float.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Digits after the decimal point. Every currency Boxoffice sells in is treated as having
/// two minor-unit digits (EUR, USD, GBP, …).
pub const MINOR_DIGITS: u32 = 2;
const MINOR_PER_MAJOR: i64 = 10_i64.pow(MINOR_DIGITS);
/// The largest price or total we accept, in minor units (ten billion major units).
pub const AMOUNT_MINOR_MAX: i64 = 1_000_000_000_000;

/// An amount in minor units (cents).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Minor(pub i64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountParseError {
    #[error("not a decimal amount with at most {MINOR_DIGITS} decimals")]
    Malformed,
    #[error("amount is too large")]
    TooLarge,
}

impl Minor {
    /// Parses `"120.00"`, `"120.5"`, `"120"` or `"-3.10"`.
    pub fn parse_decimal(s: &str) -> Result<Self, AmountParseError> {
        let (negative, digits) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty()
            || !all_digits(whole)
            || !all_digits(frac)
            || frac.len() > MINOR_DIGITS as usize
        {
            return Err(AmountParseError::Malformed);
        }
        if digits.contains('.') && frac.is_empty() {
            return Err(AmountParseError::Malformed);
        }
        if whole.len() > 12 {
            return Err(AmountParseError::TooLarge);
        }
        let whole: i64 = whole.parse().map_err(|_| AmountParseError::Malformed)?;
        let mut frac_value: i64 = if frac.is_empty() {
            0
        } else {
            frac.parse().map_err(|_| AmountParseError::Malformed)?
        };
        for _ in frac.len()..MINOR_DIGITS as usize {
            frac_value *= 10;
        }
        let value = whole * MINOR_PER_MAJOR + frac_value;
        if value > AMOUNT_MINOR_MAX {
            return Err(AmountParseError::TooLarge);
        }
        Ok(Minor(if negative { -value } else { value }))
    }

    pub fn checked_add(self, other: Minor) -> Option<Minor> {
        self.0.checked_add(other.0).map(Minor)
    }

    pub fn checked_mul(self, n: i64) -> Option<Minor> {
        self.0.checked_mul(n).map(Minor)
    }
}

impl fmt::Display for Minor {
    /// Formats as a decimal string with exactly two decimals: `"120.00"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let per = MINOR_PER_MAJOR as u64;
        write!(
            f,
            "{sign}{}.{:0width$}",
            abs / per,
            abs % per,
            width = MINOR_DIGITS as usize
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_decimal_strings() {
        assert_eq!(Minor::parse_decimal("120.00").unwrap(), Minor(12_000));
        assert_eq!(Minor::parse_decimal("120.5").unwrap(), Minor(12_050));
        assert_eq!(Minor::parse_decimal("7").unwrap(), Minor(700));
        assert_eq!(Minor::parse_decimal("-3.10").unwrap(), Minor(-310));
        assert_eq!(Minor(12_000).to_string(), "120.00");
        assert_eq!(Minor(5).to_string(), "0.05");
        assert_eq!(Minor(-310).to_string(), "-3.10");
    }

    #[test]
    fn rejects_what_is_not_an_amount() {
        for bad in ["", ".5", "1.", "1.234", "1e3", "abc", "1,00", "--1", "+1"] {
            assert_eq!(
                Minor::parse_decimal(bad),
                Err(AmountParseError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(
            Minor::parse_decimal("99999999999999"),
            Err(AmountParseError::TooLarge)
        );
    }
}
