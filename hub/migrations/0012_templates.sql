-- Saved message templates of a sub-account: text with {{merge_fields}} for a channel, named
-- and reused. A campaign created from one copies its text, so editing or deleting the
-- template never changes a campaign already made from it.
CREATE TABLE templates (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    sub_account_id  uuid NOT NULL REFERENCES sub_accounts(id) ON DELETE CASCADE,
    name            text NOT NULL,
    channel         text NOT NULL CHECK (channel IN ('sms', 'mms', 'email', 'voice')),
    body            text NOT NULL,
    subject         text,
    media_urls      text[] NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
-- Names are unique per sub-account, whatever their case ("Welcome" and "welcome" are one).
CREATE UNIQUE INDEX templates_name ON templates (sub_account_id, lower(name));
CREATE INDEX templates_page ON templates (sub_account_id, created_at DESC, id DESC);
