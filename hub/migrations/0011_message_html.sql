-- An email's HTML part, kept with the message until it is sent (the API and campaigns
-- accepted `html`, and the send path dropped it: the provider got a text-only email).
ALTER TABLE messages ADD COLUMN html text;
