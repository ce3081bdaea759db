-- Campaign messages were created without their provider (single sends had it), so a status
-- callback that names a message only by the provider's id, as a Twilio messaging service's
-- own status callback does, never found them. Messages that already left get it from the
-- provider account that sent them.
UPDATE messages m SET provider = p.provider
FROM provider_accounts p
WHERE m.provider IS NULL AND m.direction = 'outbound' AND p.id = m.provider_account_id;
