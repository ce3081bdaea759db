-- Carrier-required replies (the STOP confirmation, HELP answers) go to numbers that have
-- just opted out; they are the only messages the suppression gate lets through.
ALTER TABLE messages ADD COLUMN compliance boolean NOT NULL DEFAULT false;

-- Deleting a contact sets its messages' contact_id to NULL: without this, a scan each time.
CREATE INDEX messages_contact ON messages (contact_id) WHERE contact_id IS NOT NULL;

-- A SendGrid request's X-Message-Id is the provider id of every recipient in it: unique
-- per recipient, not per message id alone (the adapter never puts an address twice in one
-- request). Twilio SIDs stay unique as before, the recipient adding nothing.
DROP INDEX messages_provider_id;
CREATE UNIQUE INDEX messages_provider_id ON messages (provider, provider_message_id, lower(to_address))
    WHERE provider_message_id IS NOT NULL;
