-- People: users of an agency, their role per sub-account, and server-side login sessions.
-- API keys stay for machines; a user reaches only the sub-accounts they are granted.

CREATE TABLE users (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    agency_id      uuid NOT NULL REFERENCES agencies(id) ON DELETE CASCADE,
    email          text NOT NULL,            -- lower-cased; the login name
    name           text NOT NULL DEFAULT '',
    password_hash  text NOT NULL,            -- argon2id, PHC string
    created_at     timestamptz NOT NULL DEFAULT now(),
    disabled_at    timestamptz
);
CREATE UNIQUE INDEX users_email ON users (email);
CREATE INDEX users_agency ON users (agency_id, created_at DESC, id DESC);

CREATE TABLE user_grants (
    user_id         uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    sub_account_id  uuid NOT NULL REFERENCES sub_accounts(id) ON DELETE CASCADE,
    role            text NOT NULL CHECK (role IN ('admin', 'marketer', 'agent')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, sub_account_id)
);
CREATE INDEX user_grants_sub_account ON user_grants (sub_account_id, role);

CREATE TABLE user_sessions (
    token_hash    bytea PRIMARY KEY,         -- sha256 of the cookie value; never the value
    user_id       uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    csrf_token    text NOT NULL,             -- sent back in X-CSRF-Token on every write
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
);
CREATE INDEX user_sessions_user ON user_sessions (user_id);
CREATE INDEX user_sessions_expiry ON user_sessions (expires_at);
