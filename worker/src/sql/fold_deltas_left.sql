-- Whether a delta up to id $1, of a format this binary folds ($2 or older),
-- is still unfolded.
SELECT EXISTS (SELECT 1 FROM fold_delta WHERE id <= $1 AND format <= $2)
