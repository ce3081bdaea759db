-- Provider webhooks: a durable inbox written before the provider gets its 2xx, applied after.

-- One row per provider event, verified before it is written. The unique key drops the
-- provider's retries and duplicates; `status` says what applying it did:
--   pending  stored, not applied yet (the request's job or the sweeper will apply it)
--   applied  its effect is in the database
--   orphan   names a message we do not have (yet); kept for inspection and retried
--   ignored  verified but nothing to do (unsupported channel, cross-tenant, no effect)
CREATE TABLE webhook_events (
    id                   bigserial PRIMARY KEY,
    provider             text NOT NULL,
    kind                 text NOT NULL CHECK (kind IN ('sms_status', 'sms_inbound',
                             'voice_status', 'sendgrid_events')),
    sub_account_id       uuid REFERENCES sub_accounts(id) ON DELETE CASCADE,  -- NULL until resolved
    provider_account_id  uuid REFERENCES provider_accounts(id) ON DELETE SET NULL,  -- whose key verified it
    event_key            text NOT NULL,
    payload              jsonb NOT NULL,
    received_at          timestamptz NOT NULL DEFAULT now(),
    status               text NOT NULL DEFAULT 'pending'
                             CHECK (status IN ('pending', 'applied', 'orphan', 'ignored')),
    attempts             integer NOT NULL DEFAULT 0,
    next_attempt_at      timestamptz,            -- when the sweeper looks again; NULL: never
    applied_at           timestamptz,
    error                text,
    UNIQUE (provider, kind, event_key)
);
CREATE INDEX webhook_events_due ON webhook_events (next_attempt_at)
    WHERE status IN ('pending', 'orphan');
CREATE INDEX webhook_events_age ON webhook_events (received_at);

-- An opt-out cancels what is still waiting for the number; this finds it without a scan.
CREATE INDEX messages_open_to ON messages (sub_account_id, to_address)
    WHERE status IN ('queued', 'scheduled');

-- The realtime feed prunes the event log by age.
CREATE INDEX events_created_at ON events (created_at);
