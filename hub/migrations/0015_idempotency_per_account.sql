-- An Idempotency-Key belongs to the account a request acts on ('sub_account:<id>', or
-- 'agency:<id>' for agency-level routes; gateway/idempotency.py), no longer to the API key
-- that made it: a retry with another key of the same account replays instead of sending
-- twice.
--
-- A sub-account key acts on its own sub-account only, so its records move to that scope
-- and a retry made across this upgrade still replays (where two keys of one sub-account
-- used the same Idempotency-Key, the first record stays). Records of agency keys and of
-- signed-in users do not say which account they acted on: they stay unread and expire
-- with the 24 h TTL.
INSERT INTO idempotency_keys (scope, key, request_hash, status_code, response, created_at)
SELECT DISTINCT ON (k.sub_account_id, i.key)
       'sub_account:' || k.sub_account_id, i.key, i.request_hash, i.status_code, i.response,
       i.created_at
FROM idempotency_keys i JOIN api_keys k ON i.scope = k.id::text
WHERE k.sub_account_id IS NOT NULL
ORDER BY k.sub_account_id, i.key, i.created_at
ON CONFLICT DO NOTHING;
DELETE FROM idempotency_keys i USING api_keys k
WHERE i.scope = k.id::text AND k.sub_account_id IS NOT NULL;

-- A created API key's secret is shown once and never stored: the records of key creations
-- kept it in plaintext. Keep them without it (a replay now says it was shown once).
UPDATE idempotency_keys SET response = response || '{"key": null}'
WHERE response ->> 'key' LIKE 'sbk\_%';

COMMENT ON COLUMN idempotency_keys.scope IS
    'the account the request acted on: sub_account:<id> or agency:<id>';
