-- Tenancy, contacts, conversations, messages, suppressions, the event log and idempotency.
-- Every tenant-owned row carries sub_account_id, and every lookup filters on it.

CREATE TABLE agencies (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sub_accounts (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    agency_id       uuid NOT NULL REFERENCES agencies(id) ON DELETE CASCADE,
    name            text NOT NULL,
    default_region  text NOT NULL DEFAULT 'US',
    timezone        text NOT NULL DEFAULT 'America/New_York',
    help_text       text NOT NULL DEFAULT '',
    quiet_start     time NOT NULL DEFAULT '21:00',
    quiet_end       time NOT NULL DEFAULT '08:00',
    -- Last `seq` handed out for this sub-account's events; bumped under a row lock inside
    -- the writing transaction so seq order equals commit order.
    event_seq       bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sub_accounts_agency ON sub_accounts (agency_id, created_at DESC, id DESC);

CREATE TABLE api_keys (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    agency_id       uuid NOT NULL REFERENCES agencies(id) ON DELETE CASCADE,
    sub_account_id  uuid REFERENCES sub_accounts(id) ON DELETE CASCADE,  -- NULL: agency key
    name            text NOT NULL,
    prefix          text NOT NULL,           -- shown to users to tell keys apart
    key_hash        bytea NOT NULL UNIQUE,   -- sha256 of the whole (high-entropy) key
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_used_at    timestamptz,
    revoked_at      timestamptz
);
CREATE INDEX api_keys_owner ON api_keys (agency_id, sub_account_id, created_at DESC, id DESC);

CREATE TABLE provider_accounts (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    sub_account_id    uuid NOT NULL REFERENCES sub_accounts(id) ON DELETE CASCADE,
    provider          text NOT NULL CHECK (provider IN ('twilio', 'sendgrid', 'smtp')),
    name              text NOT NULL,
    account_id        text NOT NULL,         -- Twilio Account SID, SMTP user, SendGrid key name
    secret_encrypted  bytea NOT NULL,        -- Fernet token; never returned by the API
    base_url          text,                  -- regional edge or the sandbox carrier
    config            jsonb NOT NULL DEFAULT '{}',
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX provider_accounts_sa ON provider_accounts (sub_account_id, created_at DESC, id DESC);
CREATE INDEX provider_accounts_account ON provider_accounts (provider, account_id);

CREATE TABLE senders (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    sub_account_id       uuid NOT NULL REFERENCES sub_accounts(id) ON DELETE CASCADE,
    provider_account_id  uuid NOT NULL REFERENCES provider_accounts(id) ON DELETE RESTRICT,
    channel              text NOT NULL CHECK (channel IN ('sms', 'email', 'voice')),
    kind                 text NOT NULL CHECK (kind IN ('long_code', 'toll_free', 'short_code',
                             '10dlc', 'messaging_service', 'email', 'caller_id')),
    address              text NOT NULL,      -- E.164, messaging service SID or email address
    throughput_class     text NOT NULL DEFAULT 'standard',
    mps                  double precision NOT NULL CHECK (mps > 0),
    from_name            text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (sub_account_id, channel, address)
);
CREATE INDEX senders_sa ON senders (sub_account_id, created_at DESC, id DESC);
CREATE INDEX senders_address ON senders (channel, address);

CREATE TABLE contacts (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    sub_account_id  uuid NOT NULL REFERENCES sub_accounts(id) ON DELETE CASCADE,
    phone           text,                    -- E.164
    email           text,                    -- as given, normalised by email-validator
    email_key       text,                    -- lower-cased, for uniqueness and suppressions
    first_name      text NOT NULL DEFAULT '',
    last_name       text NOT NULL DEFAULT '',
    timezone        text,                    -- explicit IANA zone, if known
    tags            text[] NOT NULL DEFAULT '{}',
    custom_fields   jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (phone IS NOT NULL OR email IS NOT NULL)
);
CREATE UNIQUE INDEX contacts_phone ON contacts (sub_account_id, phone) WHERE phone IS NOT NULL;
CREATE UNIQUE INDEX contacts_email ON contacts (sub_account_id, email_key) WHERE email_key IS NOT NULL;
CREATE INDEX contacts_page ON contacts (sub_account_id, created_at DESC, id DESC);
CREATE INDEX contacts_tags ON contacts USING gin (tags);

CREATE TABLE conversations (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    sub_account_id   uuid NOT NULL REFERENCES sub_accounts(id) ON DELETE CASCADE,
    contact_id       uuid NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    channel          text NOT NULL CHECK (channel IN ('sms', 'email', 'voice')),
    unread_count     integer NOT NULL DEFAULT 0,
    last_message_at  timestamptz,
    last_message_preview text NOT NULL DEFAULT '',
    assignee         text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (sub_account_id, contact_id, channel)
);
CREATE INDEX conversations_page ON conversations (sub_account_id, created_at DESC, id DESC);

CREATE TABLE messages (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    sub_account_id       uuid NOT NULL REFERENCES sub_accounts(id) ON DELETE CASCADE,
    conversation_id      uuid REFERENCES conversations(id) ON DELETE SET NULL,
    contact_id           uuid REFERENCES contacts(id) ON DELETE SET NULL,
    campaign_id          uuid,
    direction            text NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    channel              text NOT NULL CHECK (channel IN ('sms', 'mms', 'email', 'voice')),
    priority             text NOT NULL DEFAULT 'transactional'
                             CHECK (priority IN ('reply', 'transactional', 'bulk')),
    sender_id            uuid REFERENCES senders(id) ON DELETE SET NULL,
    from_address         text NOT NULL,
    to_address           text NOT NULL,
    subject              text,
    body                 text NOT NULL DEFAULT '',
    media_urls           text[] NOT NULL DEFAULT '{}',
    status               text NOT NULL,
    in_doubt             boolean NOT NULL DEFAULT false,
    provider             text,
    provider_message_id  text,
    error_code           text,
    error_message        text,
    segments             integer NOT NULL DEFAULT 1,
    encoding             text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    sent_at              timestamptz,
    delivered_at         timestamptz,
    read_at              timestamptz,
    failed_at            timestamptz
);
CREATE INDEX messages_page ON messages (sub_account_id, created_at DESC, id DESC);
CREATE INDEX messages_conversation ON messages (conversation_id, created_at DESC, id DESC);
CREATE UNIQUE INDEX messages_provider_id ON messages (provider, provider_message_id)
    WHERE provider_message_id IS NOT NULL;

CREATE TABLE message_events (
    id              bigserial PRIMARY KEY,
    message_id      uuid NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    sub_account_id  uuid NOT NULL,
    status          text NOT NULL,
    provider_status text,
    error_code      text,
    event_key       text,                    -- the provider's dedup key, when from a callback
    occurred_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX message_events_message ON message_events (message_id, id);
CREATE UNIQUE INDEX message_events_key ON message_events (message_id, event_key)
    WHERE event_key IS NOT NULL;

CREATE TABLE suppressions (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    sub_account_id  uuid NOT NULL REFERENCES sub_accounts(id) ON DELETE CASCADE,
    channel         text NOT NULL CHECK (channel IN ('sms', 'email', 'voice')),
    address         text NOT NULL,           -- E.164 or lower-cased email
    reason          text NOT NULL,
    source          text NOT NULL,           -- api, opt_out, bounce, spamreport, provider, import
    created_by      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    removed_at      timestamptz,
    removed_by      text,
    removed_reason  text
);
-- One active suppression per address; removed ones stay as history.
CREATE UNIQUE INDEX suppressions_active ON suppressions (sub_account_id, channel, address)
    WHERE removed_at IS NULL;
CREATE INDEX suppressions_page ON suppressions (sub_account_id, created_at DESC, id DESC);

CREATE TABLE events (
    sub_account_id  uuid NOT NULL REFERENCES sub_accounts(id) ON DELETE CASCADE,
    seq             bigint NOT NULL,
    id              uuid NOT NULL DEFAULT gen_random_uuid(),
    type            text NOT NULL,
    topic           text,                    -- e.g. conversation:<id>, campaign:<id>
    data            jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sub_account_id, seq)
);

CREATE TABLE idempotency_keys (
    scope           text NOT NULL,           -- api key id + sub-account
    key             text NOT NULL,
    request_hash    bytea NOT NULL,
    status_code     integer,                 -- NULL while the first request is in flight
    response        jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at);

CREATE TABLE import_jobs (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    sub_account_id  uuid NOT NULL REFERENCES sub_accounts(id) ON DELETE CASCADE,
    status          text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'running', 'completed', 'failed')),
    filename        text,
    source          bytea,                   -- kept until done so a restart can resume
    total_rows      integer,
    processed_rows  integer NOT NULL DEFAULT 0,
    created_rows    integer NOT NULL DEFAULT 0,
    updated_rows    integer NOT NULL DEFAULT 0,
    error_rows      integer NOT NULL DEFAULT 0,
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz
);
CREATE INDEX import_jobs_page ON import_jobs (sub_account_id, created_at DESC, id DESC);

CREATE TABLE import_errors (
    job_id      uuid NOT NULL REFERENCES import_jobs(id) ON DELETE CASCADE,
    row_number  integer NOT NULL,
    field       text NOT NULL,
    code        text NOT NULL,
    message     text NOT NULL,
    PRIMARY KEY (job_id, row_number, field)
);
