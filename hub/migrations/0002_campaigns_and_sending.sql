-- Sending: leases on messages, campaigns and their recipients.

-- A stable slot per sub-account (0..1023); the consistent-hash ring maps slots to shard actors.
ALTER TABLE sub_accounts ADD COLUMN slot integer NOT NULL DEFAULT floor(random() * 1024)::int;

ALTER TABLE messages
    ADD COLUMN slot integer NOT NULL DEFAULT 0,
    ADD COLUMN lease_owner text,                 -- the sender shard holding it
    ADD COLUMN lease_expires_at timestamptz,
    ADD COLUMN attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN not_before timestamptz,           -- back-off after throttling
    ADD COLUMN provider_account_id uuid REFERENCES provider_accounts(id) ON DELETE SET NULL,
    ADD COLUMN voice jsonb;

-- Work queues: what a sender shard may claim, and what the reconciler must look at.
CREATE INDEX messages_queued ON messages (channel, slot, priority, created_at)
    WHERE status = 'queued';
CREATE INDEX messages_sending ON messages (lease_expires_at) WHERE status = 'sending';
-- One message per campaign recipient: the heart of "no contact texted twice".
CREATE UNIQUE INDEX messages_campaign_contact ON messages (campaign_id, contact_id)
    WHERE campaign_id IS NOT NULL;
CREATE INDEX messages_campaign_status ON messages (campaign_id, status)
    WHERE campaign_id IS NOT NULL;

CREATE TABLE campaigns (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    sub_account_id     uuid NOT NULL REFERENCES sub_accounts(id) ON DELETE CASCADE,
    name               text NOT NULL,
    channel            text NOT NULL CHECK (channel IN ('sms', 'mms', 'email', 'voice')),
    status             text NOT NULL DEFAULT 'draft',
    audience           jsonb NOT NULL,
    body               text NOT NULL DEFAULT '',
    subject            text,
    html               text,
    media_urls         text[] NOT NULL DEFAULT '{}',
    voice              jsonb,
    sender_ids         uuid[] NOT NULL,
    start_at           timestamptz,
    window_start       time NOT NULL DEFAULT '08:00',   -- allowed local sending window
    window_end         time NOT NULL DEFAULT '21:00',
    rate_cap           double precision,                -- messages per second, optional
    failure_threshold  double precision NOT NULL DEFAULT 0.2,
    paused_reason      text,
    recipients_total   integer NOT NULL DEFAULT 0,
    skipped_total      integer NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    launched_at        timestamptz,
    completed_at       timestamptz
);
CREATE INDEX campaigns_page ON campaigns (sub_account_id, created_at DESC, id DESC);
CREATE INDEX campaigns_active ON campaigns (status) WHERE status IN ('scheduled', 'running');

CREATE TABLE campaign_recipients (
    campaign_id       uuid NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    contact_id        uuid NOT NULL,
    sub_account_id    uuid NOT NULL,
    -- pending: not yet handed to a sender; queued: its message exists; skipped: never sent
    -- (skip_reason says why); canceled: the campaign or a STOP canceled it before sending.
    status            text NOT NULL DEFAULT 'pending'
                          CHECK (status IN ('pending', 'queued', 'skipped', 'canceled')),
    skip_reason       text,
    due_at            timestamptz NOT NULL,
    message_id        uuid,
    lease_owner       text,
    lease_expires_at  timestamptz,
    PRIMARY KEY (campaign_id, contact_id)
);
CREATE INDEX campaign_recipients_due ON campaign_recipients (campaign_id, due_at)
    WHERE status = 'pending';
CREATE INDEX campaign_recipients_contact ON campaign_recipients (contact_id)
    WHERE status = 'pending';
