//! Parsing of the numbers operators write: `500`, `1k`, `10Mi`, `max`.
//!
//! Kubernetes users already write quantities with these suffixes, so the
//! annotations accept the same spelling instead of inventing another. Only
//! whole numbers are accepted: a fractional IOPS limit has no meaning for the
//! kernel, and silently rounding would hide a typo.
//!
//! One grammar, everywhere (annotations, the config file, the environment,
//! `io.max` lines), with nothing around it:
//!
//! ```text
//! quantity = "max" | digit+ [ "k" | "M" | "G" | "T" | "Ki" | "Mi" | "Gi" | "Ti" ]
//! ```
//!
//! No spaces, no sign, no exponent, no other spelling of "unlimited": a value
//! that is not exactly this is malformed, so `" 100"` fails like `"+100"`.

use thiserror::Error;

/// Why a quantity could not be parsed; the message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QuantityError {
    #[error(
        "expected a whole number with an optional suffix (k, M, G, T, Ki, Mi, Gi, Ti) or \"max\", found an empty value"
    )]
    Empty,
    #[error("expected a whole number with an optional suffix (k, M, G, T, Ki, Mi, Gi, Ti) or \"max\", found {0:?}")]
    Malformed(String),
    #[error("expected a value that fits in 64 bits, found {0:?}")]
    Overflow(String),
    #[error(
        "expected a limit above zero (zero would mean \"no limit\" to the kernel; write \"max\" for that), found {0:?}"
    )]
    Zero(String),
}

/// A parsed limit value: a positive number, or explicitly unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantity {
    Value(u64),
    Unlimited,
}

impl Quantity {
    pub fn as_option(self) -> Option<u64> {
        match self {
            Quantity::Value(v) => Some(v),
            Quantity::Unlimited => None,
        }
    }
}

const SUFFIXES: &[(&str, u64)] = &[
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
    ("k", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
];

/// Parses `500`, `1k`, `10Mi`, `max`. Zero is rejected: the kernel reads 0
/// as "remove the limit", which no one writes on purpose.
pub fn parse(text: &str) -> Result<Quantity, QuantityError> {
    let t = text;
    if t.is_empty() {
        return Err(QuantityError::Empty);
    }
    if t == "max" {
        return Ok(Quantity::Unlimited);
    }
    let (digits, multiplier) = SUFFIXES.iter().find_map(|(s, m)| t.strip_suffix(s).map(|d| (d, *m))).unwrap_or((t, 1));
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(QuantityError::Malformed(text.to_string()));
    }
    let n: u64 = digits.parse().map_err(|_| QuantityError::Overflow(text.to_string()))?;
    let v = n.checked_mul(multiplier).ok_or_else(|| QuantityError::Overflow(text.to_string()))?;
    if v == 0 {
        return Err(QuantityError::Zero(text.to_string()));
    }
    Ok(Quantity::Value(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_suffixed_numbers() {
        assert_eq!(parse("500"), Ok(Quantity::Value(500)));
        assert_eq!(parse("1k"), Ok(Quantity::Value(1000)));
        assert_eq!(parse("10Mi"), Ok(Quantity::Value(10 << 20)));
        assert_eq!(parse("2G"), Ok(Quantity::Value(2_000_000_000)));
        assert_eq!(parse("1Ti"), Ok(Quantity::Value(1 << 40)));
        assert_eq!(parse("max"), Ok(Quantity::Unlimited));
    }

    #[test]
    fn one_spelling_only() {
        for text in [" 100", "100 ", "\t100", "+100", "1e3", "1K", "MAX", "Max", "unlimited", "1 k", "0x10", "１００"]
        {
            assert_eq!(parse(text), Err(QuantityError::Malformed(text.into())), "{text:?}");
        }
    }

    #[test]
    fn rejects_what_would_be_guessed() {
        assert_eq!(parse(""), Err(QuantityError::Empty));
        assert_eq!(parse("ten"), Err(QuantityError::Malformed("ten".into())));
        assert_eq!(parse("1.5Mi"), Err(QuantityError::Malformed("1.5Mi".into())));
        assert_eq!(parse("-5"), Err(QuantityError::Malformed("-5".into())));
        assert_eq!(parse("10MB"), Err(QuantityError::Malformed("10MB".into())));
        assert_eq!(parse("Mi"), Err(QuantityError::Malformed("Mi".into())));
        assert_eq!(parse("0"), Err(QuantityError::Zero("0".into())));
        assert!(matches!(parse("99999999999Ti"), Err(QuantityError::Overflow(_))));
    }

    #[test]
    fn error_message_names_expectation_and_input() {
        let msg = parse("ten").unwrap_err().to_string();
        assert!(msg.contains("expected a whole number"), "{msg}");
        assert!(msg.contains("\"ten\""), "{msg}");
    }
}
