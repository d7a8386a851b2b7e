//! Fold partitions (ADR 0015): a term, its vaults and their positions belong
//! to one partition, so that one folder owns every row it writes. Batches
//! ([`crate::aggregates`]) write one delta per partition and partition
//! owners ([`crate::fold`]) fold them; both read the partition from here.

/// Fold partitions; migration 0010 creates exactly these `fold_partition`
/// rows (the count is defined once, in the settings catalog, whose
/// FOLD_MAX_PARTITIONS it bounds).
pub const PARTITIONS: i16 = settings::FOLD_PARTITIONS as i16;

/// The partition of a term: FNV-1a (32 bit) of its id, modulo [`PARTITIONS`].
/// Stable across builds and platforms: every binary must agree on it.
pub fn partition_of(term_id: &str) -> i16 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in term_id.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash % PARTITIONS as u32) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_in_range() {
        // Fixed values: a change would move terms between partitions while
        // older binaries still run (their deltas would meet other owners).
        assert_eq!(partition_of(""), 5);
        assert_eq!(partition_of(&format!("0x{:064x}", 1)), 2);
        assert_eq!(partition_of(&format!("0x{:064x}", 2)), 15);
        for n in 0..1000u32 {
            let p = partition_of(&format!("0x{n:064x}"));
            assert!((0..PARTITIONS).contains(&p));
        }
    }
}
