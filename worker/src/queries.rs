//! Named SQL statements of the write path. Each lives in `src/sql/` with a
//! comment saying what it maintains and why it is safe under concurrency.
//! Schema and from-scratch definitions live in `migrations/`. The event
//! tables' insert statements are named by their kinds in [`crate::catalog`].

macro_rules! named_queries {
    ($($name:ident => $file:literal),* $(,)?) => {
        $(pub const $name: &str = include_str!(concat!("sql/", $file));)*
    };
}

named_queries! {
    INSERT_DEAD_LETTERS => "insert_dead_letters.sql",
    DATABASE_ENCODING => "database_encoding.sql",
    SELECT_DATABASE_NETWORK => "select_database_network.sql",
    BIND_DATABASE_NETWORK => "bind_database_network.sql",
    UPSERT_ATOMS => "upsert_atoms.sql",
    UPSERT_TRIPLES => "upsert_triples.sql",
    UPSERT_VAULTS => "upsert_vaults.sql",
    UPSERT_POSITIONS => "upsert_positions.sql",
    SELECT_STORED_POSITIONS => "select_stored_positions.sql",
    COPY_POSITIONS => "copy_positions.sql",
    SELECT_STORED_VAULTS => "select_stored_vaults.sql",
    COPY_VAULTS => "copy_vaults.sql",
    UPSERT_TERMS => "upsert_terms.sql",
    RECOMPUTE_TERM_TOTALS => "recompute_term_totals.sql",
    ENQUEUE_ANALYTICS => "enqueue_analytics.sql",
    INSERT_FOLD_DELTAS => "insert_fold_deltas.sql",
    CLAIM_FOLD_PARTITIONS => "claim_fold_partitions.sql",
    CLAIM_FOLD_PARTITIONS_WAITING => "claim_fold_partitions_waiting.sql",
    FOLD_NEXT_DUE => "fold_next_due.sql",
    TAKE_FOLD_DELTAS => "take_fold_deltas.sql",
    RECORD_FOLD => "record_fold.sql",
    FOLD_STATS => "fold_stats.sql",
    FOLD_HORIZON => "fold_horizon.sql",
    FOLD_DELTAS_LEFT => "fold_deltas_left.sql",
    PARK_FOLD_DELTAS => "park_fold_deltas.sql",
    SELECT_PARKED_FOLD_DELTAS => "select_parked_fold_deltas.sql",
    REPLAY_PARKED_FOLD_DELTAS => "replay_parked_fold_deltas.sql",
}

named_queries! {
    CLAIM_ANALYTICS_TERMS => "claim_analytics_terms.sql",
    ANALYTICS_NEXT_DUE => "analytics_next_due.sql",
    LOCK_ANALYTICS_TABLES => "lock_analytics_tables.sql",
    ANALYTICS_AFFECTED_TRIPLES => "analytics_affected_triples.sql",
    LOCK_PREDICATE_OBJECTS => "lock_predicate_objects.sql",
    LOCK_SUBJECT_PREDICATES => "lock_subject_predicates.sql",
    RECOMPUTE_TRIPLES => "recompute_triples.sql",
    RECOMPUTE_PREDICATE_OBJECTS => "recompute_predicate_objects.sql",
    RECOMPUTE_SUBJECT_PREDICATES => "recompute_subject_predicates.sql",
    COMPLETE_ANALYTICS_TERMS => "complete_analytics_terms.sql",
    RELEASE_ANALYTICS_TERMS => "release_analytics_terms.sql",
    FAIL_ANALYTICS_TERMS => "fail_analytics_terms.sql",
    REQUEUE_PARKED_TERMS => "requeue_parked_terms.sql",
    ANALYTICS_QUEUE_STATS => "analytics_queue_stats.sql",
}

named_queries! {
    ROLLBACK_COLLECT_KEYS => "rollback_collect_keys.sql",
}

named_queries! {
    SCHEMA_NEWER_MIGRATIONS => "schema_newer_migrations.sql",
    RECORD_SCHEMA_COMPATIBILITY => "record_schema_compatibility.sql",
    SELECT_DEAD_LETTERS => "select_dead_letters.sql",
    LOCK_DEAD_LETTER => "lock_dead_letter.sql",
    MARK_DEAD_LETTER_REPLAYED => "mark_dead_letter_replayed.sql",
    MARK_DEAD_LETTER_FAILED => "mark_dead_letter_failed.sql",
}

named_queries! {
    LOCK_REORG_FENCE_SHARED => "lock_reorg_fence_shared.sql",
    LOCK_REORG_FENCE_EXCLUSIVE => "lock_reorg_fence_exclusive.sql",
    SELECT_REORG_FENCE_COPY => "select_reorg_fence_copy.sql",
    RECORD_CHAIN_REORG => "record_chain_reorg.sql",
    INSERT_REORG_FENCE => "insert_reorg_fence.sql",
    SELECT_REORG_FENCES => "select_reorg_fences.sql",
    REORG_STATS => "reorg_stats.sql",
}
