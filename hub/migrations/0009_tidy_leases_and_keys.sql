-- Campaign recipients are claimed by row lock (hub/store/campaigns.py claim_due), and their
-- message is created already leased to its Sender shard: nothing reads or writes a
-- recipient's lease any more.
ALTER TABLE campaign_recipients DROP COLUMN lease_owner, DROP COLUMN lease_expires_at;

-- An Idempotency-Key record is written once, after the work, with its response
-- (gateway/idempotency.py): there is no "in flight" record, so a status is always known.
-- Rows left NULL by a request that died under an older hub never finished: forget them.
DELETE FROM idempotency_keys WHERE status_code IS NULL OR response IS NULL;
ALTER TABLE idempotency_keys ALTER COLUMN status_code SET NOT NULL,
                             ALTER COLUMN response SET NOT NULL;
