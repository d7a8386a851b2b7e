-- First statement of every analytics transaction: the table locks it needs,
-- in the global lock order (ADR 0002: the derived tables in the order of
-- catalog::DERIVED_TABLES, then analytics_queue), before it reads or locks any
-- row. `rollback` and `rebuild` take their table locks in the same order, so
-- an analytics transaction either holds all of its tables before they start
-- or waits for them, holding nothing they want: no deadlock (issue 22).
-- ACCESS SHARE (what the reads take anyway) does not block `rollback`'s
-- EXCLUSIVE locks; ROW EXCLUSIVE does not block other analytics transactions.
-- One DO block: two lock modes, one round trip.
DO $$
BEGIN
    LOCK TABLE triple, vault IN ACCESS SHARE MODE;
    LOCK TABLE triple_vault, triple_term, predicate_object, subject_predicate IN ROW EXCLUSIVE MODE;
END
$$
