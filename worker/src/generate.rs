//! Sample-event generator: realistic rindexer entries for atoms, triples,
//! deposits, redeems (each followed by the SharePriceChanged the contract
//! emits) and a few other events, across several accounts and curves.
//!
//! The simulation keeps per-vault and per-position state, so the numbers
//! are consistent (shares never go negative, prices move with supply), and
//! it uses every number spelling rindexer produces (hex and decimal strings,
//! JSON numbers, null timestamps) plus binary atom data.

use crate::decode::ids;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

/// Parameters of a generated data set.
#[derive(Debug, Clone)]
pub struct GeneratorSpec {
    pub events: u64,
    pub events_per_entry: u32,
    pub seed: u64,
    pub accounts: u32,
    pub curves: u32,
    pub network: String,
    pub stream_prefix: String,
}

/// One stream entry to XADD: (stream, payload JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedEntry {
    pub stream: String,
    pub payload: String,
}

/// The event kinds and the stream suffix each goes to.
pub const STREAM_SUFFIXES: [(&str, &str); 6] = [
    ("AtomCreated", "atom_created"),
    ("TripleCreated", "triple_created"),
    ("Deposited", "deposited"),
    ("Redeemed", "redeemed"),
    ("SharePriceChanged", "share_price_changed"),
    ("ProtocolFeeAccrued", "protocol_fee_accrued"),
];

pub fn stream_names(prefix: &str) -> Vec<String> {
    STREAM_SUFFIXES
        .iter()
        .map(|(_, s)| format!("{prefix}_{s}"))
        .collect()
}

/// splitmix64: small, fast, deterministic (the generator's and the property
/// tests' only source of randomness, so a seed reproduces a run).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
    /// Uniform in `low..=high`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }
    /// True `percent` times in 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const E18: u128 = 1_000_000_000_000_000_000;

#[derive(Default, Clone)]
struct VaultState {
    total_shares: u128,
    total_assets: u128,
}

impl VaultState {
    /// Price per 1e18 shares. Curve 1 is linear 1:1; other curves rise with supply.
    fn price(&self, curve: u32) -> u128 {
        if self.total_shares == 0 {
            return E18;
        }
        let base = self.total_assets.saturating_mul(E18) / self.total_shares;
        if curve == 1 {
            base
        } else {
            base + self.total_shares / 1_000
        }
    }
}

struct Sim<'a> {
    spec: &'a GeneratorSpec,
    rng: Rng,
    accounts: Vec<String>,
    atoms: Vec<String>,
    triples: Vec<(String, String)>,
    vaults: BTreeMap<(String, u32), VaultState>,
    positions: BTreeMap<(String, String, u32), u128>,
    block: u64,
    log_index: u64,
    tx_counter: u64,
    timestamp: u64,
    buffers: HashMap<&'static str, Vec<Value>>,
    out: Vec<GeneratedEntry>,
    emitted: u64,
}

/// Generates the entries (deterministic for a given spec).
pub fn generate(spec: &GeneratorSpec) -> Vec<GeneratedEntry> {
    let mut rng = Rng(spec.seed ^ 0x5eed);
    let accounts = (0..spec.accounts.max(1))
        .map(|i| {
            let hash = ids::keccak256(&[b"account", &spec.seed.to_be_bytes(), &i.to_be_bytes()]);
            let lower = format!("0x{}", hex::encode(&hash[12..]));
            ids::address(&lower).expect("40 hex digits").checksummed
        })
        .collect();
    let start_block = 1_000_000 + rng.below(1_000);
    let mut sim = Sim {
        spec,
        rng,
        accounts,
        atoms: Vec::new(),
        triples: Vec::new(),
        vaults: BTreeMap::new(),
        positions: BTreeMap::new(),
        block: start_block,
        log_index: 0,
        tx_counter: 0,
        timestamp: 1_756_000_000,
        buffers: HashMap::new(),
        out: Vec::new(),
        emitted: 0,
    };
    sim.run();
    sim.out
}

impl<'a> Sim<'a> {
    fn run(&mut self) {
        while self.emitted < self.spec.events {
            // A new block now and then.
            if self.rng.chance(30) {
                self.block += 1 + self.rng.below(3);
                self.timestamp += 2 + self.rng.below(10);
                self.log_index = 0;
            }
            let roll = self.rng.below(100);
            if self.atoms.len() < 3 || roll < 5 {
                self.create_atom();
            } else if roll < 9 && self.atoms.len() >= 3 {
                self.create_triple();
            } else if roll < 11 {
                self.generic();
            } else if roll < 70 {
                self.deposit();
            } else {
                self.redeem();
            }
        }
        let kinds: Vec<&'static str> = STREAM_SUFFIXES.iter().map(|(k, _)| *k).collect();
        for kind in kinds {
            self.flush(kind);
        }
    }

    fn transaction(&mut self) -> String {
        self.tx_counter += 1;
        let hash = ids::keccak256(&[
            b"tx",
            &self.spec.seed.to_be_bytes(),
            &self.tx_counter.to_be_bytes(),
        ]);
        format!("0x{}", hex::encode(hash))
    }

    fn tx_info(&mut self, tx: &str) -> Value {
        let log_index = self.log_index;
        self.log_index += 1;
        let block_hash = ids::keccak256(&[b"block", &self.block.to_be_bytes()]);
        // Mix the spellings rindexer produces.
        let timestamp = match self.rng.below(10) {
            0 => Value::Null,
            1..=5 => json!(format!("0x{:x}", self.timestamp)),
            _ => json!(self.timestamp.to_string()),
        };
        let log_index = if self.rng.chance(60) {
            json!(format!("0x{log_index:x}"))
        } else {
            json!(log_index)
        };
        json!({
            "address": "0x6E16E4E5Bb3F0C8eB0F0e1bC2A2B5a6C0B2A3A51".to_lowercase(),
            "block_hash": format!("0x{}", hex::encode(block_hash)),
            "block_number": if self.rng.chance(50) { json!(self.block) } else { json!(format!("0x{:x}", self.block)) },
            "block_timestamp": timestamp,
            "log_index": log_index,
            "network": self.spec.network,
            "transaction_hash": tx,
            "transaction_index": self.rng.below(200),
        })
    }

    fn emit(&mut self, kind: &'static str, mut fields: Value, tx: &str) {
        fields["transaction_information"] = self.tx_info(tx);
        self.buffers.entry(kind).or_default().push(fields);
        self.emitted += 1;
        if self.buffers[kind].len() >= self.spec.events_per_entry.max(1) as usize {
            self.flush(kind);
        }
    }

    fn flush(&mut self, kind: &'static str) {
        let Some(items) = self.buffers.remove(kind) else {
            return;
        };
        if items.is_empty() {
            return;
        }
        let suffix = STREAM_SUFFIXES
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, s)| *s)
            .unwrap_or("other");
        // Single items alternate between a bare object and a one-element array
        // (both occur in the wild); decided without the RNG so that the events
        // do not depend on how they are grouped into entries.
        let event_data = if items.len() == 1 && self.out.len() % 2 == 0 {
            items.into_iter().next().expect("one item")
        } else {
            Value::Array(items)
        };
        let payload = json!({
            "event_name": kind,
            "event_signature_hash": format!("0x{}", hex::encode(ids::keccak256(&[kind.as_bytes()]))),
            "event_data": event_data,
            "network": self.spec.network,
        });
        self.out.push(GeneratedEntry {
            stream: format!("{}_{suffix}", self.spec.stream_prefix),
            payload: payload.to_string(),
        });
    }

    fn account(&mut self) -> String {
        let i = self.rng.below(self.accounts.len() as u64) as usize;
        self.accounts[i].clone()
    }

    fn curve(&mut self) -> u32 {
        1 + self.rng.below(u64::from(self.spec.curves.max(1))) as u32
    }

    fn create_atom(&mut self) {
        let n = self.atoms.len() as u64;
        let term = format!(
            "0x{}",
            hex::encode(ids::keccak256(&[
                b"atom",
                &self.spec.seed.to_be_bytes(),
                &n.to_be_bytes()
            ]))
        );
        let data: Vec<u8> = if self.rng.chance(85) {
            format!("ipfs://bafkrei{:020x}{n}", self.rng.next_u64()).into_bytes()
        } else {
            // Binary atom data (not UTF-8).
            vec![0xff, 0xfe, 0x00, (n % 256) as u8]
        };
        let creator = self.account();
        let wallet = self.account();
        let tx = self.transaction();
        self.emit(
            "AtomCreated",
            json!({"creator": creator, "termId": term, "atomData": hex::encode(data), "atomWallet": wallet}),
            &tx,
        );
        self.atoms.push(term);
    }

    fn create_triple(&mut self) {
        let pick = |rng: &mut Rng, atoms: &Vec<String>| {
            atoms[rng.below(atoms.len() as u64) as usize].clone()
        };
        let (s, p, o) = (
            pick(&mut self.rng, &self.atoms),
            pick(&mut self.rng, &self.atoms),
            pick(&mut self.rng, &self.atoms),
        );
        let n = self.triples.len() as u64;
        let term = format!(
            "0x{}",
            hex::encode(ids::keccak256(&[
                b"triple",
                &self.spec.seed.to_be_bytes(),
                &n.to_be_bytes()
            ]))
        );
        let counter = ids::counter_term_id(&term);
        let creator = self.account();
        let tx = self.transaction();
        self.emit(
            "TripleCreated",
            json!({"creator": creator, "termId": term, "subjectId": s, "predicateId": p, "objectId": o}),
            &tx,
        );
        self.triples.push((term, counter));
    }

    /// A term to trade: atoms, triples and (less often) counter triples.
    fn vault_term(&mut self) -> (String, u8) {
        if !self.triples.is_empty() && self.rng.chance(40) {
            let (term, counter) =
                self.triples[self.rng.below(self.triples.len() as u64) as usize].clone();
            if self.rng.chance(30) {
                (counter, 2)
            } else {
                (term, 1)
            }
        } else {
            (
                self.atoms[self.rng.below(self.atoms.len() as u64) as usize].clone(),
                0,
            )
        }
    }

    fn deposit(&mut self) {
        let (term, vault_type) = self.vault_term();
        let curve = self.curve();
        let receiver = self.account();
        let sender = if self.rng.chance(90) {
            receiver.clone()
        } else {
            self.account()
        };
        // 0.001 .. ~10 ETH, and now and then a whale above 2^64 wei.
        let mut assets: u128 = (1 + u128::from(self.rng.below(10_000))) * 1_000_000_000_000_000;
        if self.rng.chance(2) {
            assets *= 10_000;
        }
        let after_fees = assets - assets / 100;
        let vault = self
            .vaults
            .entry((term.clone(), curve))
            .or_default()
            .clone();
        let price = vault.price(curve);
        let price = price.max(1);
        let shares = after_fees
            .checked_mul(E18)
            .map_or(after_fees / price * E18, |x| x / price);
        let position = self
            .positions
            .entry((receiver.clone(), term.clone(), curve))
            .or_default();
        *position += shares;
        let position_total = *position;
        let vault = self
            .vaults
            .get_mut(&(term.clone(), curve))
            .expect("inserted above");
        vault.total_shares += shares;
        vault.total_assets += after_fees;
        let vault = vault.clone();
        let tx = self.transaction();
        let curve_value = if self.rng.chance(50) {
            json!(curve)
        } else {
            json!(curve.to_string())
        };
        self.emit(
            "Deposited",
            json!({"sender": sender, "receiver": receiver, "termId": term, "curveId": curve_value,
                   "assets": assets.to_string(), "assetsAfterFees": after_fees.to_string(),
                   "shares": shares.to_string(), "totalShares": position_total.to_string(), "vaultType": vault_type}),
            &tx,
        );
        self.price_changed(&term, curve, vault_type, &vault, &tx);
    }

    fn redeem(&mut self) {
        let holders: Vec<(String, String, u32)> = self
            .positions
            .iter()
            .filter(|(_, shares)| **shares > 0)
            .map(|(k, _)| k.clone())
            .take(64)
            .collect();
        if holders.is_empty() {
            return self.deposit();
        }
        let (account, term, curve) = holders[self.rng.below(holders.len() as u64) as usize].clone();
        let held = self.positions[&(account.clone(), term.clone(), curve)];
        let shares = if self.rng.chance(30) {
            held
        } else {
            (held / 100) * (1 + u128::from(self.rng.below(99)))
        };
        let vault = self.vaults[&(term.clone(), curve)].clone();
        let gross = shares.saturating_mul(vault.total_assets) / vault.total_shares.max(1);
        let fees = gross / 100;
        let assets = gross - fees;
        let remaining = held - shares;
        self.positions
            .insert((account.clone(), term.clone(), curve), remaining);
        let v = self.vaults.get_mut(&(term.clone(), curve)).expect("exists");
        v.total_shares -= shares;
        v.total_assets -= gross.min(v.total_assets);
        let vault = v.clone();
        let vault_type = if self.atoms.contains(&term) {
            0
        } else if self.triples.iter().any(|(t, _)| *t == term) {
            1
        } else {
            2
        };
        let tx = self.transaction();
        self.emit(
            "Redeemed",
            json!({"sender": account, "receiver": account, "termId": term, "curveId": curve.to_string(),
                   "shares": shares.to_string(), "totalShares": remaining.to_string(),
                   "assets": assets.to_string(), "fees": fees.to_string(), "vaultType": vault_type}),
            &tx,
        );
        self.price_changed(&term, curve, vault_type, &vault, &tx);
    }

    fn price_changed(
        &mut self,
        term: &str,
        curve: u32,
        vault_type: u8,
        vault: &VaultState,
        tx: &str,
    ) {
        let price = vault.price(curve);
        self.emit(
            "SharePriceChanged",
            json!({"termId": term, "curveId": curve.to_string(), "sharePrice": price.to_string(),
                   "totalAssets": vault.total_assets.to_string(), "totalShares": vault.total_shares.to_string(),
                   "vaultType": vault_type}),
            tx,
        );
    }

    fn generic(&mut self) {
        let sender = self.account();
        let tx = self.transaction();
        let amount = 1 + self.rng.below(1_000_000_000);
        self.emit(
            "ProtocolFeeAccrued",
            json!({"epoch": (self.block / 1000).to_string(), "sender": sender, "amount": amount.to_string()}),
            &tx,
        );
    }
}

/// Writes entries with XADD (pipelined). Returns the number written.
pub async fn publish(
    client: &redis::Client,
    entries: &[GeneratedEntry],
) -> Result<usize, redis::RedisError> {
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(std::time::Duration::from_secs(30)));
    let mut con = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    for chunk in entries.chunks(500) {
        let mut pipe = redis::pipe();
        for entry in chunk {
            pipe.cmd("XADD")
                .arg(&entry.stream)
                .arg("*")
                .arg("payload")
                .arg(&entry.payload)
                .ignore();
        }
        pipe.query_async::<()>(&mut con).await?;
    }
    Ok(entries.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{decode_entry, EventBody};
    use std::sync::Arc;

    fn spec(events: u64) -> GeneratorSpec {
        GeneratorSpec {
            events,
            events_per_entry: 5,
            seed: 7,
            accounts: 10,
            curves: 2,
            network: "testnet".into(),
            stream_prefix: "t".into(),
        }
    }

    #[test]
    fn deterministic_and_decodable() {
        let a = generate(&spec(2_000));
        assert_eq!(a, generate(&spec(2_000)));
        let mut kinds: HashMap<&'static str, usize> = HashMap::new();
        let mut total = 0;
        for entry in &a {
            let decoded = decode_entry(
                &Arc::from(entry.stream.as_str()),
                &Arc::from("1-0"),
                &[("payload".to_string(), entry.payload.clone().into_bytes())],
            );
            assert!(
                decoded.dead_letters.is_empty(),
                "{:?}",
                decoded.dead_letters
            );
            for e in decoded.events {
                total += 1;
                *kinds.entry(e.body.kind().name()).or_default() += 1;
                if let EventBody::AtomCreated(atom) = &e.body {
                    assert!(atom.atom_data_text.is_some() || !atom.atom_data.is_empty());
                }
            }
        }
        assert!(total >= 2_000, "{total}");
        for kind in [
            "AtomCreated",
            "TripleCreated",
            "Deposited",
            "Redeemed",
            "SharePriceChanged",
            "Generic",
        ] {
            assert!(
                kinds.get(kind).copied().unwrap_or(0) > 0,
                "no {kind}: {kinds:?}"
            );
        }
        // Deposits, redeems and price changes dominate, as on chain.
        let trading = kinds["Deposited"] + kinds["Redeemed"] + kinds["SharePriceChanged"];
        assert!(trading * 10 > total * 8, "{kinds:?}");
    }
}
