-- Claims in index order. A sender shard leases the oldest queued messages of its slots,
-- replies first, then transactional, then bulk. With the priority stored as text that order
-- needed a scan and a sort of every queued row on each claim; as a small rank, and with the
-- claimable set (queued, not leased) as its own partial index, a claim reads about `limit`
-- index entries whatever the table holds.
ALTER TABLE messages ADD COLUMN send_rank smallint NOT NULL GENERATED ALWAYS AS (
    CASE priority WHEN 'reply' THEN 0 WHEN 'transactional' THEN 1 ELSE 2 END) STORED;

DROP INDEX messages_queued;
CREATE INDEX messages_claimable ON messages (send_rank, created_at, channel, slot)
    WHERE status = 'queued' AND lease_owner IS NULL;
-- Queued messages under a lease: a few thousand per shard at most. A shard hands back its own
-- at start-up and anyone's once expired (a shard that died, or slots that moved).
CREATE INDEX messages_leased ON messages (lease_owner, lease_expires_at)
    WHERE status = 'queued' AND lease_owner IS NOT NULL;
