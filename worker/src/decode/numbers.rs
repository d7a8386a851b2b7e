//! Number spellings of rindexer payloads (contract §2): JSON numbers, decimal
//! strings and `0x` hex strings. Values are kept exact: uint256 quantities are
//! normalised to canonical decimal text, never routed through floats.

use super::FieldError;

/// 2^256 - 1 in decimal: the largest uint256.
const U256_MAX_DECIMAL: &str =
    "115792089237316195423570985008687907853269984665640564039457584007913129639935";

/// The textual spelling of a number as received: either the digits of a JSON
/// number literal or the content of a JSON string.
#[derive(Debug, Clone, Copy)]
pub enum Spelling<'a> {
    /// A JSON number literal, e.g. `214` or `1e3` (only plain integers are accepted).
    Literal(&'a str),
    /// A JSON string, e.g. `"0xd6"` or `"1000"`.
    Text(&'a str),
}

impl<'a> Spelling<'a> {
    fn describe(&self) -> String {
        match self {
            Spelling::Literal(s) => (*s).to_string(),
            Spelling::Text(s) => format!("{s:?}"),
        }
    }
}

/// Parses an unsigned 256-bit integer and returns its canonical decimal text
/// (no sign, no leading zeros).
pub fn parse_u256(spelling: Spelling<'_>) -> Result<String, FieldError> {
    let (digits, hex) = split_spelling(spelling)?;
    let decimal = if hex {
        hex_to_decimal(digits).ok_or_else(|| FieldError::Number {
            value: spelling.describe(),
            expected: "a uint256 (at most 64 hex digits)",
        })?
    } else {
        let trimmed = digits.trim_start_matches('0');
        let canonical = if trimmed.is_empty() { "0" } else { trimmed };
        if canonical.len() > U256_MAX_DECIMAL.len()
            || (canonical.len() == U256_MAX_DECIMAL.len() && canonical > U256_MAX_DECIMAL)
        {
            return Err(FieldError::Number {
                value: spelling.describe(),
                expected: "a uint256 (at most 2^256-1)",
            });
        }
        canonical.to_string()
    };
    Ok(decimal)
}

/// Parses an unsigned integer that must fit in `max` (block numbers, log
/// indexes, timestamps, vault types). Returned as i64 because PostgreSQL
/// stores them as BIGINT.
pub fn parse_small(
    spelling: Spelling<'_>,
    max: u64,
    expected: &'static str,
) -> Result<i64, FieldError> {
    let bad = || FieldError::Number {
        value: spelling.describe(),
        expected,
    };
    let (digits, hex) = split_spelling(spelling)?;
    let value = if hex {
        u64::from_str_radix(digits, 16).map_err(|_| bad())?
    } else {
        digits.parse::<u64>().map_err(|_| bad())?
    };
    if value > max || value > i64::MAX as u64 {
        return Err(bad());
    }
    Ok(value as i64)
}

/// Returns the digit part of a spelling and whether it is hexadecimal.
fn split_spelling(spelling: Spelling<'_>) -> Result<(&str, bool), FieldError> {
    let bad = |expected| FieldError::Number {
        value: spelling.describe(),
        expected,
    };
    let (digits, hex) = match spelling {
        Spelling::Literal(s) => (s, false),
        Spelling::Text(s) => match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(rest) => (rest, true),
            None => (s, false),
        },
    };
    if digits.is_empty() {
        return Err(bad("a non-empty unsigned integer"));
    }
    let valid = if hex {
        digits.bytes().all(|b| b.is_ascii_hexdigit())
    } else {
        digits.bytes().all(|b| b.is_ascii_digit())
    };
    if !valid {
        return Err(bad(if hex {
            "hex digits after 0x"
        } else {
            "an unsigned integer in decimal digits (or a 0x hex string)"
        }));
    }
    Ok((digits, hex))
}

/// Converts up to 64 hex digits to decimal text using four 64-bit limbs.
fn hex_to_decimal(hex: &str) -> Option<String> {
    let hex = hex.trim_start_matches('0');
    if hex.len() > 64 {
        return None;
    }
    if hex.is_empty() {
        return Some("0".to_string());
    }
    // Little-endian limbs.
    let mut limbs = [0u64; 4];
    for (i, chunk) in hex.as_bytes().rchunks(16).enumerate() {
        let text = std::str::from_utf8(chunk).ok()?;
        limbs[i] = u64::from_str_radix(text, 16).ok()?;
    }
    // Repeated division by 10^19 yields base-10^19 digits, least significant first.
    const CHUNK: u64 = 10_000_000_000_000_000_000;
    let mut parts: Vec<u64> = Vec::new();
    while limbs.iter().any(|&l| l != 0) {
        let mut remainder: u128 = 0;
        for limb in limbs.iter_mut().rev() {
            let current = (remainder << 64) | u128::from(*limb);
            *limb = (current / u128::from(CHUNK)) as u64;
            remainder = current % u128::from(CHUNK);
        }
        parts.push(remainder as u64);
    }
    let mut out = String::with_capacity(parts.len() * 19);
    for (i, part) in parts.iter().rev().enumerate() {
        if i == 0 {
            out.push_str(&part.to_string());
        } else {
            out.push_str(&format!("{part:019}"));
        }
    }
    Some(out)
}

/// Whether a decimal text (digits only) is above zero.
pub fn is_positive(decimal: &str) -> bool {
    decimal.bytes().any(|b| b != b'0')
}

/// Sum of two canonical decimal texts (as [`parse_u256`] returns them), exact
/// at any length. Lets a batch add up its own amounts per row before they
/// reach PostgreSQL's NUMERIC, which stores the running totals.
pub fn add_decimal(a: &str, b: &str) -> String {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut digits: Vec<u8> = Vec::with_capacity(a.len().max(b.len()) + 1);
    let mut carry = 0u8;
    let (mut i, mut j) = (a.len(), b.len());
    while i > 0 || j > 0 || carry > 0 {
        let mut sum = carry;
        if i > 0 {
            i -= 1;
            sum += a[i] - b'0';
        }
        if j > 0 {
            j -= 1;
            sum += b[j] - b'0';
        }
        digits.push(b'0' + sum % 10);
        carry = sum / 10;
    }
    while digits.len() > 1 && digits.last() == Some(&b'0') {
        digits.pop();
    }
    if digits.is_empty() {
        digits.push(b'0');
    }
    digits.reverse();
    // Only ASCII digits were pushed.
    String::from_utf8(digits).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u256(s: Spelling<'_>) -> String {
        parse_u256(s).unwrap()
    }

    #[test]
    fn positive_means_a_nonzero_digit() {
        for (text, positive) in [
            ("0", false),
            ("000", false),
            ("1", true),
            ("10", true),
            ("007", true),
        ] {
            assert_eq!(is_positive(text), positive, "{text}");
        }
    }

    #[test]
    fn decimal_hex_and_literal_spellings_agree() {
        assert_eq!(u256(Spelling::Literal("214")), "214");
        assert_eq!(u256(Spelling::Text("214")), "214");
        assert_eq!(u256(Spelling::Text("0xd6")), "214");
        assert_eq!(u256(Spelling::Text("0xD6")), "214");
        assert_eq!(u256(Spelling::Text("000")), "0");
        assert_eq!(u256(Spelling::Text("0x0")), "0");
        assert_eq!(u256(Spelling::Text("007")), "7");
    }

    #[test]
    fn values_above_2_pow_64_are_exact() {
        assert_eq!(
            u256(Spelling::Text("0x10000000000000000")),
            "18446744073709551616"
        );
        assert_eq!(
            u256(Spelling::Literal("340282366920938463463374607431768211457")),
            "340282366920938463463374607431768211457"
        );
        let max_hex = format!("0x{}", "f".repeat(64));
        assert_eq!(u256(Spelling::Text(&max_hex)), U256_MAX_DECIMAL);
        assert_eq!(u256(Spelling::Text(U256_MAX_DECIMAL)), U256_MAX_DECIMAL);
    }

    #[test]
    fn out_of_range_and_malformed_are_rejected_with_the_value() {
        let over = "115792089237316195423570985008687907853269984665640564039457584007913129639936";
        let err = parse_u256(Spelling::Text(over)).unwrap_err().to_string();
        assert!(err.contains(over) && err.contains("2^256"), "{err}");
        assert!(parse_u256(Spelling::Text(&format!("0x1{}", "0".repeat(64)))).is_err());
        for bad in ["", "0x", "-1", "1.5", "12a", "0xzz", " 1"] {
            let err = parse_u256(Spelling::Text(bad)).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        for bad in ["1.5", "-3", "1e3"] {
            assert!(parse_u256(Spelling::Literal(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn small_numbers_respect_their_bound() {
        assert_eq!(
            parse_small(Spelling::Text("0x68b18674"), u64::MAX, "x").unwrap(),
            1756464756
        );
        assert_eq!(parse_small(Spelling::Literal("2"), 2, "x").unwrap(), 2);
        assert!(parse_small(Spelling::Literal("3"), 2, "a vault type").is_err());
        assert!(parse_small(Spelling::Text("99999999999999999999"), u64::MAX, "x").is_err());
        assert!(parse_small(Spelling::Text("0xffffffffffffffff"), u64::MAX, "x").is_err());
    }

    #[test]
    fn decimal_sums_are_exact_beyond_u256() {
        assert_eq!(add_decimal("0", "0"), "0");
        assert_eq!(add_decimal("999", "1"), "1000");
        assert_eq!(add_decimal("1", "0"), "1");
        let doubled = add_decimal(U256_MAX_DECIMAL, U256_MAX_DECIMAL);
        assert_eq!(
            doubled,
            "231584178474632390847141970017375815706539969331281128078915168015826259279870"
        );
    }

    proptest::proptest! {
        #[test]
        fn decimal_sums_match_u128(a in 0u128..u128::MAX / 2, b in 0u128..u128::MAX / 2) {
            proptest::prop_assert_eq!(add_decimal(&a.to_string(), &b.to_string()), (a + b).to_string());
        }
    }
}
