//! Identifier normalisation (contract §2): term ids as lower-case `0x` + 64 hex,
//! addresses EIP-55 checksummed, atom data as bytes, counter terms by keccak.

use super::FieldError;
use std::cell::RefCell;
use std::collections::HashMap;
use tiny_keccak::{Hasher, Keccak};

pub fn keccak256(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Keccak::v256();
    for part in parts {
        hasher.update(part);
    }
    let mut out = [0u8; 32];
    hasher.finalize(&mut out);
    out
}

/// Normalises a bytes32 term id: `0x` optional on input, any case, exactly 64
/// hex digits.
pub fn term_id(value: &str) -> Result<String, FieldError> {
    let digits = strip_0x(value);
    if digits.len() != 64 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(FieldError::Id {
            value: value.to_string(),
            expected: "a bytes32 id: 0x followed by 64 hex digits",
        });
    }
    let mut id = String::with_capacity(66);
    id.push_str("0x");
    id.extend(digits.chars().map(|c| c.to_ascii_lowercase()));
    Ok(id)
}

/// The counter term of a triple: keccak256(keccak256("COUNTER_SALT") ++ termId).
/// `term_id` must already be normalised.
pub fn counter_term_id(term_id: &str) -> String {
    let mut bytes = [0u8; 32];
    // A normalised term id always decodes; fall back to zeros defensively.
    let _ = hex::decode_to_slice(&term_id[2..], &mut bytes);
    let salt = keccak256(&[b"COUNTER_SALT"]);
    format!("0x{}", hex::encode(keccak256(&[&salt, &bytes])))
}

/// An address in its EIP-55 checksummed form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub checksummed: String,
    /// The input was mixed-case with a wrong EIP-55 checksum: still the same
    /// 20 bytes (a producer's cosmetic slip), counted and logged by the caller.
    pub checksum_mismatch: bool,
}

/// Normalises an address to its EIP-55 checksummed form. Any case is
/// accepted; a mixed-case input with a wrong checksum is flagged, not
/// refused. Only a wrong length or non-hex digits are malformed.
pub fn address(value: &str) -> Result<Address, FieldError> {
    let digits = strip_0x(value);
    if digits.len() != 40 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(FieldError::Id {
            value: truncate(value),
            expected: "an address: 0x followed by 40 hex digits",
        });
    }
    let checksummed = checksum_cached(&digits.to_ascii_lowercase());
    let mixed = digits.bytes().any(|b| b.is_ascii_lowercase())
        && digits.bytes().any(|b| b.is_ascii_uppercase());
    Ok(Address {
        checksum_mismatch: mixed && checksummed[2..] != *digits,
        checksummed,
    })
}

/// Distinct addresses remembered per thread: an indexer stream names the same
/// few thousand accounts and contracts over and over, and each checksum costs
/// a keccak. Cleared when full (no eviction bookkeeping); ~2 MiB at most.
const CHECKSUM_CACHE_ENTRIES: usize = 16_384;

thread_local! {
    static CHECKSUMS: RefCell<HashMap<[u8; 40], String>> = RefCell::new(HashMap::new());
}

/// `checksum`, remembered per lower-case address.
fn checksum_cached(lower_hex: &str) -> String {
    let Ok(key) = <[u8; 40]>::try_from(lower_hex.as_bytes()) else {
        return checksum(lower_hex);
    };
    CHECKSUMS.with(|cell| {
        let mut cache = cell.borrow_mut();
        if let Some(known) = cache.get(&key) {
            return known.clone();
        }
        let value = checksum(lower_hex);
        if cache.len() >= CHECKSUM_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, value.clone());
        value
    })
}

fn checksum(lower_hex: &str) -> String {
    let hash = keccak256(&[lower_hex.as_bytes()]);
    let mut out = String::with_capacity(42);
    out.push_str("0x");
    for (i, c) in lower_hex.chars().enumerate() {
        let nibble = (hash[i / 2] >> if i % 2 == 0 { 4 } else { 0 }) & 0x0f;
        if c.is_ascii_alphabetic() && nibble >= 8 {
            out.push(c.to_ascii_uppercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Decodes hex bytes (with or without `0x`; rindexer writes bare hex).
pub fn hex_bytes(value: &str) -> Result<Vec<u8>, FieldError> {
    hex::decode(strip_0x(value)).map_err(|_| FieldError::Id {
        value: truncate(value),
        expected: "hex bytes (an even number of hex digits, 0x optional)",
    })
}

/// Atom data as text when it is UTF-8 without NUL bytes (contract §2).
pub fn atom_text(bytes: &[u8]) -> Option<String> {
    if bytes.contains(&0) {
        return None;
    }
    std::str::from_utf8(bytes).ok().map(str::to_owned)
}

fn strip_0x(value: &str) -> &str {
    value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
        .unwrap_or(value)
}

/// Keeps error messages readable when a field holds a huge value.
pub(crate) fn truncate(value: &str) -> String {
    const LIMIT: usize = 120;
    if value.len() <= LIMIT {
        return value.to_string();
    }
    let mut end = LIMIT;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &value[..end], value.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eip55_reference_vectors() {
        // Vectors from EIP-55.
        for expected in [
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
            "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
            "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
            "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
        ] {
            for spelling in [
                expected.to_lowercase(),
                expected.to_string(),
                format!("0x{}", expected[2..].to_uppercase()),
            ] {
                let a = address(&spelling).unwrap();
                assert_eq!(a.checksummed, expected);
                assert!(!a.checksum_mismatch, "{spelling}");
            }
        }
    }

    #[test]
    fn the_checksum_cache_agrees_with_the_hash_past_its_capacity() {
        for i in 0..(CHECKSUM_CACHE_ENTRIES + 10) as u64 {
            let lower = format!("{:040x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let expected = checksum(&lower);
            assert_eq!(checksum_cached(&lower), expected);
            assert_eq!(
                checksum_cached(&lower),
                expected,
                "second lookup of {lower}"
            );
        }
    }

    #[test]
    fn a_wrong_checksum_is_the_same_address_normalised_and_flagged() {
        // Spellings the predecessor's fixtures use: mixed case, wrong checksum.
        for (input, expected) in [
            (
                "0x742d35Cc6634C0532925a3b844Bc9e7595f0bEb0",
                checksum("742d35cc6634c0532925a3b844bc9e7595f0beb0"),
            ),
            (
                "0x5aaeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
                "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed".to_string(),
            ),
        ] {
            let a = address(input).unwrap();
            assert!(a.checksum_mismatch, "{input}");
            assert_eq!(a.checksummed, expected);
            assert_eq!(a.checksummed.to_lowercase(), input.to_lowercase());
            assert_ne!(a.checksummed, input);
        }
    }

    #[test]
    fn malformed_addresses_are_named() {
        for bad in [
            "0x1234",
            "0xzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
            "0x742d35Cc6634C0532925a3b844Bc9e7595f0bEb",
            "0x742d35Cc6634C0532925a3b844Bc9e7595f0bEb00",
            "",
        ] {
            let err = address(bad).unwrap_err().to_string();
            assert!(err.contains("40 hex digits"), "{bad}: {err}");
        }
    }

    #[test]
    fn term_ids_are_lower_case_with_prefix() {
        let upper = format!("0x{}", "AB".repeat(32));
        assert_eq!(term_id(&upper).unwrap(), format!("0x{}", "ab".repeat(32)));
        assert_eq!(
            term_id(&"cd".repeat(32)).unwrap(),
            format!("0x{}", "cd".repeat(32))
        );
        assert!(term_id("0x1234").is_err());
    }

    #[test]
    fn keccak_and_counter_term() {
        // keccak256("") is a well-known constant.
        assert_eq!(
            hex::encode(keccak256(&[b""])),
            "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
        );
        let term = format!("0x{}", "00".repeat(31) + "01");
        let counter = counter_term_id(&term);
        assert_eq!(counter.len(), 66);
        assert_ne!(counter, term);
        // Independent recomputation of the definition.
        let salt = keccak256(&[b"COUNTER_SALT"]);
        let mut id = [0u8; 32];
        id[31] = 1;
        assert_eq!(
            counter,
            format!("0x{}", hex::encode(keccak256(&[&salt, &id])))
        );
    }

    #[test]
    fn atom_data_text_or_bytes() {
        assert_eq!(hex_bytes("0x6869").unwrap(), b"hi");
        assert_eq!(hex_bytes("6869").unwrap(), b"hi");
        assert!(hex_bytes("686").is_err());
        assert_eq!(atom_text(b"hi").as_deref(), Some("hi"));
        assert_eq!(atom_text(&[0xff, 0xfe]), None);
        assert_eq!(atom_text(b"a\0b"), None);
    }
}
