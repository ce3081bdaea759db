-- Campaign messages were created without their provider (single sends had it), so a status
-- callback that names a message only by the provider's id, as a Twilio messaging service's
-- own status callback does, never found them. Messages that already left get it from the
-- provider account that sent them.
--
-- With a provider a message falls under the unique (provider, provider_message_id,
-- lower(to_address)) index, and existing data can hold the same SID twice for one recipient
-- (a sandbox carrier restarted on the same data folder handed its SIDs out again). Of such
-- a group only the newest message gets its provider (a receipt still to come is about it),
-- and none does where a message with that provider already holds the SID: the others keep
-- NULL, as before, instead of failing the migration.
UPDATE messages m SET provider = c.provider
FROM (SELECT m.id, p.provider,
             row_number() OVER (PARTITION BY p.provider, m.provider_message_id,
                                             lower(m.to_address)
                                ORDER BY m.created_at DESC, m.id DESC) AS nth
      FROM messages m JOIN provider_accounts p ON p.id = m.provider_account_id
      WHERE m.provider IS NULL AND m.direction = 'outbound') c
WHERE m.id = c.id
  AND (m.provider_message_id IS NULL
       OR c.nth = 1 AND NOT EXISTS (
           SELECT 1 FROM messages o
           WHERE o.provider = c.provider AND o.provider_message_id = m.provider_message_id
             AND lower(o.to_address) = lower(m.to_address)));
