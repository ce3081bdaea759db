-- One index where two did the same work. No UPDATE of `messages` on the send path is HOT
-- (each changes `status` or the lease, keys or predicates of the queue's indexes), so every
-- row version, three per message at least, gets an entry in each index whose predicate
-- holds, whether its columns changed or not.
--
-- `messages_contact (contact_id)` served one query: the contacts foreign key's
-- `SET contact_id = NULL WHERE contact_id = $1` when a contact is deleted.
-- `messages_campaign_contact (campaign_id, contact_id)` served only as the unique guard
-- that makes a campaign's second attempt at a recipient's message a no-op (the INSERT's
-- ON CONFLICT DO NOTHING); every read of `messages` by campaign is planned on
-- `messages_campaign_status (campaign_id, status)`, whose leading column is the same.
--
-- The same guard with its columns the other way round serves the foreign key as well:
-- one entry per row version instead of two. The rows it leaves out (no contact) can never
-- collide, as NULLs are distinct.
CREATE UNIQUE INDEX messages_contact_campaign ON messages (contact_id, campaign_id)
    WHERE contact_id IS NOT NULL;
DROP INDEX messages_campaign_contact;
DROP INDEX messages_contact;
